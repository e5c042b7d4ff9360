"""Task warnings and a failed task's error line, as the user reads them.

Every stage writes its ``WARNING:`` lines to ``task_warnings.txt`` (:func:`b2s.errors.warn`), a
declared output of its process; the workflow prefixes each line with the stage and the task's
group and collects them into ``task_warnings.tsv`` (``STAGE<TAB>group<TAB>WARNING: text``, one
block of lines per task). This module turns those lines into what the console summary at the end
of the run and the top of the report show: the task's staged input names (``input/<file>``, or
the file name of ``--vae_weights``) replaced by the user's paths, a line tagged ``[group=G] ``
(a task of several groups, ``--groups_per_task``) filed under ``G``, the stages in pipeline order.

When a task fails, :func:`failed_task` finds it in the run's execution trace (a documented
Nextflow output, ``trace`` in nextflow.config) and :func:`diagnosis` reads its own ``ERROR:``
line (``b2s.errors.run_cli``) and warnings from its log files. Standard library only.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Stages in pipeline order (the order of the console summary and of the report's list).
STAGE_ORDER = ("PREPARE_INPUTS", "ESTIMATE_FRACTIONS", "PREPROCESS", "TRAIN_VAE", "GENERATE", "FILTER", "QC")
#: Parameters naming input files that tasks stage (under input/, or by name for --vae_weights).
STAGED_PARAMS = ("bulk", "reference", "gene_map", "samplesheet", "markers", "vae_weights")
WARNING = "WARNING: "
ERROR = "ERROR: "
_TAG = re.compile(r"^\[group=(.*?)\] (.*)$")

Row = tuple[str, str, str]  # (stage, group, warning text)


# --------------------------------------------------------------------------------------------
# staged names -> the user's paths
# --------------------------------------------------------------------------------------------
def staged_inputs(params: Mapping[str, Any]) -> dict[str, str]:
    """``{staged file name: the user's path}`` of the input files the run's tasks stage."""
    out = {}
    for key in STAGED_PARAMS:
        value = params.get(key)
        if value:
            out[Path(str(value)).name] = str(value)
    return out


def user_paths(text: str, params: Mapping[str, Any] | None) -> str:
    """``text`` with staged input paths (``input/<name>``, or ``<name>`` itself for
    ``--vae_weights``) replaced by the paths the user gave."""
    if not params:
        return text
    weights = str(params.get("vae_weights") or "")
    for name, path in staged_inputs(params).items():
        quoted = re.escape(name)
        text = re.sub(rf"(?<![\w./-])input/{quoted}(?![\w.-])", lambda _m, p=path: p, text)
        if weights and path == weights:
            text = re.sub(rf"(?<![\w./-]){quoted}(?![\w.-])", lambda _m, p=path: p, text)
    return text


def warning_row(stage: str, group: str, text: str) -> Row:
    """``(stage, group, text)`` of one warning; a ``[group=G] `` tag names the group."""
    tagged = _TAG.match(text)
    if tagged:
        return stage, tagged.group(1), tagged.group(2)
    return stage, group or "", text


# --------------------------------------------------------------------------------------------
# task warnings
# --------------------------------------------------------------------------------------------
def warning_texts(lines: Iterable[str]) -> list[str]:
    """The text of every ``WARNING:`` line, each once, in order."""
    out: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith(WARNING):
            text = line[len(WARNING):].strip()
            if text and text not in out:
                out.append(text)
    return out


def _stage_key(stage: str) -> str:
    return f"{STAGE_ORDER.index(stage) + 1 if stage in STAGE_ORDER else 0:02d}"


def read_task_warnings(path: str | Path | None, params: Mapping[str, Any] | None = None) -> list[Row]:
    """The rows of the workflow's ``task_warnings.tsv``, as the user reads them.

    Each task's block (consecutive lines of one stage and group column) keeps its order, each
    warning once; blocks are ordered by stage, then by their text. Lines already in
    ``STAGE<TAB>group<TAB>text`` form (no ``WARNING:`` prefix) are read as they are. ``params``
    (the run's): staged input names become the user's paths.
    """
    if path is None or not Path(path).is_file():
        return []
    blocks: list[tuple[tuple[str, str], list[str]]] = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            continue
        stage, group, text = parts[0], parts[1], parts[2].strip()
        text = text[len(WARNING):].strip() if text.startswith(WARNING) else text
        if not blocks or blocks[-1][0] != (stage, group):
            blocks.append(((stage, group), []))
        if text not in blocks[-1][1]:
            blocks[-1][1].append(text)
    resolved = []
    for (stage, group), texts in blocks:
        rows = [warning_row(stage, group, user_paths(t, params)) for t in texts]
        key = _stage_key(stage) + "".join(f"{s}\t{g}\t{t}\n" for s, g, t in rows)
        resolved.append((key, rows))
    return [row for _, rows in sorted(resolved, key=lambda item: item[0]) for row in rows]


def summary_lines(rows: Iterable[Row]) -> list[str]:
    """The console summary of the task warnings: a header line, then one line per warning."""
    unique: list[Row] = []
    for row in rows:
        if row not in unique:
            unique.append(row)
    if not unique:
        return []
    lines = [f"WARN: {len(unique)} task warning(s) (also at the top of the report):"]
    for stage, group, text in unique:
        lines.append(f"  [{f'{stage} {group}' if group else stage}] {text}")
    return lines


# --------------------------------------------------------------------------------------------
# the failed task
# --------------------------------------------------------------------------------------------
def read_trace(path: Path) -> list[dict[str, str]]:
    """Rows of a Nextflow execution trace (tab-separated, one header line)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def run_trace(outdir: Path, since_ms: int = 0) -> Path | None:
    """This run's execution trace: the newest ``pipeline_info/execution_trace_*.txt`` of
    ``--outdir`` written since the run started (the outdir lock keeps other runs out)."""
    found = []
    for path in Path(outdir, "pipeline_info").glob("execution_trace_*.txt"):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime * 1000 >= since_ms:
            found.append((mtime, path))
    return max(found)[1] if found else None


def failed_task(rows: list[dict[str, str]], exit_status: Any = None) -> dict[str, str] | None:
    """The trace row of the task that failed the run, or None when no task did.

    A task retried with success later is not it; of several, the first with the run's exit
    status (the fault Nextflow reports), else the first.
    """
    done = {r.get("name") for r in rows if r.get("status") in ("COMPLETED", "CACHED")}
    failed = [r for r in rows if r.get("status") == "FAILED" and r.get("name") not in done]
    same = [r for r in failed if exit_status is not None and str(r.get("exit")) == str(exit_status)]
    return (same or failed or [None])[0]


def task_dir(row: Mapping[str, str], work_dir: str | Path | None) -> Path | None:
    """The failed task's folder: its ``workdir`` column, or ``<work dir>/<hash>*``."""
    if row.get("workdir"):
        return Path(row["workdir"])
    digest = row.get("hash") or ""
    if not work_dir or "/" not in digest:
        return None
    found = sorted(Path(work_dir).glob(digest + "*"))
    return found[0] if len(found) == 1 and found[0].is_dir() else None


def task_log_lines(folder: Path | None) -> list[str]:
    """Lines of a task's stderr then stdout (``.command.err``, ``.command.out``), each once."""
    seen: list[str] = []
    if folder is None:
        return seen
    for name in (".command.err", ".command.out"):
        try:
            text = (Path(folder) / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line not in seen:
                seen.append(line)
    return seen


def task_name_parts(name: str) -> tuple[str, str]:
    """``(stage, group)`` of a task name such as ``BULK2SINGLE:QC (ctrl)``."""
    stage = name.split(" ")[0].split(":")[-1] if name else ""
    group = re.search(r"\(([^)]*)\)", name or "")
    return stage, group.group(1) if group else ""


def diagnosis(row: Mapping[str, str] | None, folder: Path | None, log_lines: list[str],
              params: Mapping[str, Any] | None, exit_status: Any = None) -> tuple[list[Row], str | None]:
    """``(warnings, error line)`` of the failed task.

    The error line is the task's own last ``ERROR:`` line (user paths), followed by the task's
    name and its full log; a task that printed none gets a line with its exit status and last
    output line. Without a trace row (no trace, or a remote one) only an ``ERROR:`` line of the
    task's output is shown, as it is.
    """
    name = (row or {}).get("name") or ""
    stage, group = task_name_parts(name)
    warnings = [warning_row(stage, group, user_paths(t, params)) for t in warning_texts(log_lines)]
    errors = [line for line in log_lines if line.startswith(ERROR)]
    if row is None:
        return warnings, (user_paths(errors[-1], params) if errors else None)
    if folder is not None:
        where = f"({name}; full log: {folder}/.command.log)"
    else:
        where = f"({name}; full log: .command.log in the task's work folder, hash {row.get('hash') or '?'})"
    if errors:
        return warnings, f"{user_paths(errors[-1], params)} {where}"
    code = row.get("exit") if row.get("exit") not in (None, "", "-") else exit_status
    last = next((line for line in reversed(log_lines) if line), "(no output)")
    return warnings, (f"ERROR: {name} failed with exit status {code if code is not None else '?'}; "
                      f"its last output line: {user_paths(last, params)} {where}")

"""Inputs of the report (b2s.report.build): the stage outputs found by file name, per-group files,
group names, task warnings and versions.yml."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from b2s._constants import (
    CELLPROP_PLOT_SUFFIX,
    CELLPROP_SUFFIX,
    CORRELATION_MATRIX_SUFFIX,
    CORRELATION_PLOT_SUFFIX,
    CORRELATION_SUFFIX,
    FILTER_SUMMARY_SUFFIX,
    FILTERED_SUFFIX,
    FRACTIONS_FILE,
    FRACTIONS_SUMMARY_FILE,
    GENERATED_SUFFIX,
    MDE_PLOT_SUFFIX,
    METRICS_SUFFIX,
    PREPARE_SUMMARY_FILE,
    PREPROCESS_SUMMARY_FILE,
    TRAIN_SUMMARY_FILE,
)
from b2s.report.markup import esc

#: The per-group files whose names give the groups (``<group><suffix>``).
GROUP_SUFFIXES = (
    METRICS_SUFFIX, FILTER_SUMMARY_SUFFIX, CELLPROP_PLOT_SUFFIX, CELLPROP_SUFFIX,
    CORRELATION_PLOT_SUFFIX, CORRELATION_SUFFIX, CORRELATION_MATRIX_SUFFIX, MDE_PLOT_SUFFIX,
    FILTERED_SUFFIX, GENERATED_SUFFIX,
)


STAGE_SUMMARIES = (PREPARE_SUMMARY_FILE, FRACTIONS_SUMMARY_FILE, PREPROCESS_SUMMARY_FILE,
                   TRAIN_SUMMARY_FILE)


def read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_csv(path: Path | None, **kw: Any) -> pd.DataFrame | None:
    if path is None:
        return None
    try:
        return pd.read_csv(path, **kw)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def index_files(inputs_dir: Path) -> dict[str, Path]:
    """basename -> path of every file under ``inputs_dir`` (first in sorted order wins)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(inputs_dir, followlinks=True):
        dirs.sort()
        for f in sorted(files):
            found.setdefault(f, Path(root) / f)
    return found


def discover_groups(files: dict[str, Path]) -> list[str]:
    """Group names from per-group file names, in fractions.csv order when available."""
    groups: set[str] = set()
    for name in files:
        for suf in GROUP_SUFFIXES:
            if name.endswith(suf) and len(name) > len(suf):
                groups.add(name[: -len(suf)])
    order: list[str] = []
    frac = read_csv(files.get(FRACTIONS_FILE), index_col=0)
    if frac is not None:
        order = [str(g) for g in frac.index if str(g) in groups]
    return order + sorted(groups - set(order))


def group_names(files: dict[str, Path]) -> dict[str, str]:
    """``{group ID (file-name slug): display name as given}`` from prepare_summary.json."""
    summ = read_json(files.get(PREPARE_SUMMARY_FILE)) or {}
    names = (summ.get("groups") or {}).get("names") or {}
    return {str(k): str(v) for k, v in names.items()}


def group_label(g: str, files: dict[str, Path]) -> str:
    """The group's display name, with its file name when that differs (HTML-escaped)."""
    name = group_names(files).get(g, g)
    return esc(name) if name == g else f"{esc(name)} <span class='muted'>(files: {esc(g)})</span>"


def parse_versions(text: str) -> pd.DataFrame | None:
    """versions.yml (``process: {tool: version}`` blocks) -> table tool, version(s), processes."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    tools: dict[str, dict[str, list[str]]] = {}
    for proc, block in data.items():
        if not isinstance(block, dict):
            continue
        for tool, ver in block.items():
            tools.setdefault(str(tool), {}).setdefault(str(ver), []).append(str(proc).split(":")[-1])
    rows = [{"tool": t, "version": ", ".join(vs),
             "processes": ", ".join(sorted({p for ps in vs.values() for p in ps}))}
            for t, vs in sorted(tools.items())]
    return pd.DataFrame(rows)


def read_task_warnings(path: Path | None, params: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """``(stage, group, warning)`` rows of the pipeline's ``task_warnings.tsv`` (the WARNING:
    lines every task printed, collected by the workflow), with the user's paths for the staged
    input names when ``params`` are given (b2s.head.task_messages); [] when the file is absent."""
    from b2s.head.task_messages import read_task_warnings as read

    return read(path, params)


def warning_lines(groups: list[str], metrics: dict[str, dict[str, Any]],
                  task_warnings: Path | None, params: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(where, warning)`` for the top of the report: QC's per-group warnings, then every other
    task warning (stage and group), each once (QC prints its own warnings as task lines too)."""
    out = [(g, str(w)) for g in groups for w in metrics[g].get("warnings") or []]
    shown = {w for _, w in out}
    for stage, group, text in read_task_warnings(task_warnings, params):
        if not any(w in text for w in shown):
            out.append((f"{stage} {group}".strip(), text))
            shown.add(text)
    return out

"""The head node's run guards: what happens before the first task and after the last one.

:func:`start` checks params and inputs (:func:`b2s.head.params.validate_run`), takes the outdir
lock (b2s.head.outdir_lock) and deletes a staging folder left by a killed run; :func:`finish`
publishes or discards the staging folder (b2s.head.staging), prints the task warnings and a failed
task's error line (b2s.head.task_messages) and releases the lock. Both take the run's facts
(``params``, ``workflow`` metadata and, at the end, ``end``) as bin/run_guard.py reads them.
Standard library only, except jsonschema for the parameter checks (skipped with a warning without
it). Lines on stderr are for Nextflow's log (``INFO:``, ``WARN:``, ``ERROR:``); lines on stdout
(:func:`finish`) are the run's last console lines.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import b2s.head.outdir_lock as lk
import b2s.head.staging as st
import b2s.head.task_messages as tm
from b2s.head.preflight import is_remote

EXIT_REFUSED = 2


def log(kind: str, line: str) -> None:
    """One line for Nextflow's log (``INFO``, ``WARN`` or ``ERROR``)."""
    print(f"{kind}: {line}", file=sys.stderr, flush=True)


def local_outdir(params: dict[str, Any], workflow: dict[str, Any]) -> Path | None:
    """``--outdir`` as a local folder (relative to the launch folder, as Nextflow resolves it);
    None when unset or an object store."""
    outdir = str(params.get("outdir") or "")
    if not outdir or is_remote(outdir):
        return None
    path = Path(outdir).expanduser()
    return path if path.is_absolute() else Path(workflow.get("launch_dir") or ".") / path


def me(workflow: dict[str, Any]) -> dict[str, Any]:
    """This run's lock content."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "?")
    return {"pipeline": "nf-bulk2single", "run_name": workflow.get("run_name"),
            "session_id": workflow.get("session_id"), "pid": int(workflow["pid"]), "host": lk.host_name(),
            "user": user, "launch_dir": workflow.get("launch_dir"), "started": int(time.time() * 1000),
            "command": workflow.get("command_line")}


def discard_own_records(outdir: Path | None, since_ms: int) -> None:
    """Remove what Nextflow created in ``outdir`` for a run stopped before any task: its empty
    execution trace (header only, written since ``since_ms``), then ``pipeline_info/`` and
    ``outdir`` when left empty."""
    if outdir is None:
        return
    info = outdir / "pipeline_info"
    for trace in info.glob("execution_trace_*.txt"):
        with contextlib.suppress(OSError):
            if trace.stat().st_mtime * 1000 >= since_ms and len(trace.read_text().splitlines()) <= 1:
                trace.unlink()
    for folder in (info, outdir):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def check_params(params: dict[str, Any], workflow: dict[str, Any]) -> list[str]:
    """Schema and head-node checks (:func:`b2s.head.params.validate_run`): the error lines; warnings logged."""
    if not params.get("validate_params", True):
        log("WARN", "--validate_params false: parameters are not checked against nextflow_schema.json")
        return []
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        log("WARN", "python3 on this machine has no jsonschema module, so parameters are not validated against "
                    "nextflow_schema.json here; each task's script still checks its inputs")
        return []
    from b2s.head.params import validate_run
    from b2s.head.schema import load_schema

    schema_path = Path(workflow["project_dir"]) / "nextflow_schema.json"
    res = validate_run(params, load_schema(schema_path), schema_path, executor=workflow.get("executor") or "local")
    for line in res.warnings:
        log("WARN", line)
    return list(res.errors)


def start(facts: dict[str, Any]) -> int:
    """Checks before any task, then the outdir lock; 2 when the run is refused."""
    params, workflow = facts["params"], facts["workflow"]
    outdir_arg = str(params.get("outdir") or "")
    outdir = local_outdir(params, workflow)
    start_ms = int(workflow.get("start_ms") or 0)
    errors = check_params(params, workflow)
    try:
        staging = st.staging_dir(outdir, params) if outdir is not None else None
    except ValueError as err:
        errors.append(str(err))
    if errors:
        for line in errors:
            log("ERROR", line)
        discard_own_records(outdir, start_ms)
        return EXIT_REFUSED
    if outdir is None:
        if outdir_arg:
            log("INFO", f"--outdir {outdir_arg} is an object store: no run lock is taken there, so make sure no "
                        "other run writes to it")
        return 0
    outdir.mkdir(parents=True, exist_ok=True)
    lock = outdir / lk.LOCK_NAME
    mine = me(workflow)
    res = lk.take_lock(lock, json.dumps(mine, indent=4) + "\n", lambda other, age: lk.stale_reason(other, age, mine))
    for line in res.takeovers:
        log("WARN", f"--outdir {outdir_arg}: {line}")
    if not res.taken:
        other = res.holder
        if other is None:
            discard_own_records(outdir, start_ms)
            log("ERROR", f"--outdir {outdir_arg}: the run lock {lock} could not be taken (other runs kept taking it "
                         "at the same moment); start again")
            return EXIT_REFUSED
        try:
            started = int(other.get("started") or 0)
        except (TypeError, ValueError):
            started = 0
        discard_own_records(outdir, max(start_ms, started))
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(started / 1000)) if started else "?"
        log("ERROR", f"--outdir {outdir_arg} is in use by run '{other.get('run_name') or '?'}' (pid "
                     f"{other.get('pid') or '?'} on {other.get('host') or '?'}, since {since}, session "
                     f"{other.get('session_id') or '?'}); two runs must not publish into one folder: wait for it to "
                     f"end or pass another --outdir (if that run is gone, delete {lock})")
        return EXIT_REFUSED
    # The lock holder owns the staging folder: one left behind belongs to a run that was killed.
    if st.discard(staging):
        log("WARN", f"--outdir {outdir_arg}: deleting {params['staging_folder']} left by a run that was killed (its results "
                    "were never published)")
    script = Path(workflow["project_dir"]) / "bin" / "run_guard.py"
    subprocess.Popen([sys.executable, str(script), "hold", "--lock", str(lock),
                      "--session-id", str(mine["session_id"]), "--pid", str(mine["pid"])],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True, cwd="/")
    return 0


def finish(facts: dict[str, Any]) -> int:
    """At the end of the run: publish or discard, the last console lines, release the lock."""
    params, workflow, end = facts["params"], facts["workflow"], facts.get("end") or {}
    outdir_arg = str(params.get("outdir") or "")
    outdir = local_outdir(params, workflow)
    success = bool(end.get("success"))
    try:
        staging = st.staging_dir(outdir, params) if outdir is not None else None
    except ValueError:  # refused by start: no task ran
        staging = None
    if staging is not None:
        if not success:
            st.discard(staging)
        elif staging.is_dir():
            try:
                st.move_tree(staging, outdir)
            except OSError as err:
                log("ERROR", f"--outdir {outdir_arg}: the results could not be moved there from {staging} ({err}); "
                             "they are in that folder: move them by hand or run again with -resume")
    if not success and outdir_arg:
        log("WARN", f"nothing was published to {outdir_arg} because the run failed; the finished tasks stay in the "
                    "work folder: fix the problem and run again with -resume to reuse them")
    rows = tm.read_task_warnings(end.get("warnings"), params)
    error = None
    if not success:
        trace = tm.run_trace(outdir, int(workflow.get("start_ms") or 0)) if outdir is not None else None
        row = tm.failed_task(tm.read_trace(trace), end.get("exit_status")) if trace else None
        folder = tm.task_dir(row, workflow.get("work_dir")) if row else None
        lines = tm.task_log_lines(folder) or [ln.strip() for ln in str(end.get("error_message") or "").splitlines()]
        warnings, error = tm.diagnosis(row, folder, lines, params, end.get("exit_status"))
        rows += warnings
    for line in tm.summary_lines(rows) + ([error] if error else []):
        print(line, flush=True)
    if outdir is not None:
        lk.release(outdir / lk.LOCK_NAME, {"session_id": workflow.get("session_id"), "pid": workflow.get("pid")})
    return 0

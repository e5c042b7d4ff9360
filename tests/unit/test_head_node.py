"""The head node's run guards (bin/run_guard.py), without a pipeline run: the outdir lock
(b2s.head.outdir_lock), publishing all or nothing (b2s.head.staging), the task warnings and a failed task's
ERROR line as the user reads them (b2s.head.task_messages), and the `start` / `finish` commands the
pipeline calls. The same behaviours through `nextflow run` are in tests/pipeline/test_run_guards.py
(lock, staging, failure line) and tests/pipeline/test_resources.py (warnings).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import b2s.errors as errors
import b2s.head.guard as guard
import b2s.head.outdir_lock as lk
import b2s.head.staging as st
import b2s.head.task_messages as tm
from b2s.head.schema import load_schema, schema_properties

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "assets" / "test_data"
# the pipeline's default, as a run's facts carry it
STAGING = {"staging_folder": schema_properties(load_schema(REPO / "nextflow_schema.json"))["staging_folder"]["default"]}


# --------------------------------------------------------------------------------------------
# the lock
# --------------------------------------------------------------------------------------------
def _race(lock: str, i: int, barrier, results) -> None:
    barrier.wait()
    res = lk.take_lock(Path(lock), json.dumps({"run": i}) + "\n",
                       lambda other, age: "stale" if (other or {}).get("run") == 0 else None)
    results.put((i, res.taken))


def test_runs_racing_for_one_stale_lock_end_with_one_holder(tmp_path):
    """Runs finding one stale lock at the same instant: exactly one takes it over, and it is the
    one the lock names (a delete-then-create takeover let 2-4 of 8 'win' in half of the rounds).
    8 processes race through take_lock, 20 rounds (moved here from tests/pipeline with the lock's
    code: processes instead of threads of one JVM)."""
    ctx = multiprocessing.get_context("fork")
    lock = tmp_path / "locks" / lk.LOCK_NAME
    lock.parent.mkdir()
    for _ in range(20):
        lock.write_text('{"run": 0}\n')
        barrier, results = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(lock), i, barrier, results)) for i in range(1, 9)]
        for p in procs:
            p.start()
        outcome = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        winners = [i for i, taken in outcome if taken]
        holder = json.loads(lock.read_text())["run"]
        assert len(winners) == 1 and winners == [holder], (winners, holder)
        lock.unlink()
    assert sorted(p.name for p in lock.parent.iterdir()) == [], "takeover mutex or temporary lock files left behind"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


ME = {"session_id": "mine", "host": socket.gethostname(), "pid": os.getpid()}
NOW_MS = int(time.time() * 1000)


@pytest.mark.parametrize(("other", "age_s", "reason"), [
    pytest.param({"session_id": "mine", "host": "elsewhere", "pid": 1}, 0, "same session (-resume)", id="same-session"),
    pytest.param({"session_id": "x", "host": ME["host"], "pid": "DEAD", "started": NOW_MS}, 0, "is not running",
                 id="same-host-dead-process"),
    pytest.param({"session_id": "x", "host": ME["host"], "pid": os.getpid(), "started": 1000}, 0,
                 "now belongs to another program", id="same-host-reused-pid"),
    pytest.param({"session_id": "x", "host": ME["host"], "pid": os.getpid(), "started": NOW_MS}, 10_000, None,
                 id="same-host-live-process-without-heartbeat"),
    pytest.param({"session_id": "x", "host": "elsewhere", "pid": 1}, 11 * 60, "no heartbeat from elsewhere for 11 min",
                 id="other-host-no-heartbeat"),
    pytest.param({"session_id": "x", "host": "elsewhere", "pid": 1}, 60, None, id="other-host-fresh"),
    pytest.param(None, 11 * 60, "unreadable lock untouched for 11 min", id="unreadable-old"),
    pytest.param(None, 60, None, id="unreadable-fresh"),
])
def test_stale_reason(other, age_s, reason):
    if other and other.get("pid") == "DEAD":
        other = {**other, "pid": _dead_pid()}
    got = lk.stale_reason(other, age_s, ME)
    assert (got is None) if reason is None else (reason in got), got


def test_lock_is_created_in_one_step_and_refused_when_it_exists(tmp_path, monkeypatch):
    lock = tmp_path / lk.LOCK_NAME
    assert lk.create_lock_file(lock, "one\n") and lock.read_text() == "one\n"
    assert not lk.create_lock_file(lock, "two\n") and lock.read_text() == "one\n"
    # a file system without hard links: created exclusively, then written
    lock.unlink()
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError("no hard links")))
    assert lk.create_lock_file(lock, "three\n") and lock.read_text() == "three\n"
    assert not lk.create_lock_file(lock, "four\n") and lock.read_text() == "three\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [lk.LOCK_NAME]


def test_a_stale_lock_is_deleted_only_while_unchanged(tmp_path):
    lock = tmp_path / lk.LOCK_NAME
    lock.write_text("seen")
    assert not lk.delete_if_unchanged(lock, "something else") and lock.exists()
    # another run is taking it over (its mutex is fresh): not deleted here
    mutex = tmp_path / (lk.LOCK_NAME + ".takeover")
    mutex.write_text("")
    assert not lk.delete_if_unchanged(lock, "seen") and lock.exists() and mutex.exists()
    # a mutex left by a run that died mid-takeover is removed, and the next attempt succeeds
    old = time.time() - lk.MUTEX_STALE_SECONDS - 5
    os.utime(mutex, (old, old))
    assert not lk.delete_if_unchanged(lock, "seen") and not mutex.exists()
    assert lk.delete_if_unchanged(lock, "seen") and not lock.exists()


def test_a_live_holder_refuses_and_a_dead_one_is_taken_over(tmp_path):
    lock = tmp_path / lk.LOCK_NAME
    holder = {"run_name": "first", "session_id": "s1", "pid": os.getpid(), "host": ME["host"], "started": NOW_MS}
    lock.write_text(json.dumps(holder))
    me = {**ME, "session_id": "s2", "run_name": "second"}
    res = lk.take_lock(lock, json.dumps(me), lambda other, age: lk.stale_reason(other, age, me))
    assert not res.taken and res.holder["run_name"] == "first"
    lock.write_text(json.dumps({**holder, "pid": _dead_pid()}))
    res = lk.take_lock(lock, json.dumps(me), lambda other, age: lk.stale_reason(other, age, me))
    assert res.taken and json.loads(lock.read_text())["run_name"] == "second"
    assert len(res.takeovers) == 1 and res.takeovers[0].startswith("taking over the lock of run 'first' (its process ")


def test_release_deletes_only_this_runs_lock(tmp_path):
    lock = tmp_path / lk.LOCK_NAME
    lock.write_text(json.dumps({"session_id": "other", "pid": 1}))
    assert not lk.release(lock, {"session_id": "mine", "pid": 1}) and lock.exists()
    lock.write_text(json.dumps({"session_id": "mine", "pid": 1}))
    assert lk.release(lock, {"session_id": "mine", "pid": "1"}) and not lock.exists()
    assert not lk.release(lock, {"session_id": "mine", "pid": 1})


def test_hold_keeps_the_lock_fresh_and_deletes_it_when_its_run_is_gone(tmp_path):
    nextflow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = tmp_path / lk.LOCK_NAME
    me = {"session_id": "s", "pid": nextflow.pid}
    lock.write_text(json.dumps(me))
    old = time.time() - 3600
    os.utime(lock, (old, old))
    held = threading.Thread(target=lk.hold, args=(lock, me), kwargs={"poll_s": 0.05, "heartbeat_s": 0.2})
    held.start()
    try:
        deadline = time.time() + 20
        while lock.stat().st_mtime < time.time() - 60 and time.time() < deadline:
            time.sleep(0.05)
        assert lock.stat().st_mtime > time.time() - 60, "the heartbeat did not touch the lock"
    finally:
        nextflow.kill()
        nextflow.wait()
    held.join(timeout=20)
    assert not held.is_alive() and not lock.exists(), "the lock of a killed run outlived it"


def test_hold_ends_when_the_lock_is_no_longer_this_runs(tmp_path):
    lock = tmp_path / lk.LOCK_NAME
    lock.write_text(json.dumps({"session_id": "s", "pid": os.getpid()}))
    held = threading.Thread(target=lk.hold, args=(lock, {"session_id": "s", "pid": os.getpid()}),
                            kwargs={"poll_s": 0.05})
    held.start()
    lock.write_text(json.dumps({"session_id": "taken over", "pid": 1}))
    held.join(timeout=20)
    assert not held.is_alive() and json.loads(lock.read_text())["session_id"] == "taken over"


# --------------------------------------------------------------------------------------------
# staging
# --------------------------------------------------------------------------------------------
def test_move_tree_publishes_replacing_files_and_keeping_relative_links(tmp_path):
    outdir = tmp_path / "results"
    staging = st.staging_dir(outdir, STAGING)
    work = tmp_path / "work" / "ab" / "cdef"
    work.mkdir(parents=True)
    (work / "big.h5ad").write_text("cells")
    (outdir / "qc").mkdir(parents=True)
    (outdir / "qc" / "old.csv").write_text("from an earlier run, replaced")
    (outdir / "notes.txt").write_text("the user's, kept")
    (staging / "qc" / "ctrl").mkdir(parents=True)
    (staging / "qc" / "old.csv").write_text("new")
    (staging / "qc" / "ctrl" / "ctrl.metrics.json").write_text("{}")
    (staging / "generate").mkdir()
    link = staging / "generate" / "ctrl.generated.h5ad"
    link.symlink_to(os.path.relpath(work / "big.h5ad", link.parent))  # publish_dir_mode rellink
    (staging / "generate" / "abs.h5ad").symlink_to(work / "big.h5ad")  # symlink
    assert st.move_tree(staging, outdir) == 4
    assert not staging.exists()
    assert (outdir / "qc" / "old.csv").read_text() == "new"
    assert (outdir / "notes.txt").read_text() == "the user's, kept"
    assert (outdir / "qc" / "ctrl" / "ctrl.metrics.json").read_text() == "{}"
    moved = outdir / "generate" / "ctrl.generated.h5ad"
    assert moved.is_symlink() and not os.path.isabs(os.readlink(moved)) and moved.read_text() == "cells"
    assert (outdir / "generate" / "abs.h5ad").read_text() == "cells"


def test_discard_deletes_the_staging_folder(tmp_path):
    staging = st.staging_dir(tmp_path, STAGING)
    (staging / "qc").mkdir(parents=True)
    (staging / "qc" / "x.csv").write_text("x")
    assert st.discard(staging) and not staging.exists()
    assert not st.discard(staging)


# --------------------------------------------------------------------------------------------
# task warnings and the failed task's line
# --------------------------------------------------------------------------------------------
PARAMS = {"bulk": "/data/my counts.tsv", "reference": "/data/ref.h5ad", "vae_weights": "/models/vae.pth",
          "samplesheet": None}


def test_user_paths_replace_staged_names_only():
    text = ("--bulk input/my counts.tsv: 3 rows; --reference input/ref.h5ad; vae.pth trained on 3 genes; "
            "myinput/ref.h5ad and input/ref.h5ad.bak stay; other/vae.pth stays")
    assert tm.user_paths(text, PARAMS) == (
        "--bulk /data/my counts.tsv: 3 rows; --reference /data/ref.h5ad; /models/vae.pth trained on 3 genes; "
        "myinput/ref.h5ad and input/ref.h5ad.bak stay; other/vae.pth stays")
    assert tm.user_paths("input/ref.h5ad", None) == "input/ref.h5ad"


def test_task_warnings_as_the_workflow_collects_them(tmp_path):
    """Blocks of raw task lines (any order, as collectFile writes them): one row per warning with
    the user's paths, the group of a batch task's tagged line, each task's warnings once and in
    its order, stages in pipeline order, tasks of one stage by their text (the order the report
    and the console had before the warnings became task outputs)."""
    raw = tmp_path / "task_warnings.tsv"
    raw.write_text(
        "QC\tctrl..stim\tWARNING: [group=stim] [qc] stim: few cells\n"
        "QC\tctrl..stim\tWARNING: [group=ctrl] [qc] ctrl: only 2/10 types\n"
        "PREPARE_INPUTS\t\tWARNING: --bulk input/my counts.tsv: 3 duplicate gene rows dropped\n"
        "PREPARE_INPUTS\t\tWARNING: --bulk input/my counts.tsv: 3 duplicate gene rows dropped\n"
        "PREPARE_INPUTS\t\tWARNING: --reference input/ref.h5ad: 12 cells without a type dropped\n"
        "FILTER\tb\tWARNING: all clusters below --leiden_size\n"
        "FILTER\ta\tWARNING: all clusters below --leiden_size\n"
        "\n")
    assert tm.read_task_warnings(raw, PARAMS) == [
        ("PREPARE_INPUTS", "", "--bulk /data/my counts.tsv: 3 duplicate gene rows dropped"),
        ("PREPARE_INPUTS", "", "--reference /data/ref.h5ad: 12 cells without a type dropped"),
        ("FILTER", "a", "all clusters below --leiden_size"),
        ("FILTER", "b", "all clusters below --leiden_size"),
        ("QC", "stim", "[qc] stim: few cells"),  # one task's lines keep their order
        ("QC", "ctrl", "[qc] ctrl: only 2/10 types"),
    ]
    assert tm.summary_lines(tm.read_task_warnings(raw, PARAMS))[:3] == [
        "WARN: 6 task warning(s) (also at the top of the report):",
        "  [PREPARE_INPUTS] --bulk /data/my counts.tsv: 3 duplicate gene rows dropped",
        "  [PREPARE_INPUTS] --reference /data/ref.h5ad: 12 cells without a type dropped"]
    assert tm.read_task_warnings(tmp_path / "absent.tsv") == [] and tm.summary_lines([]) == []


def test_a_stage_writes_its_warnings_to_its_declared_output(tmp_path, monkeypatch):
    out = tmp_path / "task_warnings.txt"
    monkeypatch.setenv(errors.WARNINGS_FILE_ENV, str(out))
    errors.warn("--bulk input/b.tsv: 3   duplicate rows")
    with errors.warning_group("stim"):
        errors.warn("[qc] stim: few cells", file=sys.stdout)
    assert out.read_text().splitlines() == ["WARNING: --bulk input/b.tsv: 3 duplicate rows",
                                            "WARNING: [group=stim] [qc] stim: few cells"]


TRACE_HEADER = "task_id\thash\tnative_id\tname\tstatus\texit\tsubmit\n"


def _trace(tmp_path, *rows: str) -> Path:
    path = tmp_path / "results" / "pipeline_info" / "execution_trace_2026-01-01_00-00-00.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TRACE_HEADER + "".join(r + "\n" for r in rows))
    return path


def test_the_failed_task_is_found_in_the_runs_trace(tmp_path):
    trace = _trace(tmp_path,
                   "1\tab/111111\t1\tBULK2SINGLE:TRAIN_VAE (beta-VAE)\tFAILED\t137\t-",  # retried, then fine
                   "2\tcd/222222\t2\tBULK2SINGLE:PREPROCESS (shared genes)\tCOMPLETED\t0\t-",
                   "3\tab/333333\t3\tBULK2SINGLE:TRAIN_VAE (beta-VAE)\tCOMPLETED\t0\t-",
                   "4\tef/444444\t4\tBULK2SINGLE:QC (ctrl)\tFAILED\t2\t-")
    assert tm.run_trace(tmp_path / "results") == trace
    assert tm.run_trace(tmp_path / "results", since_ms=int((time.time() + 60) * 1000)) is None
    row = tm.failed_task(tm.read_trace(trace), 2)
    assert row["name"] == "BULK2SINGLE:QC (ctrl)"
    task = tmp_path / "work" / "ef" / "444444abcdef"
    task.mkdir(parents=True)
    assert tm.task_dir(row, tmp_path / "work") == task
    assert tm.task_dir(row, tmp_path / "elsewhere") is None
    assert tm.failed_task(tm.read_trace(_trace(tmp_path, "1\tab/1\t1\tX\tCOMPLETED\t0\t-"))) is None


def test_the_failed_tasks_own_error_line_with_the_users_paths(tmp_path):
    task = tmp_path / "work" / "ef" / "444444"
    task.mkdir(parents=True)
    (task / ".command.err").write_text("loading\nWARNING: [qc] ctrl: few cells\n"
                                       "ERROR: --reference input/ref.h5ad: no column 'x'; pass --celltype_key\n")
    (task / ".command.out").write_text("[qc] ctrl: started\n")
    row = {"name": "BULK2SINGLE:QC (ctrl)", "hash": "ef/444444", "exit": "2"}
    warnings, line = tm.diagnosis(row, task, tm.task_log_lines(task), PARAMS)
    assert warnings == [("QC", "ctrl", "[qc] ctrl: few cells")]
    assert line == (f"ERROR: --reference /data/ref.h5ad: no column 'x'; pass --celltype_key "
                    f"(BULK2SINGLE:QC (ctrl); full log: {task}/.command.log)")
    # a task that printed no ERROR line (killed, a tool failing): its exit status and last line
    _, line = tm.diagnosis(row, task, ["", "[qc] ctrl: started", ""], PARAMS)
    assert line.startswith("ERROR: BULK2SINGLE:QC (ctrl) failed with exit status 2; its last output line: "
                           "[qc] ctrl: started (BULK2SINGLE:QC (ctrl); full log: ")
    _, line = tm.diagnosis(row, None, [], PARAMS, 1)
    assert line.startswith("ERROR: BULK2SINGLE:QC (ctrl) failed with exit status 2; its last output line: (no output)")
    # no trace row (trace off, an object store): the task's ERROR line alone; no task: nothing
    assert tm.diagnosis(None, None, ["ERROR: --bulk input/my counts.tsv: empty"], PARAMS)[1] == \
        "ERROR: --bulk /data/my counts.tsv: empty"
    assert tm.diagnosis(None, None, ["Script compilation failed"], PARAMS) == ([], None)


# --------------------------------------------------------------------------------------------
# bin/run_guard.py start / finish (b2s.head.guard)
# --------------------------------------------------------------------------------------------
def _facts(tmp_path, outdir, **params) -> dict:
    return {"params": {"outdir": str(outdir), "validate_params": False, **STAGING, **params},
            "workflow": {"run_name": "this_run", "session_id": "s-this", "pid": os.getpid(),
                         "launch_dir": str(tmp_path), "work_dir": str(tmp_path / "work"),
                         "project_dir": str(REPO), "command_line": "nextflow run .",
                         "start_ms": int(time.time() * 1000) - 1000, "executor": "local"}}


def test_start_refuses_a_live_run_and_leaves_no_record_of_its_own(tmp_path, capsys):
    outdir = tmp_path / "results"
    info = outdir / "pipeline_info"
    info.mkdir(parents=True)
    theirs = info / "execution_trace_theirs.txt"
    theirs.write_text(TRACE_HEADER)
    old = time.time() - 30
    os.utime(theirs, (old, old))
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the first run's Nextflow
    try:
        started = int(time.time() * 1000)
        holder = {"run_name": "first", "session_id": "s-first", "pid": first.pid, "host": ME["host"],
                  "started": started}
        (outdir / lk.LOCK_NAME).write_text(json.dumps(holder))
        facts = _facts(tmp_path, outdir)
        mine = info / "execution_trace_mine.txt"
        mine.write_text(TRACE_HEADER)
        assert guard.start(facts) == 2
    finally:
        first.kill()
        first.wait()
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"ERROR: --outdir {outdir} is in use by run 'first' (pid {first.pid} on "
                              f"{ME['host']}, since ") and f"delete {outdir / lk.LOCK_NAME})" in err[-1]
    assert theirs.exists() and not mine.exists() and json.loads((outdir / lk.LOCK_NAME).read_text()) == holder


def test_start_refused_by_a_check_leaves_no_outdir(tmp_path, capsys):
    pytest.importorskip("jsonschema")
    outdir = tmp_path / "results"
    (outdir / "pipeline_info").mkdir(parents=True)
    (outdir / "pipeline_info" / "execution_trace_mine.txt").write_text(TRACE_HEADER)
    facts = _facts(tmp_path, outdir, validate_params=True, bulk=str(TEST_DATA / "bulk_counts.tsv.gz"),
                   reference=str(TEST_DATA / "reference.h5ad"), celltype_key="celltype", leiden_size=0)
    assert guard.start(facts) == 2
    errs = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    assert errs and errs[0].startswith("ERROR: --leiden_size 0: must be >= 1"), errs
    assert not outdir.exists()


def test_start_takes_over_a_dead_runs_lock_and_finish_publishes(tmp_path, capsys):
    outdir = tmp_path / "results"
    staging = st.staging_dir(outdir, STAGING)
    (staging / "qc").mkdir(parents=True)
    (staging / "qc" / "left.csv").write_text("a killed run's")
    (outdir / lk.LOCK_NAME).write_text(json.dumps({"run_name": "killed_run", "session_id": "old", "pid": _dead_pid(),
                                                   "host": ME["host"], "started": NOW_MS}))
    facts = _facts(tmp_path, outdir)
    assert guard.start(facts) == 0
    err = capsys.readouterr().err
    assert f"WARN: --outdir {outdir}: taking over the lock of run 'killed_run'" in err
    assert f"deleting {STAGING['staging_folder']} left by a run that was killed" in err and not staging.exists()
    assert lk.is_mine(outdir / lk.LOCK_NAME, {"session_id": "s-this", "pid": os.getpid()})
    # the run's tasks publish into the staging folder; its warnings are collected
    (staging / "qc").mkdir(parents=True)
    (staging / "qc" / "ctrl.csv").write_text("x")
    raw = tmp_path / "task_warnings.tsv"
    raw.write_text("PREPARE_INPUTS\t\tWARNING: --bulk input/b.tsv: 3 duplicate gene rows dropped\n")
    facts["end"] = {"success": True, "exit_status": 0, "warnings": str(raw)}
    assert guard.finish({**facts, "params": {**facts["params"], "bulk": "/data/b.tsv"}}) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["WARN: 1 task warning(s) (also at the top of the report):",
                   "  [PREPARE_INPUTS] --bulk /data/b.tsv: 3 duplicate gene rows dropped"]
    assert (outdir / "qc" / "ctrl.csv").read_text() == "x" and not staging.exists()
    assert not (outdir / lk.LOCK_NAME).exists()


def test_finish_of_a_failed_run_publishes_nothing_and_names_the_task(tmp_path, capsys):
    outdir = tmp_path / "results"
    facts = _facts(tmp_path, outdir, reference="/data/ref.h5ad")
    assert guard.start(facts) == 0
    capsys.readouterr()
    (st.staging_dir(outdir, STAGING) / "prepare_inputs").mkdir(parents=True)
    (st.staging_dir(outdir, STAGING) / "prepare_inputs" / "groups.csv").write_text("x")
    _trace(tmp_path, "1\tab/111111\t1\tBULK2SINGLE:PREPARE_INPUTS (inputs)\tFAILED\t2\t-")
    task = tmp_path / "work" / "ab" / "111111ffff"
    task.mkdir(parents=True)
    (task / ".command.err").write_text("WARNING: --reference input/ref.h5ad: raw counts in .raw\n"
                                       "ERROR: --celltype_key 'x' is not a column of input/ref.h5ad obs; pick one\n")
    facts["end"] = {"success": False, "exit_status": 2, "error_message": "ignored: the task's files are read"}
    assert guard.finish(facts) == 0
    res = capsys.readouterr()
    assert f"WARN: nothing was published to {outdir} because the run failed" in res.err
    assert res.out.splitlines() == [
        "WARN: 1 task warning(s) (also at the top of the report):",
        "  [PREPARE_INPUTS inputs] --reference /data/ref.h5ad: raw counts in .raw",
        f"ERROR: --celltype_key 'x' is not a column of /data/ref.h5ad obs; pick one "
        f"(BULK2SINGLE:PREPARE_INPUTS (inputs); full log: {task}/.command.log)"]
    assert sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*") if p.is_file()) == \
        ["pipeline_info/execution_trace_2026-01-01_00-00-00.txt"]


@pytest.mark.parametrize("name", ["..", ".", "", "a/b"])
def test_a_staging_folder_that_is_not_one_folder_name_refuses_the_run(tmp_path, capsys, name):
    """The staging folder is deleted when a run fails: with --validate_params false (no schema
    pattern) a name such as '..' must still refuse the run, and touch nothing above --outdir."""
    outdir = tmp_path / "sub" / "results"
    (tmp_path / "sub" / "keep.txt").parent.mkdir(parents=True)
    (tmp_path / "sub" / "keep.txt").write_text("mine")
    facts = _facts(tmp_path, outdir, staging_folder=name)
    assert guard.start(facts) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"ERROR: --staging_folder '{name}': must be one folder name inside --outdir (no '/'), not '.' "
                       "or '..'; leave it unset")
    facts["end"] = {"success": False, "exit_status": 1}
    assert guard.finish(facts) == 0
    assert (tmp_path / "sub" / "keep.txt").read_text() == "mine"

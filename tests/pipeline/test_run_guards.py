"""Run guards of issue 12 with the real `nextflow run`: the outdir lock, nothing published when a
parameter or input is refused (on the head node, or by a task after others finished: tasks publish
into <outdir>/.nf-bulk2single.staging, moved into place only when the run succeeds), the failed
task's ERROR line as the last console line, and task warnings in the console summary and the report.
The guards themselves are bin/run_guard.py (b2s.head.outdir_lock, b2s.head.staging, b2s.head.task_messages), run by
subworkflows/local/utils_bulk2single_pipeline; their unit tests are tests/unit/test_head_node.py.

-stub-run wherever the behaviour shows with it (a stub run takes ~30 s). The head-node checks
themselves are catalogued cheaply in tests/unit/test_run_guards.py; the rows here show that the
pipeline runs them before any task and leaves no file behind. A new case is one row.

Issue 12's numbered problems and the tests that show each one fixed. Every test listed FAILS on
de4d37a (main before issue 12; the tests copied there and run; harness adaptations: validate_params
called without --executor, the sidecar written without b2s.model.weights) and passes on this branch:
  1 stale checkpoint       unit test_train: test_stale_checkpoint_never_changes_the_result (old:
                           resumed_from 6 for a 2-epoch request); resume on the console:
                           test_checkpoint_resume_is_bit_identical, test_train_vae_script_kill_and_resume
                           (old: no WARNING line); pipeline test_pipeline:
                           test_leftover_checkpoint_of_a_longer_run_never_changes_the_result (not run on old)
  2 shared outdir          here: test_second_live_run_into_one_outdir_is_refused,
                           test_lock_of_a_dead_run_is_taken_over; unit test_head_node:
                           test_runs_racing_for_one_stale_lock_... (the old takeover, delete then
                           create, in the same harness: 2-4 of 8 winners in 15 of 30 rounds)
  3 wrong results, rc 0    reordered weights: unit test_weights (all); TPM rounded, single type, zero
                           cells: unit test_bad_inputs rows tpm_rounded_to_integers, cpm_rounded_one_sample,
                           normalised_reference, single_cell_type, zero_count_reference_cells;
                           leiden_size ignored: test_leiden_size_that_filters_nothing_warns; warnings
                           surfaced: pipeline test_resources: test_task_warnings_reach_the_console_summary_
                           and_the_report, unit test_report_top_lists_task_warnings_once, rows
                           duplicate_bulk_genes, few_shared_genes (warnings recorded)
  4 misleading errors      unit test_bad_inputs rows gzip_named_tsv, plain_text_named_gz,
                           biomart_three_column_map, headerless_three_column_map, reference_ensembl_*,
                           transposed_bulk_*, pandas_to_csv_index_column; unit test_run_guards
                           preflight rows bulk-path-with-spaces, outdir-not-writable, outdir-is-a-file,
                           outdir-below-a-file, empty-reference
  5 late failures publish  here: test_refused_on_the_head_node_publishes_nothing (old: rc 0),
                           test_input_refused_by_a_task_publishes_nothing (both rows),
                           test_failed_run_publishes_nothing_and_its_resume_publishes_everything; unit
                           preflight rows checkpoint-dir-*, cuda-without-gpu-*, leiden-size-0,
                           test_schema_and_stage_bounds_agree[leiden_size]
  6 diagnosis first/last   pipeline test_pipeline: test_bad_input_stops_with_one_clear_line (4 rows;
                           old: the last line is Nextflow's, not the task's ERROR line)
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from b2s.head.schema import load_schema, schema_properties

from .nfrun import REPO, nextflow_run, nftest_pipeline_paths, start_nextflow

TEST_DATA = REPO / "assets" / "test_data"
LOCK = ".nf-bulk2single.lock"

pytestmark = pytest.mark.pipeline


def _last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------
# outdir lock
# --------------------------------------------------------------------------------------------
def test_second_live_run_into_one_outdir_is_refused(tmp_path):
    outdir = tmp_path / "shared_results"
    # The first run's first task waits (at most 10 min) until the test has checked the second run.
    release = tmp_path / "release"
    slow = tmp_path / "hold.config"
    slow.write_text("process { withName: 'PREPARE_INPUTS' { beforeScript = "
                    f"'i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done' }} }}\n")
    first = start_nextflow(tmp_path / "first", "-profile", "test", "-stub-run", "-c", str(slow), outdir=str(outdir))
    try:
        lock = outdir / LOCK
        deadline = time.time() + 300
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
            time.sleep(1)
        assert lock.exists(), (tmp_path / "first" / "console.txt").read_text()[-3000:]
        holder = json.loads(lock.read_text())
        assert holder["pid"] and holder["host"] and holder["session_id"] and holder["run_name"]

        second = nextflow_run(tmp_path / "second", "-profile", "test", "-stub-run", outdir=str(outdir))
        assert second.returncode != 0
        assert second.submitted() == []
        last = _last_line(second.output)
        assert last.startswith(f"ERROR: --outdir {outdir} is in use by run '{holder['run_name']}'"), second.output[-3000:]
        assert "Traceback" not in second.output
        # the refused run left no record of its own in the other run's outdir
        assert len(list((outdir / "pipeline_info").glob("execution_trace_*.txt"))) == 1
        assert first.poll() is None, "the first run ended before the second was checked"
    finally:
        release.write_text("")
        rc = first.wait(timeout=900)
    console = (tmp_path / "first" / "console.txt").read_text()
    assert rc == 0, console[-3000:]
    assert not (outdir / LOCK).exists(), "the lock outlived its run"
    assert (outdir / "report" / "bulk2single_report.html").exists()


def test_lock_of_a_dead_run_is_taken_over(tmp_path):
    outdir = tmp_path / "results"
    outdir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (outdir / LOCK).write_text(json.dumps({"run_name": "killed_run", "session_id": "0000", "pid": dead.pid,
                                           "host": socket.gethostname(), "started": int(time.time() * 1000)}))
    res = nextflow_run(tmp_path, "-profile", "test", "-stub-run", outdir=str(outdir))
    assert res.returncode == 0, res.output[-3000:]
    assert "taking over the lock of run 'killed_run'" in res.output
    assert not (outdir / LOCK).exists()


# Two runs racing for one stale lock end with one holder: the lock is Python on the head node
# (b2s.head.outdir_lock), so that race runs without Nextflow, 8 processes x 20 rounds, in
# tests/unit/test_head_node.py (test_runs_racing_for_one_stale_lock_end_with_one_holder).


# --------------------------------------------------------------------------------------------
# refused on the head node: nothing published
# --------------------------------------------------------------------------------------------
def _a_file(tmp_path):
    path = tmp_path / "not_a_folder"
    path.write_text("x")
    return str(path)


# (arguments, with {a_file} filled in; start of the ERROR line each gives): all in ONE run, which
# must print each line and publish nothing. More cases at unit level: tests/unit/test_run_guards.py.
HEAD_NODE_REFUSALS = [
    (["--leiden_size", "0"], "ERROR: --leiden_size 0: must be >= 1"),
    (["--checkpoint_dir", "{a_file}"], "ERROR: --checkpoint_dir {a_file}: exists and is a file"),
    (["--device", "cuda"], "ERROR: --device cuda: no GPU is visible"),
]


def test_refused_on_the_head_node_publishes_nothing(tmp_path):
    names = {"a_file": _a_file(tmp_path)}
    args = [a.format(**names) for row, _ in HEAD_NODE_REFUSALS for a in row]
    res = nextflow_run(tmp_path, "-profile", "test", "-stub-run", *args, env={"CUDA_VISIBLE_DEVICES": "-1"})
    assert res.returncode != 0
    assert res.submitted() == []
    errors = [line for line in res.output.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == len(HEAD_NODE_REFUSALS), res.output[-3000:]
    for _, error in HEAD_NODE_REFUSALS:
        assert any(line.startswith(error.format(**names)) for line in errors), (error, errors)
    assert not res.outdir.exists(), sorted(str(p) for p in res.outdir.rglob("*"))


# --------------------------------------------------------------------------------------------
# refused by a task after others finished: still nothing published (transactional publishing)
# --------------------------------------------------------------------------------------------
# the default of --staging_folder
STAGING = schema_properties(load_schema(REPO / "nextflow_schema.json"))["staging_folder"]["default"]


def _published(outdir) -> list[str]:
    """Files in ``outdir`` other than Nextflow's own execution records (pipeline_info/execution_*)."""
    if not outdir.exists():
        return []
    return sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*")
                  if not p.is_dir() and not (p.parent.name == "pipeline_info" and p.name.startswith("execution_")))


def _weights_of_other_genes(tmp_path) -> str:
    """A vae.pth whose sidecar lists 3 genes the test reference lacks (the check reads the sidecar first)."""
    from b2s.model.weights import write_sidecar

    pth = tmp_path / "other_genes" / "vae.pth"
    pth.parent.mkdir()
    pth.write_bytes(b"weights of another reference")
    write_sidecar(pth, ["GENE_A", "GENE_B", "GENE_C"], 256, {"engine": "native"})
    return str(pth)


def _markers_of_unknown_type(tmp_path) -> str:
    path = tmp_path / "my_markers.csv"
    path.write_text("celltype,gene\nno_such_type,CD3E\n")
    return str(path)


# (make the bad file, its argument, the stage that refuses it, start of its ERROR line, more args):
# inputs only a task can judge (they need the data); the stages before it finish and publish on
# the pre-issue-12 main. Tasks already running when one fails are finished (errorStrategy
# 'finish'), hence a short training where it would run alongside. A new case is one row.
LATE_INPUT_FAILURES = [
    pytest.param(_weights_of_other_genes, "--vae_weights", "GENERATE", "ERROR: --vae_weights {path} was trained on 3 genes",
                 [], id="vae_weights-of-other-genes"),
    pytest.param(_markers_of_unknown_type, "--markers", "ESTIMATE_FRACTIONS",
                 "ERROR: --markers {path}: cell type(s) no_such_type are not in the reference", ["--epoch_num", "2"],
                 id="markers-unknown-type"),
]


@pytest.mark.parametrize(("make", "arg", "stage", "error", "more"), LATE_INPUT_FAILURES)
def test_input_refused_by_a_task_publishes_nothing(tmp_path, make, arg, stage, error, more):
    path = make(tmp_path)
    res = nextflow_run(tmp_path, "-profile", "test", arg, path, *more)
    assert res.returncode != 0
    assert any(line for line in res.output.splitlines() if "Submitted process >" in line and "PREPARE_INPUTS" in line)
    assert _published(res.outdir) == []
    assert not (res.outdir / STAGING).exists() and not (res.outdir / LOCK).exists()
    last = _last_line(res.output)
    assert last.startswith(error.format(path=path)) and f"BULK2SINGLE:{stage}" in last, res.output[-3000:]
    assert "nothing was published to results because the run failed" in res.output


def test_failed_run_publishes_nothing_and_its_resume_publishes_everything(tmp_path):
    """A task failing after 8 others published (injected into QC): outdir keeps only Nextflow's
    records; the -resume that then succeeds publishes what a clean run does, cached tasks included."""
    fail = tmp_path / "fail_qc.config"
    fail.write_text("process { withName: 'QC' { beforeScript = 'exit 1' } }\n")
    # one task per group (as on HPC), so that 8 tasks have published before QC fails
    failed = nextflow_run(tmp_path, "-profile", "test", "-stub-run", "-c", str(fail), "--groups_per_task", "1")
    assert failed.returncode != 0
    assert len([line for line in failed.submitted() if "QC" not in line]) >= 8, failed.output[-3000:]
    assert _published(failed.outdir) == []
    assert not (failed.outdir / STAGING).exists()
    assert _last_line(failed.output).startswith("ERROR: BULK2SINGLE:QC"), failed.output[-3000:]

    resumed = nextflow_run(tmp_path, "-profile", "test", "-stub-run", "-resume", "--groups_per_task", "1")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert len(resumed.cached()) >= 8
    published = _published(resumed.outdir)
    for rel in nftest_pipeline_paths():
        assert rel in published, rel
    for stage in ("prepare_inputs", "estimate_fractions", "preprocess", "train_vae", "generate", "filter", "qc", "report"):
        assert any(p.startswith(stage + "/") for p in published), stage
    assert not (resumed.outdir / STAGING).exists() and not (resumed.outdir / LOCK).exists()


# A failed task's ERROR line as the last console line (with the user's paths) and nothing published:
# also asserted on the bad-input runs of tests/pipeline/test_pipeline.py (test_bad_input_stops_with_one_clear_line).


# Task warnings in the console summary and the report: asserted on the plain-parameter run of
# tests/pipeline/test_resources.py (test_task_warnings_reach_the_console_summary_and_the_report).


def test_staging_through_nextflows_file_api(tmp_path):
    """Object-store outdirs (and a head node without python3) publish with Nextflow's own file API
    (stagingByNextflow in subworkflows/local/utils_bulk2single_pipeline); the same calls on a local
    folder: files moved into --outdir replacing an earlier run's, the staging folder gone; a failed
    run's staging folder deleted, nothing moved."""
    script = tmp_path / "staging.nf"
    script.write_text(f"include {{ stagingByNextflow }} from '{REPO}/subworkflows/local/utils_bulk2single_pipeline'\n"
                      "workflow {\n    stagingByNextflow(params.publish as boolean)\n}\n")
    for publish in (True, False):
        outdir = tmp_path / f"results_{publish}"
        (outdir / STAGING / "qc" / "ctrl").mkdir(parents=True)
        (outdir / STAGING / "qc" / "ctrl" / "ctrl.metrics.json").write_text("new")
        (outdir / STAGING / "report").mkdir()
        (outdir / STAGING / "report" / "bulk2single_report.html").write_text("page")
        (outdir / "qc" / "ctrl").mkdir(parents=True)
        (outdir / "qc" / "ctrl" / "ctrl.metrics.json").write_text("old")
        proc = subprocess.run(["nextflow", "-q", "run", str(script), "--outdir", str(outdir), "--publish", str(publish).lower(),
                               "--staging_folder", STAGING],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert not (outdir / STAGING).exists()
        expected = ["qc/ctrl/ctrl.metrics.json", "report/bulk2single_report.html"] if publish else ["qc/ctrl/ctrl.metrics.json"]
        assert _published(outdir) == expected
        assert (outdir / "qc" / "ctrl" / "ctrl.metrics.json").read_text() == ("new" if publish else "old")

"""A first run with the user's own inputs on a small machine: no -profile test, no resource config
(its bulk has a duplicated gene row, so the run also shows where task warnings reach the user).

TRAIN_VAE (label process_gpu) asks for 4 CPUs and 24 GB; with the local executor the requests
are capped at the machine's CPUs and memory (conf/base.config), so every task starts.
"""

from __future__ import annotations

import gzip
import json
import os
import re

import pytest

from .nfrun import REPO, nextflow_run

TEST_DATA = REPO / "assets" / "test_data"

pytestmark = pytest.mark.pipeline


def _report_tasks(outdir) -> dict[str, dict[str, int]]:
    """Requested cpus/memory per process, from the task records in the execution report.

    (The report's embedded data is JavaScript, not strict JSON: read the fields by pattern.)
    """
    report = next((outdir / "pipeline_info").glob("execution_report_*.html")).read_text()
    found = re.findall(r'"name":"BULK2SINGLE:(\w+)[^"]*",.*?"cpus":"(\d+)","memory":"(\d+)"',
                       report, re.S)
    assert found, "no task records in the execution report"
    return {name: {"cpus": int(c), "memory": int(m)} for name, c, m in found}


def _bulk_with_duplicate_gene(folder):
    """The bundled bulk plus a second, all-zero row for its first gene: PREPARE_INPUTS drops it
    (keeping the original row, so the data used is the same) with a WARNING line."""
    lines = gzip.decompress((TEST_DATA / "bulk_counts.tsv.gz").read_bytes()).decode().splitlines()
    first = lines[1].split("\t")
    path = folder / "bulk_with_duplicate.tsv"
    path.write_text("\n".join([*lines, "\t".join([first[0]] + ["0"] * (len(first) - 1))]) + "\n")
    return path


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The user's own inputs with plain parameters (no -profile test, no resource config)."""
    folder = tmp_path_factory.mktemp("plain")
    bulk = _bulk_with_duplicate_gene(folder)
    res = nextflow_run(
        folder,
        "--bulk", str(bulk),
        "--reference", str(TEST_DATA / "reference.h5ad"),
        "--bulk_group", "ctrl_1,ctrl_2,ctrl_3",  # one group: 8 tasks
        "--celltype_key", "celltype",
        "--epoch_num", "5", "--leiden_size", "10",
        "--vae_genes", "300",  # a VAE over some of the genes: GENERATE follows its sidecar
        "--bulk_shift", "weighted",  # the bulk-informed opt-in, end to end
        timeout=2400,  # the shared test machine can be very busy
    )
    res.bulk = bulk
    return res


def test_plain_parameters_run_on_this_machine(plain_run):
    res = plain_run
    assert res.returncode == 0, res.output[-4000:]
    assert "exceeds available" not in res.output
    tasks = _report_tasks(res.outdir)
    assert {"PREPARE_INPUTS", "TRAIN_VAE", "FILTER", "QC", "REPORT"} <= set(tasks)
    ncpu = os.cpu_count()
    mem_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    train = tasks["TRAIN_VAE"]
    # process_gpu asks for 4 CPUs / 24 GB: capped to what this machine has
    assert int(train["cpus"]) == min(4, ncpu)
    assert int(train["memory"]) <= mem_bytes
    assert all(int(t["cpus"]) <= ncpu for t in tasks.values())
    assert (res.outdir / "report" / "bulk2single_report.html").exists()


def test_task_warnings_reach_the_console_summary_and_the_report(plain_run):
    """Issue 12: every task WARNING line is listed at the end of the run (stage, group, the
    user's path instead of the staged input/<name>) and at the top of the report."""
    res = plain_run
    assert res.returncode == 0, res.output[-4000:]
    out = res.output.splitlines()
    at = next((i for i, line in enumerate(out) if "task warning(s)" in line), None)
    assert at is not None, res.output[-3000:]
    summary = [line for line in out[at + 1:] if line.startswith("  [")]
    dup = [line for line in summary if line.startswith("  [PREPARE_INPUTS] ")]
    assert dup and "duplicate gene rows dropped" in dup[0] and str(plain_run.bulk) in dup[0], summary
    assert not any("input/" in line for line in summary), summary
    html = (res.outdir / "report" / "bulk2single_report.html").read_text()
    top = html.split("id='fractions'")[0]
    assert "WARNING PREPARE_INPUTS" in top and "duplicate gene rows dropped" in top


def test_bulk_shift_opt_in_publishes_the_shifts(plain_run):
    """--bulk_shift weighted (issue 15): QC records it and the per-type shifts are published."""
    assert plain_run.returncode == 0, plain_run.output[-4000:]
    shifts = sorted((plain_run.outdir / "qc").glob("*/*.celltype_shifts.csv"))
    assert shifts, sorted(p.name for p in (plain_run.outdir / "qc").rglob("*"))
    metrics = json.loads(next((plain_run.outdir / "qc").glob("*/*.metrics.json")).read_text())
    assert metrics["bulk_qc"]["bulk_shift"] == "weighted"

"""A first run with the user's own inputs on a small machine: no -profile test, no resource config.

TRAIN_VAE (label process_gpu) asks for 4 CPUs and 24 GB; with the local executor the requests
are capped at the machine's CPUs and memory (conf/base.config), so every task starts.
"""

from __future__ import annotations

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


def test_plain_parameters_run_on_this_machine(tmp_path):
    res = nextflow_run(
        tmp_path,
        "--bulk", str(TEST_DATA / "bulk_counts.tsv.gz"),
        "--reference", str(TEST_DATA / "reference.h5ad"),
        "--bulk_group", "ctrl_1,ctrl_2,ctrl_3",  # one group: 8 tasks
        "--celltype_key", "celltype",
        "--epoch_num", "5", "--leiden_size", "10",
        timeout=2400,  # the shared test machine can be very busy
    )
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

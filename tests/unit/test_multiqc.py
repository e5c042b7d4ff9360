"""MultiQC custom content (b2s.report.multiqc, issue 26) and display names in the report: the files are
written by REPORT and `multiqc` (a test-only dependency, requirements-dev.txt) finds their sections."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from b2s.report.build import build_report
from b2s.report.multiqc import SECTIONS, write_multiqc
from tests.unit.test_report import _write_run

NAMES = {"ctrl": "Day 0", "treated.v2": "IFN-b/6h", "T&<x>": "T&<x>"}


def _with_names(d: Path) -> None:
    _write_run(d)
    (d / "prepare_summary.json").write_text(json.dumps({
        "bulk": {"units": "tpm", "table_shape": "nf-core/rnaseq merged (gene_id, gene_name)",
                 "decisions": [{"decision": "units", "value": "tpm", "message": "--bulk x.tsv: units tpm (sums 1e6)"}]},
        "groups": {"names": NAMES}, "params": {}}))
    (d / "fractions_summary.json").write_text(json.dumps({
        "params": {"method": "wls"},
        "cell_number_rule": {"rule": "reference_cells", "description": "TPM/FPKM carry no library size"}}))
    (d / "task_warnings.tsv").write_text("PREPARE_INPUTS\t\tonly 20 genes shared\nQC\tctrl\tfew <cells>\n")


def test_report_shows_display_names_files_and_rules(tmp_path):
    _with_names(tmp_path)
    out = tmp_path / "r.html"
    build_report(str(tmp_path), str(out), {}, None)
    text = out.read_text()
    assert ">Group Day 0 <span class='muted'>(files: ctrl)</span></h2>" in text
    assert "IFN-b/6h" in text and "(files: treated.v2)" in text
    assert "reference_cells: TPM/FPKM carry no library size" in text
    assert "units tpm (sums 1e6)" in text and "nf-core/rnaseq merged" in text


def test_multiqc_finds_the_custom_content_sections(tmp_path):
    if shutil.which("multiqc") is None:
        pytest.fail("multiqc is not installed: `make env` installs requirements-dev.txt")
    run = tmp_path / "run"
    run.mkdir()
    _with_names(run)
    files = write_multiqc(run, tmp_path / "results" / "report" / "multiqc")
    assert sorted(p.name for p in files) == ["bulk2single_fractions_mqc.tsv", "bulk2single_qc_metrics_mqc.tsv",
                                             "bulk2single_warnings_mqc.yaml"]
    fr = (tmp_path / "results" / "report" / "multiqc" / "bulk2single_fractions_mqc.tsv").read_text()
    assert "\nDay 0\t" in fr and "\nIFN-b/6h\t" in fr  # display names, not file names
    found = run_multiqc(tmp_path / "results", tmp_path / "mqc")
    assert set(SECTIONS.values()) <= found, found
    html = (tmp_path / "mqc" / "multiqc_report.html").read_text()
    assert "only 20 genes shared" in html  # the warnings section holds the run's warnings


def run_multiqc(indir: Path, outdir: Path) -> set[str]:
    """Run `multiqc` on ``indir``; the ids of the custom-content sections it built."""
    res = subprocess.run(["multiqc", str(indir), "-o", str(outdir), "--no-ansi", "-f"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    html = (outdir / "multiqc_report.html").read_text()
    return {s for s in SECTIONS.values() if f'id="{s}"' in html or f"id='{s}'" in html}

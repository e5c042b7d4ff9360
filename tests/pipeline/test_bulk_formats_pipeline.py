"""End to end with a bulk as nf-core/rnaseq writes it (issue 26): `salmon.merged.gene_tpm.tsv`
(gene_id, gene_name, TPM with decimals) and samplesheet groups named `Day 0` and `IFN-b/6h`, in
one `-profile test` run; then `multiqc` on its outdir finds the custom-content sections."""

from __future__ import annotations

import html
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from .nfrun import REPO, nextflow_run

TEST_DATA = REPO / "assets" / "test_data"
NAMES = {"ctrl": "Day 0", "stim": "IFN-b/6h"}
SLUGS = {"Day 0": "Day_0", "IFN-b/6h": "IFN-b_6h"}

pytestmark = pytest.mark.pipeline


def test_salmon_tpm_with_odd_group_names_end_to_end(tmp_path):
    bulk = pd.read_csv(TEST_DATA / "bulk_counts.tsv.gz", sep="\t", index_col=0)
    ids = pd.read_csv(TEST_DATA / "gene_map.tsv", sep="\t").set_index("symbol")["gene_id"]
    tpm = bulk / bulk.sum() * 1e6  # TPM of a library without length bias: the bundled truth still applies
    tpm.insert(0, "gene_name", tpm.index)
    tpm.insert(0, "gene_id", ids.reindex(bulk.index).to_numpy())
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    tpm.to_csv(inputs / "salmon.merged.gene_tpm.tsv", sep="\t", index=False, float_format="%.4f")
    sheet = pd.read_csv(TEST_DATA / "samplesheet.csv")
    sheet["group"] = sheet["group"].map(NAMES)
    sheet.to_csv(inputs / "samplesheet.csv", index=False)

    # the inputs are under test here, not the VAE: a short training keeps the run cheap
    res = nextflow_run(tmp_path / "run", "-profile", "test", "--bulk", str(inputs / "salmon.merged.gene_tpm.tsv"),
                       "--samplesheet", str(inputs / "samplesheet.csv"), "--epoch_num", "20")
    assert res.returncode == 0, res.output[-4000:]
    out = res.outdir

    summary = json.loads((out / "prepare_inputs" / "prepare_summary.json").read_text())
    dec = {d["decision"]: d["value"] for d in summary["bulk"]["decisions"]}
    assert summary["bulk"]["units"] == "tpm" and dec["units"] == "tpm"
    assert dec["gene_column"] == "gene_name" and summary["n_shared_genes"] == 765
    assert summary["groups"]["names"] == {v: k for k, v in SLUGS.items()}

    fs = json.loads((out / "estimate_fractions" / "fractions_summary.json").read_text())
    assert fs["bulk_units"] == "tpm" and fs["cell_number_rule"]["rule"] == "reference_cells"
    assert fs["counting_noise"]["rule"] == "fitted" and len(fs["counting_noise"]["effective_library"]) == len(bulk.columns)
    fracs = pd.read_csv(out / "estimate_fractions" / "fractions.csv", index_col=0)
    truth = pd.read_csv(TEST_DATA / "truth_group_fractions.csv", index_col=0)
    truth.index = truth.index.map(lambda g: SLUGS[NAMES[g]])
    truth = truth.loc[fracs.index, fracs.columns]
    assert np.corrcoef(fracs.to_numpy().ravel(), truth.to_numpy().ravel())[0, 1] > 0.8
    targets = pd.read_csv(out / "estimate_fractions" / "cell_targets.csv")
    n_ref = summary["reference"]["n_cells_after"]
    for slug, n in targets.groupby("group")["n_cells"].sum().items():
        assert 2 * n_ref - 10 <= n <= 2 * n_ref + 10, (slug, n)  # reference cells x scale_size 2

    for slug in SLUGS.values():
        assert (out / "generate" / f"{slug}.generated.h5ad").is_file()
        assert (out / "qc" / slug / f"{slug}.metrics.json").is_file()
    report = (out / "report" / "bulk2single_report.html").read_text()
    for name, slug in SLUGS.items():
        assert f"Group {html.escape(name)} <span class='muted'>(files: {slug})</span>" in report
    assert "reference_cells" in report and "counting noise</th><td>fitted from the residuals" in report

    if shutil.which("multiqc") is None:
        pytest.fail("multiqc is not installed: `make env` installs requirements-dev.txt")
    from b2s.report.multiqc import SECTIONS
    from tests.unit.test_multiqc import run_multiqc

    assert run_multiqc(out, tmp_path / "multiqc") == set(SECTIONS.values())
    mqc = (out / "report" / "multiqc" / "bulk2single_fractions_mqc.tsv").read_text()
    assert "\nDay 0\t" in mqc and "\nIFN-b/6h\t" in mqc

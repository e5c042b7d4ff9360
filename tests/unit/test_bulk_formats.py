"""Bulk tables as upstream tools write them (issue 26): nf-core/rnaseq merged tables (salmon, RSEM),
featureCounts output as written, TPM/FPKM, odd group names. Each shape is built from the bundled
bulk (assets/test_data) and read by PREPARE_INPUTS' ``main`` without edits; the values that reach
bulk_counts.tsv must be the bundled ones and every decision must be in prepare_summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import b2s.io as bio
from b2s.errors import InputError
from tests.helpers import load_script, pipeline_args

TEST_DATA = Path(__file__).resolve().parents[2] / "assets" / "test_data"


@pytest.fixture(scope="module")
def bundled() -> pd.DataFrame:
    return pd.read_csv(TEST_DATA / "bulk_counts.tsv.gz", sep="\t", index_col=0)


@pytest.fixture(scope="module")
def id_map() -> pd.Series:
    m = pd.read_csv(TEST_DATA / "gene_map.tsv", sep="\t")
    return pd.Series(m["gene_id"].to_numpy(), index=m["symbol"].to_numpy())


def prepare(tmp_path: Path, bulk: Path, *extra: str, sheet: Path | None = TEST_DATA / "samplesheet.csv") -> dict:
    out = tmp_path / "out"
    argv = pipeline_args("PREPARE_INPUTS") + [
            "--bulk", str(bulk), "--reference", str(TEST_DATA / "reference.h5ad"), "--celltype_key", "celltype",
            "--max_single_cells", "200", "--outdir", str(out), *extra]
    argv += ["--samplesheet", str(sheet)] if sheet else []
    load_script("bin/prepare_inputs.py").main(argv)
    return json.loads((out / "prepare_summary.json").read_text())


def prepared_bulk(tmp_path: Path) -> pd.DataFrame:
    return bio.read_prepared(tmp_path / "out" / "bulk_counts.tsv", tmp_path / "out" / "groups.csv",
                             TEST_DATA / "reference.h5ad")[0]


def decisions(summary: dict) -> dict:
    return {d["decision"]: d for d in summary["bulk"]["decisions"]}


def test_salmon_merged_gene_counts(tmp_path, bundled, id_map, capsys):
    """nf-core/rnaseq salmon.merged.gene_counts.tsv: gene_id, gene_name, fractional expected counts."""
    rng = np.random.default_rng(0)
    frac = bundled + rng.uniform(-0.49, 0.49, bundled.shape) * (bundled > 0)
    table = frac.copy()
    table.insert(0, "gene_name", table.index)
    table.insert(0, "gene_id", id_map.reindex(table.index).to_numpy())
    path = tmp_path / "salmon.merged.gene_counts.tsv"
    table.to_csv(path, sep="\t", index=False)
    s = prepare(tmp_path, path)
    got = prepared_bulk(tmp_path)
    pd.testing.assert_frame_equal(got, bundled.astype(np.int64), check_names=False, check_flags=False)
    d = decisions(s)
    assert s["bulk"]["units"] == "counts" and d["units"]["value"] == "counts"
    assert d["rounded"]["value"] == int((np.abs(frac - np.rint(frac)) > 1e-3).to_numpy().sum())
    assert d["gene_column"]["value"] == "gene_name"  # the reference is keyed by symbols
    assert s["bulk"]["table_shape"].startswith("nf-core/rnaseq merged")
    out = capsys.readouterr().out
    for dec in s["bulk"]["decisions"]:
        assert dec["message"] in out  # every decision is a console line


def test_salmon_merged_ids_chosen_with_gene_map(tmp_path, bundled, id_map):
    """With --gene_map the ID column is chosen (the map's keys), then mapped to symbols."""
    table = bundled.copy()
    table.insert(0, "gene_name", [f"NAME{i}" for i in range(len(table))])  # names that match nothing
    table.insert(0, "gene_id", id_map.reindex(table.index).to_numpy())
    path = tmp_path / "salmon.merged.gene_counts.tsv"
    table.to_csv(path, sep="\t", index=False)
    s = prepare(tmp_path, path, "--gene_map", str(TEST_DATA / "gene_map.tsv"))
    assert decisions(s)["gene_column"]["value"] == "gene_id"
    assert s["n_shared_genes"] == 765


def test_rsem_merged_gene_counts(tmp_path, bundled, id_map):
    """RSEM merged (nf-core/rnaseq rsem_merge_counts): gene_id, transcript_id(s), expected counts;
    here keyed by versioned IDs, with a gene map keyed by unversioned IDs."""
    table = bundled + 0.25 * (bundled % 2)
    table.insert(0, "transcript_id(s)", [f"ENST{i:011d}.1,ENST{i:011d}.2" for i in range(len(table))])
    table.insert(0, "gene_id", [f"{g}.4" for g in id_map.reindex(bundled.index)])
    path = tmp_path / "rsem.merged.gene_counts.tsv"
    table.to_csv(path, sep="\t", index=False)
    s = prepare(tmp_path, path, "--gene_map", str(TEST_DATA / "gene_map.tsv"))
    got = prepared_bulk(tmp_path)
    pd.testing.assert_frame_equal(got, bundled.astype(np.int64), check_names=False, check_flags=False)
    d = decisions(s)
    assert s["bulk"]["table_shape"].startswith("RSEM merged")
    assert d["gene_column"]["value"] == "gene_id (version suffix dropped)"
    assert "transcript_id(s)" in d["table_shape"]["message"]


def test_featurecounts_as_written(tmp_path, bundled):
    """featureCounts output: comment line, Geneid Chr Start End Strand Length, samples named by BAM path."""
    bams = {s: f"/scratch/run1/star/{s}.Aligned.sortedByCoord.out.bam" for s in bundled.columns}
    lines = ['# Program:featureCounts v2.0.6; Command:"featureCounts" "-a" "genes.gtf" "-o" "counts.txt" '
             + " ".join(f'"{b}"' for b in bams.values()),
             "\t".join(["Geneid", "Chr", "Start", "End", "Strand", "Length", *bams.values()])]
    for g, row in bundled.iterrows():
        lines.append("\t".join([g, "chr1;chr1", "100;300", "200;450", "+;+", "251", *map(str, row.tolist())]))
    path = tmp_path / "counts.txt"
    path.write_text("\n".join(lines) + "\n")
    s = prepare(tmp_path, path)
    pd.testing.assert_frame_equal(prepared_bulk(tmp_path), bundled, check_names=False, check_flags=False)
    d = decisions(s)
    assert s["bulk"]["table_shape"] == "featureCounts"
    assert d["sample_names"]["value"] == {b: s_ for s_, b in bams.items()}
    assert "Length" in d["table_shape"]["message"]


@pytest.mark.parametrize("units,name", [("tpm", "bulk_tpm.tsv"), ("fpkm", "GSE1_fpkm.tsv"), ("fpkm", "expr.tsv")])
def test_tpm_fpkm_detected_and_kept(tmp_path, bundled, units, name):
    """TPM/FPKM with decimals: detected by auto, kept as given, marked in bulk_counts.tsv's header."""
    rng = np.random.default_rng(1)
    length = rng.lognormal(0, 0.5, len(bundled))[:, None] * 1e3
    rpk = bundled / length
    table = rpk / rpk.sum() * 1e6 if units == "tpm" else bundled / length / bundled.sum() * 1e9 * 0.8
    path = tmp_path / name
    table.to_csv(path, sep="\t")
    s = prepare(tmp_path, path)
    assert s["bulk"]["units"] == units and s["bulk"]["library_sizes"] is None
    got = prepared_bulk(tmp_path)
    assert got.attrs["units"] == units
    assert (tmp_path / "out" / "bulk_counts.tsv").read_text().startswith(bio.UNIT_HEADERS[units] + "\t")
    np.testing.assert_allclose(got.to_numpy(), table.to_numpy(), rtol=1e-6)


def test_units_override_and_errors(tmp_path, bundled):
    path = tmp_path / "expr.tsv"
    (bundled + 0.5).to_csv(path, sep="\t")
    assert bio.read_counts(path, units="counts").attrs["decisions"][0]["decision"] == "rounded"
    assert bio.read_counts(path).attrs["units"] == "fpkm"
    with pytest.raises(InputError, match="--bulk_units 'reads' is unknown; use one of counts, tpm, fpkm, auto"):
        bio.read_counts(path, units="reads")


@pytest.mark.parametrize("text,needle", [
    ("# Program:featureCounts\n", "only '#' comment lines, no table"),
    ("Geneid\tChr\tStart\tEnd\tStrand\tLength\nA\tc\t1\t2\t+\t5\n", "featureCounts table without sample columns"),
    ("gene\ts1\tnote\nA\t1\tup\nB\t2\tdown\n", "column(s) note hold text, not numbers, after the sample column(s) s1"),
])
def test_unreadable_shapes_one_line(tmp_path, text, needle):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        bio.read_counts(path)
    assert needle in str(err.value) and "\n" not in str(err.value) and str(path) in str(err.value)


def test_sample_names_from_paths():
    assert bio.sample_names_from_paths(["/a/b/s1.sorted.bam", "s2.markdup.sorted.bam", "x\\s3Aligned.out.bam"]) == \
        ["s1", "s2", "s3"]
    assert bio.sample_names_from_paths(["/a/s1.bam", "/b/s1.bam"]) == ["/a/s1.bam", "/b/s1.bam"]  # not unique


def test_odd_group_names(tmp_path, bundled):
    """Any group name: kept as given (groups.csv name, summary), slug for files, decision recorded."""
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("group,sample\nDay 0,ctrl_1\nDay 0,ctrl_2\nIFN-b/6h,stim_1\nIFN-b/6h,stim_2\n")
    s = prepare(tmp_path, TEST_DATA / "bulk_counts.tsv.gz", sheet=sheet)
    groups = pd.read_csv(tmp_path / "out" / "groups.csv")
    assert groups.drop_duplicates("group")[["group", "name"]].values.tolist() == \
        [["Day_0", "Day 0"], ["IFN-b_6h", "IFN-b/6h"]]
    assert s["groups"]["names"] == {"Day_0": "Day 0", "IFN-b_6h": "IFN-b/6h"}
    assert decisions(s)["group_slugs"]["value"] == {"Day 0": "Day_0", "IFN-b/6h": "IFN-b_6h"}


def test_slug_collision_names_both(tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("group,sample\nIFN-b/6h,ctrl_1\nIFN-b 6h,stim_1\n")
    with pytest.raises(InputError, match="groups 'IFN-b/6h' and 'IFN-b 6h' both become the file name 'IFN-b_6h'"):
        prepare(tmp_path, TEST_DATA / "bulk_counts.tsv.gz", sheet=sheet)


# ------------------------------------------------------------------- TPM downstream of PREPARE_INPUTS
def _tiny_reference(n_per_type=(30, 20)):
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n = sum(n_per_type)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(5, (n, 8)).astype(np.float32)))
    a.var_names = [f"g{i}" for i in range(8)]
    a.obs["celltype"] = pd.Categorical(np.repeat(["A", "B"], n_per_type))
    return a


def test_cell_number_rules():
    """counts: library size (omicverse); TPM/FPKM: the reference's cell number; --cells_per_group: that."""
    import b2s.fractions.estimate as F

    ref = _tiny_reference()
    groups = pd.DataFrame({"group": ["G", "G"], "sample": ["s1", "s2"]})
    fr = pd.DataFrame({"A": [0.25], "B": [0.75]}, index=pd.Index(["G"], name="group"))
    counts = pd.DataFrame({"s1": [100] * 8, "s2": [300] * 8}, index=ref.var_names)
    counts.attrs["units"] = "counts"
    lib_total = ref.n_obs * 1600 / float(ref.X.sum())
    assert F.total_cells(counts, groups, ref) == {"G": pytest.approx(lib_total)}
    tpm = counts / counts.sum() * 1e6
    tpm.attrs["units"] = "tpm"
    assert F.cell_number_rule(tpm) == "reference_cells"
    t = F.cell_targets(tpm, groups, ref, fr, scale_size=2)
    assert t["n_cells"].tolist() == [25, 75]  # 50 reference cells x 2 x fraction
    t = F.cell_targets(tpm, groups, ref, fr, scale_size=2, cells_per_group=200)
    assert t["n_cells"].tolist() == [50, 150] and F.cell_number_rule(tpm, 200) == "cells_per_group"
    assert F.cell_targets(counts, groups, ref, fr, cells_per_group=200)["n_cells"].tolist() == [50, 150]


def test_preprocess_scales_tpm_per_sample_and_keeps_deseq2_for_counts():
    import b2s.preprocess as pp

    groups = pd.DataFrame({"group": ["G", "G"], "sample": ["s1", "s2"]})
    fpkm = pd.DataFrame({"s1": [10.0, 30.0, 60.0], "s2": [1.0, 3.0, 6.0]}, index=["a", "b", "c"])
    fpkm.attrs["units"] = "fpkm"
    prof = pp.bulk_group_profiles(fpkm, groups)
    want = np.log10(np.array([1e5, 3e5, 6e5]) + 1)  # both samples scale to the same TPM
    np.testing.assert_allclose(prof["G"].to_numpy(), want)
    counts = fpkm.astype(int)
    counts.attrs["units"] = "counts"
    np.testing.assert_allclose(pp.bulk_group_profiles(counts, groups)["G"].to_numpy(),
                               np.log10(pp.deseq2_normalize(counts) + 1).mean(axis=1).to_numpy())


def test_gene_without_name_keeps_its_id(tmp_path):
    path = tmp_path / "salmon.merged.gene_counts.tsv"
    path.write_text("gene_id\tgene_name\ts1\ts2\nENSG01\tCD3E\t1.2\t3\nENSG02\t\t4\t5.7\nENSG03\tLYZ\t7\t8\n")
    df = bio.read_counts(path, targets=["CD3E", "LYZ"])
    assert list(df.index) == ["CD3E", "ENSG02", "LYZ"] and df.loc["ENSG02"].tolist() == [4, 6]


def test_fpkm_through_fractions_and_preprocess(tmp_path, bundled, capsys):
    """FPKM from a GEO-like table through PREPARE_INPUTS, ESTIMATE_FRACTIONS and PREPROCESS (the stages
    that read the units; GENERATE/FILTER/QC read the same files as for TPM, run in tests/pipeline)."""
    length = np.random.default_rng(2).lognormal(0, 0.7, len(bundled))[:, None] * 1e3  # bp
    full_length = bundled * length  # a full-length library: reads grow with gene length
    fpkm = full_length / (length / 1e3) / (full_length.sum() / 1e6)
    path = tmp_path / "GSE0000_fpkm.txt"
    fpkm.to_csv(path, sep="\t", float_format="%.5f")
    prepare(tmp_path, path)
    out = tmp_path / "out"
    args = ["--bulk", str(out / "bulk_counts.tsv"), "--groups", str(out / "groups.csv"),
            "--reference", str(out / "reference.h5ad")]
    load_script("bin/estimate_fractions.py").main(pipeline_args("ESTIMATE_FRACTIONS") + args + ["--outdir", str(tmp_path / "fr")])
    load_script("bin/preprocess.py").main(args + ["--outdir", str(tmp_path / "pp")])
    fs = json.loads((tmp_path / "fr" / "fractions_summary.json").read_text())
    assert fs["bulk_units"] == "fpkm" and fs["cell_number_rule"]["rule"] == "reference_cells"
    # wls fitted each sample's counting noise (FPKM has no library size): one line + the JSON
    assert fs["counting_noise"]["rule"] == "fitted"
    assert set(fs["counting_noise"]["effective_library"]) == set(bundled.columns)
    assert "fpkm carries no library size, so the counting noise of each sample was fitted" in capsys.readouterr().out
    from b2s.report.sections import section_bulk_input

    html = section_bulk_input({"prepare_summary.json": out / "prepare_summary.json",
                                "fractions_summary.json": tmp_path / "fr" / "fractions_summary.json"})
    assert "<th>counting noise</th><td>fitted from the residuals: effective library" in html
    targets = pd.read_csv(tmp_path / "fr" / "cell_targets.csv")
    assert targets.groupby("group")["n_cells"].sum().between(2 * 200 - 10, 2 * 200 + 10).all()
    fracs = pd.read_csv(tmp_path / "fr" / "fractions.csv", index_col=0)
    truth = pd.read_csv(TEST_DATA / "truth_group_fractions.csv", index_col=0).loc[fracs.index, fracs.columns]
    assert np.corrcoef(fracs.to_numpy().ravel(), truth.to_numpy().ravel())[0, 1] > 0.8
    ps = json.loads((tmp_path / "pp" / "preprocess_summary.json").read_text())
    assert ps["bulk_normalisation"] == "scaled_per_sample_to_1e6" and ps["size_factors"] is None


def test_tpm_fractions_match_counts_on_the_bundled_samples(bundled):
    """Acceptance (#26): TPM of the bundled samples gives the fractions of their counts within 0.01.
    wls weights genes by counting noise, which needs a library size that TPM lacks: it is fitted per
    sample from the residuals (taking TPM as 1e6 reads gave 0.0103 here); nnls is scale-free."""
    import anndata as ad

    import b2s.fractions.estimate as F

    ref = ad.read_h5ad(TEST_DATA / "reference.h5ad")
    counts = bundled.copy()
    counts.attrs["units"] = "counts"
    tpm = bundled / bundled.sum() * 1e6  # all lengths equal: the same samples as TPM
    tpm.attrs["units"] = "tpm"
    got = {(m, u): F.estimate_sample_fractions(x, ref, m) for m in ("wls", "nnls") for u, x in
           (("counts", counts), ("tpm", tpm))}
    for method in ("wls", "nnls"):
        assert np.abs(got[method, "tpm"] - got[method, "counts"]).to_numpy().max() < 0.01, method
    # wls: counts keep their own library sizes; TPM gets a fitted scale per sample
    assert "noise_library" not in got["wls", "counts"].attrs
    assert set(got["wls", "tpm"].attrs["noise_library"]) == set(bundled.columns)

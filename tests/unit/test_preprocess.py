"""Tests of b2s.preprocess (DESeq2 + log10 bulk profiles, single-cell normalisation, model input)
and of the PREPROCESS script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

BIN = Path(__file__).resolve().parents[2] / "bin"

import b2s.preprocess as pp  # noqa: E402
from b2s.errors import InputError  # noqa: E402

COUNTS = pd.DataFrame({"s1": [10, 5, 0, 8], "s2": [20, 10, 4, 2]}, index=["g1", "g2", "g3", "g4"])


def test_deseq2_hand_example():
    # geometric means over the genes without zeros: g1 sqrt(200), g2 sqrt(50), g4 4
    # ratios s1: 0.7071, 0.7071, 2 -> median 1/sqrt(2); s2: 1.4142, 1.4142, 0.5 -> sqrt(2)
    sf = pp.size_factors(COUNTS)
    np.testing.assert_allclose(sf.to_numpy(), [1 / np.sqrt(2), np.sqrt(2)])
    norm = pp.deseq2_normalize(COUNTS)
    np.testing.assert_allclose(norm["s1"], np.array([10, 5, 0, 8]) * np.sqrt(2))
    np.testing.assert_allclose(norm["s2"], np.array([20, 10, 4, 2]) / np.sqrt(2))
    # g3 has a zero, so it is not part of the reference: changing it leaves the factors alone
    other = COUNTS.copy()
    other.loc["g3", "s2"] = 1000
    np.testing.assert_allclose(pp.size_factors(other), sf)
    assert COUNTS.loc["g3", "s1"] == 0  # input not modified


def test_deseq2_without_usable_gene_is_an_input_error():
    with pytest.raises(InputError, match="bulk_counts.tsv: every gene has a zero"):
        pp.deseq2_normalize(pd.DataFrame({"a": [0, 3], "b": [2, 0]}, index=["x", "y"]))


def test_bulk_group_profiles():
    counts = COUNTS.assign(s3=[30, 15, 6, 3])
    groups = pd.DataFrame({"group": ["B", "A", "B"], "sample": ["s1", "s2", "s3"]})
    prof = pp.bulk_group_profiles(counts, groups)
    logn = np.log10(pp.deseq2_normalize(counts) + 1)
    assert list(prof.columns) == ["B", "A"] and list(prof.index) == list(counts.index)
    np.testing.assert_allclose(prof["B"], (logn["s1"] + logn["s3"]) / 2)
    np.testing.assert_allclose(prof["A"], logn["s2"])
    with pytest.raises(InputError, match="s7"):
        pp.bulk_group_profiles(counts, pd.DataFrame({"group": ["A"], "sample": ["s7"]}))


@pytest.fixture(scope="module")
def pbmc_counts() -> ad.AnnData:
    a = sc.datasets.pbmc68k_reduced()
    x = np.round(np.expm1(a.raw.X.toarray()) * a.obs["n_counts"].to_numpy()[:, None] / 1e4)
    x[5] = 0  # an empty cell must stay zero
    return ad.AnnData(sparse.csr_matrix(x.astype(np.float32)),
                      obs=pd.DataFrame({"celltype": a.obs["bulk_labels"].to_numpy()}, index=a.obs_names),
                      var=pd.DataFrame(index=a.raw.var_names))


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")
@pytest.mark.parametrize("as_sparse", [True, False])
def test_normalize_single_matches_scanpy(pbmc_counts, as_sparse):
    a = pbmc_counts.copy()
    if not as_sparse:
        a.X = a.X.toarray()
    before = a.X.copy()
    ours = pp.normalize_single(a)
    ref = a.copy()
    if as_sparse:  # scanpy's sparse path JIT-compiles (slow); its dense path gives the same values
        ref.X = ref.X.toarray()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    assert sparse.issparse(ours.X) == as_sparse
    assert ours.X.dtype == np.float32
    dense = ours.X.toarray() if as_sparse else ours.X
    ref_dense = ref.X.toarray() if sparse.issparse(ref.X) else ref.X
    np.testing.assert_allclose(dense, ref_dense, rtol=1e-5, atol=1e-5)
    assert (dense[5] == 0).all()
    np.testing.assert_allclose(np.expm1(dense[0]).sum(), 1e4, rtol=1e-4)
    # the input is untouched
    after = a.X
    assert (abs(after - before)).sum() == 0


def test_model_input_shared_genes_in_reference_order(pbmc_counts):
    genes = list(pbmc_counts.var_names)
    bulk_genes = genes[100:300][::-1] + ["NOT_A_GENE"]  # reversed order + an unknown gene
    m = pp.model_input(pbmc_counts, bulk_genes)
    assert list(m.var_names) == genes[100:300]
    assert m.n_obs == pbmc_counts.n_obs and sparse.isspmatrix_csr(m.X) and m.X.dtype == np.float32
    assert list(m.obs["celltype"]) == list(pbmc_counts.obs["celltype"])
    # normalised on ALL genes before subsetting: values equal the full normalisation's columns
    full = pp.normalize_single(pbmc_counts)
    np.testing.assert_allclose(m.X.toarray(), full.X[:, 100:300].toarray())
    assert np.expm1(m.X.toarray()).sum(axis=1).max() < 1e4 - 1
    # raw counts of the shared genes and the all-gene library, for GENERATE's count sampling
    raw = pbmc_counts.X
    raw = raw.toarray() if sparse.issparse(raw) else np.asarray(raw)
    assert sparse.isspmatrix_csr(m.layers["counts"]) and m.layers["counts"].dtype == np.float32
    np.testing.assert_array_equal(m.layers["counts"].toarray(), raw[:, 100:300])
    np.testing.assert_allclose(m.obs["total_counts"].to_numpy(), raw.sum(axis=1))
    tot = raw.sum(axis=1, keepdims=True)
    expected = np.log1p(np.divide(raw[:, 100:300] * 1e4, tot, out=np.zeros((raw.shape[0], 200)), where=tot > 0))
    np.testing.assert_allclose(expected, m.X.toarray(), rtol=1e-5, atol=1e-6)


def test_model_input_without_shared_genes(pbmc_counts):
    with pytest.raises(InputError, match=r"bulk_counts.tsv / reference.h5ad: no gene .*--gene_map"):
        pp.model_input(pbmc_counts, ["ENSG000001", "ENSG000002"])


def test_preprocess_script(tmp_path, pbmc_counts):
    ref = pbmc_counts[:120, :200].copy()
    rng = np.random.default_rng(0)
    bulk = pd.DataFrame(rng.poisson(50, (150, 4)), index=list(ref.var_names[50:200]),
                        columns=["a1", "a2", "b1", "b2"])
    bulk.index.name = "gene"
    bulk.to_csv(tmp_path / "bulk_counts.tsv", sep="\t")
    pd.DataFrame({"group": ["A", "A", "B", "B"], "sample": bulk.columns}).to_csv(tmp_path / "groups.csv", index=False)
    ref.write_h5ad(tmp_path / "reference.h5ad")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(BIN / "preprocess.py"), "--bulk", str(tmp_path / "bulk_counts.tsv"),
                          "--groups", str(tmp_path / "groups.csv"), "--reference", str(tmp_path / "reference.h5ad"),
                          "--outdir", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    m = ad.read_h5ad(out / "model_input.h5ad")
    assert m.shape == (120, 150) and list(m.var_names) == list(ref.var_names[50:200])
    assert json.loads(m.uns["b2s"])["bulk"].endswith("bulk_counts.tsv")
    prof = pd.read_csv(out / "bulk_profiles.csv", index_col=0)
    assert list(prof.columns) == ["A", "B"] and prof.shape == (150, 2)
    np.testing.assert_allclose(prof, pp.bulk_group_profiles(bulk, pd.read_csv(tmp_path / "groups.csv")), rtol=1e-9)
    summary = json.loads((out / "preprocess_summary.json").read_text())
    assert summary["n_genes_shared"] == 150 and summary["n_cells"] == 120 and "params" in summary

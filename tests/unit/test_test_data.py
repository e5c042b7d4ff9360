"""The bundled test data: rebuildable from tools/make_test_data.py and internally consistent."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import b2s.io as bio
import b2s.io.reference as refio
from tests.helpers import load_script

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "assets" / "test_data"

FILES = ["reference.h5ad", "bulk_counts.tsv.gz", "samplesheet.csv", "truth_fractions.csv",
         "truth_group_fractions.csv", "gene_map.tsv", "bulk_counts_ids.tsv.gz", "bench_bulk_counts.tsv.gz",
         "bench_truth_fractions.csv", "README.md"]



@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rebuilt")
    load_script("tools/make_test_data.py").build(out)
    return out


def test_files_present_and_small():
    sizes = {f: (TEST_DATA / f).stat().st_size for f in FILES}
    assert all(s > 0 for s in sizes.values())
    assert sum(p.stat().st_size for p in TEST_DATA.iterdir()) < 3_000_000


@pytest.mark.parametrize("name", ["bulk_counts.tsv.gz", "bulk_counts_ids.tsv.gz", "bench_bulk_counts.tsv.gz",
                                  "truth_fractions.csv", "truth_group_fractions.csv", "bench_truth_fractions.csv",
                                  "samplesheet.csv", "gene_map.tsv"])
def test_rebuild_matches_committed_tables(rebuilt, name):
    sep = "," if name.endswith(".csv") else "\t"
    committed = pd.read_csv(TEST_DATA / name, sep=sep)
    fresh = pd.read_csv(rebuilt / name, sep=sep)
    pd.testing.assert_frame_equal(committed, fresh, check_exact=False, rtol=1e-9)


def test_rebuild_gz_is_byte_stable(rebuilt):
    for name in ["bulk_counts.tsv.gz", "bench_bulk_counts.tsv.gz", "bulk_counts_ids.tsv.gz"]:
        assert (rebuilt / name).read_bytes() == (TEST_DATA / name).read_bytes(), name


def test_rebuild_matches_committed_reference(rebuilt):
    committed, fresh = ad.read_h5ad(TEST_DATA / "reference.h5ad"), ad.read_h5ad(rebuilt / "reference.h5ad")
    assert list(committed.obs_names) == list(fresh.obs_names)
    assert list(committed.var_names) == list(fresh.var_names)
    assert (committed.obs["celltype"] == fresh.obs["celltype"]).all()
    assert (committed.X != fresh.X).nnz == 0


def test_reference_is_valid_counts():
    ref = ad.read_h5ad(TEST_DATA / "reference.h5ad")
    assert sp.isspmatrix_csr(ref.X) and ref.X.dtype == np.float32
    assert ref.shape == (420, 765)
    assert (ref.X.data > 0).all() and np.array_equal(ref.X.data, np.rint(ref.X.data))
    assert isinstance(ref.obs["celltype"].dtype, pd.CategoricalDtype)
    assert ref.obs["celltype"].value_counts().min() >= 2 and ref.obs["celltype"].nunique() == 10
    # The reference passes the pipeline's own validation unchanged.
    checked = refio.read_reference(TEST_DATA / "reference.h5ad", "celltype")
    assert (checked.X != ref.X).nnz == 0


def test_bulk_truth_and_groups_consistent():
    bulk = bio.read_counts(TEST_DATA / "bulk_counts.tsv.gz")
    ref = ad.read_h5ad(TEST_DATA / "reference.h5ad", backed="r")
    assert bulk.shape == (765, 6) and list(bulk.index) == list(ref.var_names)
    sheet = pd.read_csv(TEST_DATA / "samplesheet.csv")
    assert sheet.columns.tolist() == ["group", "sample"] and set(sheet["sample"]) == set(bulk.columns)
    assert bio.read_groups(bulk, samplesheet=TEST_DATA / "samplesheet.csv")["group"].nunique() == 2

    truth = pd.read_csv(TEST_DATA / "truth_fractions.csv", index_col="sample")
    assert list(truth.index) == list(bulk.columns)
    assert sorted(truth.columns) == sorted(ref.obs["celltype"].cat.categories)
    np.testing.assert_allclose(truth.sum(axis=1), 1.0, atol=1e-9)
    # 400 cells per sample: fractions are multiples of 1/400.
    np.testing.assert_allclose(truth.to_numpy() * 400, np.rint(truth.to_numpy() * 400), atol=1e-6)

    group_truth = pd.read_csv(TEST_DATA / "truth_group_fractions.csv", index_col="group")
    expected = truth.groupby(sheet.set_index("sample").loc[truth.index, "group"].to_numpy()).mean()
    np.testing.assert_allclose(group_truth.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-9)
    # The groups really differ (the test cohort is meant to show it).
    assert np.abs(group_truth.loc["ctrl"] - group_truth.loc["stim"]).max() > 0.08


def test_gene_map_round_trip():
    ids = bio.read_counts(TEST_DATA / "bulk_counts_ids.tsv.gz")
    assert ids.index[0].startswith("G0")
    mapped = bio.apply_gene_map(ids, TEST_DATA / "gene_map.tsv")
    pd.testing.assert_frame_equal(mapped, bio.read_counts(TEST_DATA / "bulk_counts.tsv.gz"), check_flags=False)


def test_bench_set():
    bench = bio.read_counts(TEST_DATA / "bench_bulk_counts.tsv.gz")
    truth = pd.read_csv(TEST_DATA / "bench_truth_fractions.csv", index_col="sample")
    assert bench.shape == (765, 24) and list(truth.index) == list(bench.columns)
    np.testing.assert_allclose(truth.sum(axis=1), 1.0, atol=1e-9)
    assert truth.std(axis=0).min() > 0.03  # fractions vary across samples

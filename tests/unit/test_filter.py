"""FILTER: Leiden-based removal of small clusters of generated cells (b2s.cluster.filter, bin/filter_cells.py)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from b2s.cluster.filter import filter_cells, filter_summary
from b2s.cluster.stage import FilterOptions, run_filter
from b2s.errors import InputError
from tests.helpers import load_script, pbmc_model_input, pipeline_args

N_OUTLIERS = 12


def _generated(ref: ad.AnnData, n: int, seed: int, n_outliers: int = 0) -> ad.AnnData:
    """Reference cells resampled with noise, plus optional distinct outlier cells."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(ref.n_obs, n)
    x = ref.X[idx].toarray()
    x = np.clip(x + rng.normal(0, 0.1, x.shape) * (x > 0), 0, None)
    labels = ref.obs["celltype"].astype(str).to_numpy()[idx]
    if n_outliers:
        # a tight, distinct population: high values on 40 genes, nothing else
        out = np.zeros((n_outliers, ref.n_vars))
        genes = rng.choice(ref.n_vars, 40, replace=False)
        out[:, genes] = 4 + rng.normal(0, 0.05, (n_outliers, 40))
        x = np.vstack([x, out])
        labels = np.concatenate([labels, np.full(n_outliers, "Dendritic")])
    obs = pd.DataFrame({"celltype": pd.Categorical(labels)},
                       index=[f"g{i}" for i in range(x.shape[0])])
    gen = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs, var=ref.var.copy())
    gen.uns["b2s"] = json.dumps({"seed": seed, "stage": "generate"})
    return gen


@pytest.fixture(scope="module")
def ref() -> ad.AnnData:
    return pbmc_model_input()


@pytest.fixture(scope="module")
def gen(ref) -> ad.AnnData:
    return _generated(ref, 600, seed=3, n_outliers=N_OUTLIERS)


@pytest.fixture(scope="module")
def filtered(gen) -> ad.AnnData:
    return filter_cells(gen, leiden_size=25, seed=7)


def test_drops_only_small_clusters(gen, filtered):
    rec = json.loads(filtered.uns["b2s"])
    s = rec["summary"]
    sizes = s["cluster_sizes"]
    dropped = set(s["dropped_clusters"])
    assert dropped, "fixture should produce at least one small cluster"
    assert dropped == {c for c, n in sizes.items() if n < 25}
    kept = filtered.obs["leiden"].astype(str).value_counts()
    assert set(kept.index) == set(sizes) - dropped
    assert all(kept[c] == sizes[c] >= 25 for c in kept.index)
    assert filtered.n_obs == sum(n for c, n in sizes.items() if c not in dropped)
    assert s["n_cells_in"] == gen.n_obs and s["n_cells_out"] == filtered.n_obs
    # the planted outliers form a small cluster of their own and are removed
    outliers = {f"g{i}" for i in range(600, 600 + N_OUTLIERS)}
    assert not outliers & set(filtered.obs_names)
    assert rec["params"]["leiden_size"] == 25 and rec["params"]["seed"] == 7
    assert rec["input"] == {"seed": 3, "stage": "generate"}


def test_keeps_all_genes_log_values_and_pca(gen, filtered):
    assert list(filtered.var_names) == list(gen.var_names)
    assert sp.issparse(filtered.X)
    # X is the input's log-normalised values (not scaled HVGs) for the kept cells
    expect = gen[filtered.obs_names].X.toarray()
    np.testing.assert_array_equal(filtered.X.toarray(), expect)
    assert filtered.X.min() >= 0
    pcs = filtered.obsm["X_pca"]
    assert pcs.shape[0] == filtered.n_obs and 2 <= pcs.shape[1] <= 100
    assert np.isfinite(pcs).all()
    assert filtered.var["highly_variable"].dtype == bool
    assert 20 <= filtered.var["highly_variable"].sum() < gen.n_vars
    assert list(filtered.obs["celltype"]) == list(gen.obs.loc[filtered.obs_names, "celltype"])


def test_deterministic_with_seed(gen, filtered):
    again = filter_cells(gen, leiden_size=25, seed=7)
    assert list(again.obs_names) == list(filtered.obs_names)
    assert list(again.obs["leiden"]) == list(filtered.obs["leiden"])
    np.testing.assert_array_equal(again.obsm["X_pca"], filtered.obsm["X_pca"])


def test_input_not_modified(ref):
    gen = _generated(ref, 200, seed=5)
    before_x = gen.X.copy()
    before_obs = gen.obs.copy()
    before_var = gen.var.copy()
    before_uns = dict(gen.uns)
    filter_cells(gen, leiden_size=10, seed=1)
    assert (gen.X != before_x).nnz == 0
    pd.testing.assert_frame_equal(gen.obs, before_obs)
    pd.testing.assert_frame_equal(gen.var, before_var)
    assert dict(gen.uns) == before_uns and not gen.obsm and gen.raw is None


def test_fewer_cells_than_leiden_size_keeps_all(ref, capsys):
    tiny = _generated(ref, 10, seed=2)
    out = filter_cells(tiny, leiden_size=25, seed=1)
    assert out.n_obs == 10 and out.n_vars == tiny.n_vars
    assert out.obsm["X_pca"].shape[0] == 10
    s = filter_summary(tiny, out)
    assert any("clustering skipped" in n for n in s["notes"])
    assert "clustering skipped" in capsys.readouterr().out


def test_single_cell_and_few_genes(ref):
    one = _generated(ref, 1, seed=2)
    out = filter_cells(one, leiden_size=5, seed=1)
    assert out.n_obs == 1 and out.obsm["X_pca"].shape == (1, 1)
    few = _generated(ref, 80, seed=4)[:, :8].copy()  # 8 genes: too few HVGs
    out = filter_cells(few, leiden_size=5, seed=1)
    s = filter_summary(few, out)
    assert s["n_hvg"] == 8 and out.n_vars == 8
    assert any("all" in n and "genes" in n for n in s["notes"])


def test_all_clusters_small_keeps_all(ref):
    small = _generated(ref, 120, seed=6)
    out = filter_cells(small, leiden_size=small.n_obs, seed=7)  # no cluster holds every cell
    assert out.n_obs == small.n_obs
    s = filter_summary(small, out)
    assert s["n_clusters"] > 1
    assert s["dropped_clusters"] == [] and any("all cells kept" in n for n in s["notes"])


def test_bad_arguments(gen):
    # the message states the rule, not the pipeline's default (nextflow.config holds that)
    with pytest.raises(InputError, match=r"^--leiden_size 0: must be >= 1; use a positive cluster size$"):
        filter_cells(gen, leiden_size=0)
    opts = FilterOptions(input=["a.h5ad"], leiden_size=0, seed=1, group=["a"], engine="native", outdir=".")
    with pytest.raises(InputError, match=r"^--leiden_size 0: must be >= 1; use a positive cluster size$"):
        run_filter(opts)
    with pytest.raises(InputError, match="0 cells"):
        filter_cells(gen[:0].copy(), leiden_size=5)


def test_filter_script(tmp_path, ref):
    gen = _generated(ref, 150, seed=9)
    src = tmp_path / "G1.generated.h5ad"
    gen.write_h5ad(src)
    script = load_script("bin/filter_cells.py")
    script.main(pipeline_args("FILTER") + ["--input", str(src), "--leiden_size", "10", "--seed", "3", "--group", "G1",
                 "--outdir", str(tmp_path / "out")])
    out = ad.read_h5ad(tmp_path / "out" / "G1.filtered.h5ad")
    summary = json.loads((tmp_path / "out" / "G1.filter_summary.json").read_text())
    assert summary["params"]["leiden_size"] == 10 and summary["params"]["engine"] == "native"
    assert summary["group"] == "G1" and summary["n_cells_out"] == out.n_obs
    assert summary["n_cells_in"] == 150
    assert sum(v["out"] for v in summary["celltype_counts"].values()) == out.n_obs
    rec = json.loads(out.uns["b2s"])
    assert rec["params"]["group"] == "G1" and rec["input"]["seed"] == 9
    assert "X_pca" in out.obsm and "leiden" in out.obs and out.n_vars == gen.n_vars
    # the input file is untouched
    assert ad.read_h5ad(src).n_obs == 150


def test_filter_script_missing_input(tmp_path):
    script = load_script("bin/filter_cells.py")
    with pytest.raises(InputError, match="does not exist"):
        script.main(pipeline_args("FILTER") + ["--input", str(tmp_path / "nope.h5ad"), "--group", "G",
                     "--outdir", str(tmp_path)])


def test_clusters_match_scanpy_umap_graph(gen, filtered, monkeypatch):
    """The b2s.cluster.graph connectivities give the clusters FILTER got from sc.pp.neighbors (umap)."""
    import warnings

    import scanpy as sc

    import b2s.cluster.filter as bf

    def scanpy_leiden(pcs, seed):  # the graph step as it was before b2s.cluster.graph
        g = ad.AnnData(X=np.zeros((pcs.shape[0], 1), dtype=np.float32))
        g.obsm["X_pca"] = pcs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.neighbors(g, n_neighbors=min(bf.N_NEIGHBORS, pcs.shape[0] - 1),
                            use_rep="X_pca", random_state=seed)
            sc.tl.leiden(g, flavor="leidenalg", random_state=seed, key_added="leiden")
        return g.obs["leiden"].astype(str).to_numpy()

    monkeypatch.setattr(bf, "_leiden", scanpy_leiden)
    before = filter_cells(gen, leiden_size=25, seed=7)
    assert list(before.obs_names) == list(filtered.obs_names)
    assert list(before.obs["leiden"]) == list(filtered.obs["leiden"])
    assert json.loads(before.uns["b2s"])["summary"]["cluster_sizes"] == \
        json.loads(filtered.uns["b2s"])["summary"]["cluster_sizes"]

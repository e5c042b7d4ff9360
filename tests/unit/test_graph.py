"""b2s.cluster.graph: the fuzzy kNN connectivities FILTER clusters on, checked against umap and scanpy."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import b2s.cluster.graph as graph


def _umap_fss(idx: np.ndarray, dist: np.ndarray):
    """umap's own fuzzy_simplicial_set on a precomputed kNN (as scanpy calls it)."""
    from umap.umap_ import fuzzy_simplicial_set

    conn, sigmas, rhos = fuzzy_simplicial_set(sp.coo_matrix((idx.shape[0], 1)), idx.shape[1],
                                              None, None, knn_indices=idx, knn_dists=dist)
    return conn.tocsr(), sigmas, rhos


def _assert_same_graph(mine: sp.csr_matrix, ref: sp.csr_matrix) -> None:
    mine, ref = mine.tocsr(), ref.tocsr()
    mine.sort_indices()
    ref.sort_indices()
    assert mine.shape == ref.shape
    np.testing.assert_array_equal(mine.indptr, ref.indptr)  # same sparsity pattern
    np.testing.assert_array_equal(mine.indices, ref.indices)
    np.testing.assert_allclose(mine.data, ref.data, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def pcs() -> np.ndarray:
    """PCs of scanpy's pbmc68k_reduced (the bundled data's source) plus noisy near-copies."""
    pb = sc.datasets.pbmc68k_reduced()
    x = pb.obsm["X_pca"].astype(np.float32)
    rng = np.random.default_rng(0)
    near = x[:150] + rng.normal(0, 0.05, (150, x.shape[1])).astype(np.float32)
    return np.vstack([x, near])


@pytest.fixture(scope="module")
def tied() -> np.ndarray:
    """Points with exact duplicates and a tight blob: zero distances, rho = 0, sigma floor."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (120, 5)).astype(np.float32)
    x[10:30] = x[10]          # 20 identical cells: all 14 neighbours at distance 0
    x[40:44] = x[40]          # a few duplicates
    x[60:80] = x[60] + rng.normal(0, 1e-4, (20, 5)).astype(np.float32)
    return x


@pytest.mark.parametrize("data", ["pcs", "tied"])
def test_matches_umap_fuzzy_simplicial_set(data, request):
    x = request.getfixturevalue(data)
    idx, dist = graph.knn(x, 15)
    ref, ref_sigma, ref_rho = _umap_fss(idx, dist)
    sigma, rho = graph.smooth_knn_dist(dist, 15.0)
    np.testing.assert_allclose(rho, ref_rho, rtol=1e-6)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-5)
    mine = graph.fuzzy_connectivities(idx, dist)
    _assert_same_graph(mine, ref)
    assert mine.dtype == np.float32
    assert abs(mine - mine.T).max() == 0  # symmetric
    assert mine.diagonal().max() == 0  # no self-loops
    assert mine.data.min() > 0 and mine.data.max() <= 1


def test_small_k_matches_umap(pcs):
    # FILTER uses k = min(15, n_cells - 1): tiny groups get a short kNN
    x = pcs[:6]
    idx, dist = graph.knn(x, 5)
    ref, _, _ = _umap_fss(idx, dist)
    _assert_same_graph(graph.fuzzy_connectivities(idx, dist), ref)


def test_knn_is_exact_and_self_first(pcs):
    idx, dist = graph.knn(pcs, 15)
    full = np.sqrt(((pcs[:, None, :].astype(np.float64) - pcs[None, :, :]) ** 2).sum(-1))
    np.testing.assert_array_equal(idx[:, 0], np.arange(pcs.shape[0]))
    assert (dist[:, 0] == 0).all()
    expect = np.sort(full, axis=1)[:, :15]
    np.testing.assert_allclose(dist, expect, rtol=1e-4, atol=1e-3)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_matches_scanpy_neighbors(pcs):
    g = ad.AnnData(X=np.zeros((pcs.shape[0], 1), dtype=np.float32))
    g.obsm["X_pca"] = pcs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(g, n_neighbors=15, use_rep="X_pca", random_state=0)
    _assert_same_graph(graph.connectivities(pcs, 15), g.obsp["connectivities"])

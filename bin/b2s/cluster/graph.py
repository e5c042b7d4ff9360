"""kNN graph and its fuzzy connectivities (UMAP's fuzzy simplicial set), in numpy/scipy.

FILTER clusters generated cells with Leiden on the same graph as ``sc.pp.neighbors`` (method
``umap``, the seed's choice). Scanpy builds its connectivities with umap's numba kernels, which
are compiled on first use in every process and not cached on disk: seconds of every FILTER task
(benchmarks/README.md, "FILTER per task"). The computation is
small and vectorises well, so it is done here directly:

1. exact kNN (euclidean) by brute force, the search scanpy itself uses below 8,192 cells
   (``sklearn`` ``NearestNeighbors(algorithm='brute')``; each cell is its own first neighbour);
2. smooth-kNN normalisation: ``rho`` = distance to the nearest other neighbour and ``sigma`` by
   bisection so that ``sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(k)``, for all cells at once
   (umap's ``smooth_knn_dist``: 64 steps, tolerance 1e-5, same bracket updates and floor);
3. membership strengths ``exp(-(d_ij - rho_i) / sigma_i)`` (1 for the nearest, 0 for self);
4. fuzzy union ``A + A^T - A o A^T``.

Matches umap's ``fuzzy_simplicial_set`` on the same kNN (tests/unit/test_graph.py) within float32
rounding. Above 8,192 cells scanpy switches to an approximate search (pynndescent, also numba);
this module stays exact (``O(n^2)`` distance work in sklearn's chunked kernels: ~1-2 s for 10k
cells with 100 PCs on 2 cores).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: umap's constants (umap/umap_.py) so the normalisation behaves identically.
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
N_ITER = 64
_FLOATMAX = float(np.finfo(np.float32).max)


def knn(x: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact euclidean kNN of every row of ``x`` among all rows (itself included, first).

    Returns ``(indices int64, distances float32)``, both ``(n_obs, n_neighbors)`` sorted by
    distance, as scanpy's brute-force path gives them to umap (self-distances exactly 0).
    """
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute", metric="euclidean")
    dist, idx = nn.fit(x).kneighbors(x)
    # A cell's distance to itself comes out of the GEMM trick as ~1e-7, not 0; umap would take
    # it as rho (the nearest non-zero distance). scanpy zeroes the diagonal, so do we.
    dist[idx == np.arange(idx.shape[0])[:, None]] = 0.0
    return idx.astype(np.int64), dist.astype(np.float32)


def smooth_knn_dist(dists: np.ndarray, k: float, n_iter: int = N_ITER
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell ``(sigma, rho)`` of umap's smooth kNN distance (local_connectivity 1, bandwidth 1).

    ``dists``: ``(n, k)`` float32 kNN distances, column 0 the cell itself. Bisection runs on every
    cell at once; a cell stops moving once its sum is within the tolerance, as in umap.
    """
    d = np.asarray(dists, dtype=np.float32)
    n = d.shape[0]
    target = np.log2(k)
    # rho: the first non-zero distance in the row (umap: local_connectivity = 1).
    pos = d > 0
    has = pos.any(axis=1)
    first = np.argmax(pos, axis=1)
    rho = np.where(has, d[np.arange(n), first], 0).astype(np.float32)

    shifted = (d[:, 1:] - rho[:, None]).astype(np.float64)  # float32 difference, as umap
    positive = shifted > 0
    lo = np.zeros(n)
    hi = np.full(n, _FLOATMAX)
    mid = np.ones(n)
    active = np.ones(n, dtype=bool)
    for _ in range(n_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        s, p, m = shifted[rows], positive[rows], mid[rows]
        with np.errstate(over="ignore", under="ignore"):
            psum = np.where(p, np.exp(-(s / m[:, None])), 1.0).sum(axis=1)
        conv = np.abs(psum - target) < SMOOTH_K_TOLERANCE
        move = rows[~conv]
        active[rows[conv]] = False
        above = psum[~conv] > target
        up, down = move[above], move[~above]
        hi[up] = mid[up]
        mid[up] = (lo[up] + hi[up]) / 2.0
        lo[down] = mid[down]
        unbounded = hi[down] >= _FLOATMAX
        mid[down] = np.where(unbounded, mid[down] * 2, (lo[down] + hi[down]) / 2.0)

    sigma = mid.astype(np.float32)
    floor = np.where(rho > 0, MIN_K_DIST_SCALE * d.mean(axis=1, dtype=np.float32),
                     MIN_K_DIST_SCALE * d.mean(dtype=np.float32)).astype(np.float32)
    sigma = np.maximum(sigma, floor)
    return sigma, rho


def fuzzy_connectivities(indices: np.ndarray, dists: np.ndarray) -> sp.csr_matrix:
    """Symmetric fuzzy-union connectivities (CSR float32) from a kNN graph.

    Same result as umap's ``fuzzy_simplicial_set(X, k, None, None, knn_indices=indices,
    knn_dists=dists)`` with its defaults (set_op_mix_ratio 1, local_connectivity 1), which is
    what ``sc.pp.neighbors`` stores in ``obsp['connectivities']``.
    """
    idx = np.asarray(indices)
    d = np.asarray(dists, dtype=np.float32)
    n, k = idx.shape
    sigma, rho = smooth_knn_dist(d, float(k))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        vals = np.exp(-((d - rho[:, None]) / sigma[:, None])).astype(np.float32)
    vals[(d - rho[:, None] <= 0) | (sigma[:, None] == 0)] = 1.0
    vals[idx == np.arange(n)[:, None]] = 0.0  # no self-loops
    valid = idx >= 0  # -1: neighbour missing (approximate searches)
    rows = np.repeat(np.arange(n), k).reshape(n, k)
    a = sp.coo_matrix((vals[valid], (rows[valid], idx[valid])), shape=(n, n)).tocsr()
    a.eliminate_zeros()
    at = a.T.tocsr()
    union = (a + at - a.multiply(at)).tocsr()
    union.eliminate_zeros()
    return union.astype(np.float32)


def connectivities(x: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """Fuzzy kNN connectivities of the rows of ``x`` (as ``sc.pp.neighbors``, method umap)."""
    idx, dist = knn(x, n_neighbors)
    return fuzzy_connectivities(idx, dist)

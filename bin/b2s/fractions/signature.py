"""The reference's cell-type signature: labels, per-type profiles, markers, and the shared genes with the bulk."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from b2s._constants import CELLTYPE
from b2s.errors import InputError
from b2s.utils import indicator


def as_csr(x) -> sparse.csr_matrix:
    """The matrix as CSR float64 without densifying (a view-free copy only when needed)."""
    if sparse.issparse(x):
        return sparse.csr_matrix(x, dtype=np.float64)
    return sparse.csr_matrix(np.asarray(x, dtype=np.float64))


def celltype_labels(reference: anndata.AnnData) -> pd.Categorical:
    """Cell-type labels with unused categories dropped and categories sorted by name."""
    if CELLTYPE not in reference.obs.columns:
        raise InputError(
            f"reference.h5ad: obs has no '{CELLTYPE}' column (found: "
            f"{', '.join(map(str, reference.obs.columns)) or 'none'}); run PREPARE_INPUTS to create it"
        )
    lab = reference.obs[CELLTYPE].astype(str).values
    return pd.Categorical(lab, categories=sorted(set(lab)))


def shared_genes(bulk: pd.DataFrame, reference: anndata.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the shared genes in reference var and in bulk rows (reference order)."""
    ref_genes = pd.Index(reference.var_names.astype(str))
    bulk_pos = pd.Index(bulk.index.astype(str)).get_indexer(ref_genes)
    keep = np.flatnonzero(bulk_pos >= 0)
    if keep.size == 0:
        raise InputError(
            "bulk_counts.tsv / reference.h5ad: no gene symbol is shared between the bulk matrix "
            f"(e.g. {', '.join(map(str, bulk.index[:3]))}) and the reference (e.g. "
            f"{', '.join(map(str, ref_genes[:3]))}); map the bulk IDs to symbols with --gene_map"
        )
    return keep, bulk_pos[keep]


def type_profiles(reference: anndata.AnnData, gene_pos: np.ndarray | None = None) -> dict:
    """Per-type count sums, cell numbers and mean profiles via one sparse indicator product.

    Returns a dict with ``types`` (sorted names), ``sums`` (types x genes, dense), ``n_cells``,
    ``mean`` (counts per cell), ``library`` (mean counts per cell over the selected genes).
    """
    lab = celltype_labels(reference)
    x = reference.X if gene_pos is None else reference.X[:, gene_pos]
    ind = indicator(lab.codes, len(lab.categories))
    sums = np.asarray((ind @ as_csr(x)).todense())
    n_cells = np.asarray(ind.sum(axis=1)).ravel()
    mean = sums / n_cells[:, None]
    return {"types": list(lab.categories), "sums": sums, "n_cells": n_cells, "mean": mean,
            "library": mean.sum(axis=1)}


def top_markers(mean: np.ndarray, n_markers: int) -> np.ndarray:
    """Union of the top ``n_markers`` genes per type by log2 fold change of its CPM mean over
    the highest other type (only genes with fold change > 0, i.e. highest in that type)."""
    lib = mean.sum(axis=1, keepdims=True)
    cpm = mean / np.where(lib > 0, lib, 1) * 1e6
    k = cpm.shape[0]
    if k == 1:
        return np.argsort(-cpm[0])[:n_markers]
    top2 = -np.sort(-cpm, axis=0)[:2]  # largest and second largest per gene
    picked = []
    for t in range(k):  # loop over cell types (few), vectorised over genes
        other = np.where(cpm[t] >= top2[0], top2[1], top2[0])
        fc = np.log2((cpm[t] + 1.0) / (other + 1.0))
        order = np.argsort(-fc, kind="stable")[:n_markers]
        picked.append(order[fc[order] > 0])
    genes = np.unique(np.concatenate(picked))
    if genes.size < k:  # degenerate reference: fall back to the most expressed genes
        genes = np.argsort(-cpm.sum(axis=0))[: max(n_markers, k)]
    return np.sort(genes)


def batched_nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 20000, tol: float = 1e-10) -> np.ndarray:
    """Solve min ||a c - b_j||, c >= 0 for every column b_j at once (FISTA with restart).

    ``a`` genes x k, ``b`` genes x samples; returns k x samples. Columns of ``a`` are rescaled to
    unit norm first (NNLS is invariant to positive column scaling), which conditions the Gram
    matrix for the few-column problems met here.
    """
    norm = np.linalg.norm(a, axis=0)
    norm[norm == 0] = 1.0
    an = a / norm
    g = an.T @ an
    atb = an.T @ b
    step = 1.0 / np.linalg.eigvalsh(g)[-1]
    c = np.clip(np.linalg.lstsq(an, b, rcond=None)[0], 0, None)
    y, t = c.copy(), 1.0
    for _ in range(max_iter):
        c_new = np.clip(y - step * (g @ y - atb), 0, None)
        # adaptive restart keeps the momentum from overshooting on ill-conditioned problems
        if np.sum((c_new - c) * (y - c_new)) > 0:
            t = 1.0
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = c_new + ((t - 1.0) / t_new) * (c_new - c)
        delta = np.max(np.abs(c_new - c))
        c, t = c_new, t_new
        if delta <= tol * max(1.0, float(np.max(np.abs(c)))):
            break
    return c / norm[:, None]


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to sum 1; an all-zero row becomes uniform (no information)."""
    x = np.clip(x, 0, None)
    s = x.sum(axis=1, keepdims=True)
    out = np.where(s > 0, x / np.where(s > 0, s, 1), 1.0 / x.shape[1])
    return out


def bulk_matrix(bulk: pd.DataFrame, bulk_pos: np.ndarray) -> np.ndarray:
    """Samples x shared genes, float64."""
    return np.asarray(bulk.to_numpy(dtype=np.float64)[bulk_pos].T)

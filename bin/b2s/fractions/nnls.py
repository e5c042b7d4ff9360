"""The marker-based estimators: NNLS on one-vs-rest markers (``nnls``) and variance-weighted NNLS on pairwise-test markers (``wls``, :mod:`b2s.fractions.wls`)."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd

from b2s.errors import InputError
from b2s.fractions.signature import (
    as_csr,
    batched_nnls,
    bulk_matrix,
    celltype_labels,
    normalise_rows,
    shared_genes,
    top_markers,
    type_profiles,
)
from b2s.utils import indicator


def nnls_fractions(bulk: pd.DataFrame, reference: anndata.AnnData, seed: int = 42, n_markers: int = 50,
          gene_scale: str = "sqrt", cell_share: bool = True,
          markers: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Marker-gene NNLS on per-type mean profiles; see the module docstring. ``seed`` unused
    (the method is deterministic) but accepted for a uniform signature."""
    ref_pos, bulk_pos = shared_genes(bulk, reference)
    prof = type_profiles(reference, ref_pos)
    genes = chosen_markers(prof["mean"], n_markers, markers, reference, ref_pos)
    b = bulk_matrix(bulk, bulk_pos)
    lib = b.sum(axis=1, keepdims=True)
    b = b / np.where(lib > 0, lib, 1) * 1e6  # CPM over the shared genes
    sig = prof["mean"][:, genes].T  # genes x types, counts per cell
    # one global factor puts the signature on the CPM scale; per-type factors would change the
    # meaning of the coefficients (cells -> expression), which cell_share handles explicitly
    sig = sig / max(prof["library"].mean(), 1e-12) * 1e6
    rhs = b[:, genes].T
    if gene_scale not in ("none", "sqrt", "mean"):
        raise InputError(f"fraction option gene_scale='{gene_scale}' is unknown; use none, sqrt or mean")
    if gene_scale != "none":
        # weight genes by 1/mean (equal say per gene) or 1/sqrt(mean) (Poisson-like variance)
        w = sig.mean(axis=1)
        w = np.where(w > 0, w, 1.0)
        w = 1.0 / (np.sqrt(w) if gene_scale == "sqrt" else w)
        sig, rhs = sig * w[:, None], rhs * w[:, None]
    coef = batched_nnls(sig, rhs).T  # samples x types, proportional to cell numbers
    if not cell_share:
        coef = coef * prof["library"][None, :]
    out = pd.DataFrame(normalise_rows(coef), index=bulk.columns, columns=prof["types"])
    out.attrs["marker_genes"] = list(reference.var_names.astype(str)[ref_pos][genes])
    return out


# --------------------------------------------------------------------------------------------
# wls (pairwise-test markers, count-space profiles, variance-weighted NNLS)
# --------------------------------------------------------------------------------------------
def marker_positions(markers: dict[str, list[str]], ref_genes: pd.Index) -> np.ndarray:
    """Positions (in ``ref_genes``) of the union of a curated marker list."""
    wanted = pd.Index(sorted({g for gs in markers.values() for g in gs}))
    pos = ref_genes.get_indexer(wanted)
    return np.sort(pos[pos >= 0])


def chosen_markers(mean: np.ndarray, n_markers: int, markers: dict[str, list[str]] | None,
                    reference: anndata.AnnData, ref_pos: np.ndarray) -> np.ndarray:
    """Curated markers (``--markers``) when given, else the fold-change markers."""
    if markers is None:
        return top_markers(mean, n_markers)
    return marker_positions(markers, pd.Index(reference.var_names.astype(str)[ref_pos]))


def wls_fractions(bulk: pd.DataFrame, reference: anndata.AnnData, seed: int = 42, n_per_pair: int = 30,
         min_fold: float = 3.0, n_irls: int = 2, sampling: bool = True, huber: float | None = 1.0,
         multiplicative: str | float = "fit", shrink: float = 10.0, eiv: float = 0.5,
         markers: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Variance-weighted NNLS on pairwise-test markers (:mod:`b2s.fractions.wls`). ``seed``
    unused (deterministic) but accepted for a uniform signature."""
    from b2s.fractions.markers import pairwise_markers
    from b2s.fractions.wls import wls_fit

    ref_pos, bulk_pos = shared_genes(bulk, reference)
    lab = celltype_labels(reference)
    k = len(lab.categories)
    x = as_csr(reference.X[:, ref_pos])
    if markers is None:
        genes = pairwise_markers(x, lab.codes, k, n_per_pair=n_per_pair, min_fold=min_fold)
    else:
        genes = marker_positions(markers, pd.Index(reference.var_names.astype(str)[ref_pos]))
    ind = indicator(lab.codes, k)
    n_ref = np.asarray(ind.sum(axis=1)).ravel()
    xg = x[:, genes]
    mean = np.asarray((ind @ xg).todense()) / n_ref[:, None]  # types x markers, counts per cell
    sq = xg.copy()
    sq.data **= 2
    var = np.maximum(np.asarray((ind @ sq).todense()) / n_ref[:, None] - mean ** 2, 0.0)
    var *= (n_ref / np.maximum(n_ref - 1, 1))[:, None]
    if shrink > 0:
        # few reference cells give noisy variances: shrink each towards a negative-binomial
        # trend mu + phi mu^2 (one phi, moment estimate over well-expressed entries), with the
        # weight of ``shrink`` pseudo-cells
        ok = mean > 0.1
        phi = float(np.median(((var - mean) / np.maximum(mean, 1e-12) ** 2)[ok])) if ok.any() else 0.0
        trend = mean + max(phi, 0.0) * mean ** 2
        var = (n_ref[:, None] * var + shrink * trend) / (n_ref[:, None] + shrink)
    # one global factor q puts the signature on the CPM scale (per-type factors would turn the
    # coefficients from cells into reads)
    lib = np.asarray((ind @ x).sum(axis=1)).ravel() / n_ref  # mean counts per cell, shared genes
    q = 1e6 / max(float(lib.mean()), 1e-12)
    b_raw = bulk_matrix(bulk, bulk_pos)
    total = b_raw.sum(axis=1)
    p = 1e6 / np.where(total > 0, total, 1.0)
    b = b_raw[:, genes] * p[:, None]
    # counts: p (CPM per read) sets the counting noise; TPM/FPKM sum to no library size, so p is
    # fitted per sample from the residuals instead (fraction_wls.fit_bulk_scale)
    has_library = bulk.attrs.get("units", "counts") == "counts"
    info: dict = {}
    coef = wls_fit(mean.T * q, var.T * q * q, n_ref, b, p if has_library else None, q, n_irls=n_irls,
                   sampling=sampling, huber=huber, multiplicative=multiplicative, eiv=eiv, info=info)
    out = pd.DataFrame(normalise_rows(coef), index=bulk.columns, columns=list(lab.categories))
    out.attrs["marker_genes"] = list(reference.var_names.astype(str)[ref_pos][genes])
    if "bulk_scale" in info:
        out.attrs["noise_library"] = dict(zip(map(str, bulk.columns), map(float, 1e6 / info["bulk_scale"])))
    return out

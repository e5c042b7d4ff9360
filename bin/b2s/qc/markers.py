"""Marker genes of the reference and how well the generated cells reproduce them (per-type Pearson r)."""

from __future__ import annotations

import warnings
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE
from b2s.errors import InputError
from b2s.qc.metrics import celltypes_of, ordered_types, qc_log
from b2s.utils import indicator


def _group_means(x: Any, labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """Mean row of ``x`` (cells x genes, sparse or dense) per label, as groups x genes."""
    ind = indicator(pd.Categorical(labels, categories=groups).codes, len(groups))
    sums = ind @ x  # sparse product: no densification of the cell matrix
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    n = np.asarray(ind.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / n[:, None]


def _pearson_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between every row of ``a`` and every row of ``b`` (NaN where a row is constant)."""
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    na = np.sqrt((ac**2).sum(axis=1))
    nb = np.sqrt((bc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac @ bc.T) / np.outer(na, nb)
    r[~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def reference_markers(reference: ad.AnnData, top_n: int = 200) -> dict[str, list[str]]:
    """Top ``top_n`` wilcoxon markers (one type vs the rest) per reference cell type.

    Uses X (log-normalised), never ``.raw``. Types with fewer than 2 cells cannot be tested and get
    no markers. (The seed asks scanpy for its default 100 genes and then takes ``head(200)``, i.e.
    100 markers; here ``top_n`` markers are really requested.)
    """
    import scanpy as sc

    labels = celltypes_of(reference)
    counts = labels.value_counts()
    testable = [t for t in ordered_types(reference) if counts.get(t, 0) >= 2]
    markers: dict[str, list[str]] = {t: [] for t in ordered_types(reference)}
    if not testable or len(counts) < 2:
        qc_log("fewer than 2 cell types (or none with >= 2 cells): no wilcoxon markers")
        return markers
    light = ad.AnnData(X=reference.X, obs=pd.DataFrame({"ct": pd.Categorical(labels)},
                                                         index=reference.obs_names.copy()),
                       var=pd.DataFrame(index=reference.var_names.copy()))
    n_genes = int(min(top_n, light.n_vars))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(light, "ct", groups=testable, reference="rest", method="wilcoxon",
                                n_genes=n_genes, use_raw=False)
    names = light.uns["rank_genes_groups"]["names"]
    for t in testable:
        markers[t] = [str(g) for g in names[t]]
    return markers


def marker_correlation(reference: ad.AnnData, generated: ad.AnnData, top_n: int = 200,
                       markers: dict[str, list[str]] | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Correlation of per-type mean marker expression between reference and generated cells.

    Markers: the top ``top_n`` wilcoxon markers of each reference type (computed unless
    ``markers`` is given); their union, restricted to genes present in ``generated``, is the gene
    set of the correlation matrix (as in the seed).

    Returns
    -------
    summary
        One row per reference type: ``celltype, pearson_r`` (r between the type's reference and
        generated mean profiles over the union of markers, i.e. the matrix diagonal),
        ``n_markers`` (size of that union), ``pearson_r_own`` / ``n_own_markers`` (the same r on the
        type's own markers only), ``best_match`` (the generated type with the highest r in the
        type's matrix row), ``r_margin`` (r with its own generated type minus the highest r with
        any other generated type: > 0 when the generated cells of the type are told apart from
        the others; NaN without a finite r or with fewer than 2 generated types),
        ``n_reference``, ``n_generated`` and ``note`` (why r is NaN).
    matrix
        Pearson r, reference types (rows) x generated types (columns).
    """
    if markers is None:
        markers = reference_markers(reference, top_n)
    ref_types = ordered_types(reference)
    gen_labels = celltypes_of(generated).to_numpy()
    gen_counts = pd.Series(gen_labels).value_counts()
    gen_types = [t for t in ref_types if t in gen_counts.index] + sorted(
        set(gen_counts.index) - set(ref_types))
    gen_genes = pd.Index(generated.var_names)
    union: list[str] = list(dict.fromkeys(g for t in ref_types for g in markers.get(t, [])
                                          if g in gen_genes))
    ref_labels = celltypes_of(reference).to_numpy()
    ref_counts = pd.Series(ref_labels).value_counts()

    if union and gen_types:
        ref_pos = pd.Index(reference.var_names).get_indexer(union)
        if (ref_pos < 0).any():
            raise InputError("marker genes missing from the reference; pass the same "
                             "model_input.h5ad that the markers were computed on")
        gen_pos = gen_genes.get_indexer(union)
        ref_mean = _group_means(reference.X[:, ref_pos], ref_labels, ref_types)
        gen_mean = _group_means(generated.X[:, gen_pos], gen_labels, gen_types)
        mat = _pearson_matrix(ref_mean, gen_mean)
    else:
        ref_mean = gen_mean = None
        mat = np.full((len(ref_types), len(gen_types)), np.nan)
    matrix = pd.DataFrame(mat, index=pd.Index(ref_types, name="reference"),
                          columns=pd.Index(gen_types, name="generated"))

    best_match, margin = _row_identity(matrix)
    rows = []
    union_pos = {g: i for i, g in enumerate(union)}
    for i, t in enumerate(ref_types):
        note = ""
        r = r_own = np.nan
        own = [union_pos[g] for g in markers.get(t, []) if g in union_pos]
        if t not in gen_counts.index:
            note = "absent from generated cells"
        elif not union:
            note = "no marker genes shared with generated cells"
        else:
            j = gen_types.index(t)
            r = matrix.iloc[i, j]
            if own and ref_mean is not None:
                r_own = _pearson_matrix(ref_mean[i:i + 1, own], gen_mean[j:j + 1, own])[0, 0]
            if not own:
                note = "no wilcoxon markers (fewer than 2 reference cells)"
            if not np.isfinite(r):
                note = note or "constant mean profile: r undefined"
        rows.append({CELLTYPE: t, "pearson_r": r, "n_markers": len(union),
                     "pearson_r_own": r_own, "n_own_markers": len(own),
                     "best_match": best_match[i], "r_margin": margin[i],
                     "n_reference": int(ref_counts.get(t, 0)),
                     "n_generated": int(gen_counts.get(t, 0)), "note": note})
    summary = pd.DataFrame(rows, columns=[CELLTYPE, "pearson_r", "n_markers", "pearson_r_own",
                                          "n_own_markers", "best_match", "r_margin", "n_reference",
                                          "n_generated", "note"])
    return summary, matrix


def _row_identity(matrix: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Per reference type (row): the best-matching generated type and the own-vs-best-other margin.

    An undertrained VAE generates nearly the same average cell for every type: each row of the
    matrix is then flat, r is high everywhere and the margin is ~0, which r alone cannot show.
    """
    m = matrix.to_numpy(dtype=float)
    cols = list(matrix.columns)
    filled = np.where(np.isfinite(m), m, -np.inf)
    best_match = [str(cols[j]) if np.isfinite(filled[i, j]) else "" for i, j in
                  enumerate(filled.argmax(axis=1))] if cols else [""] * len(m)
    own_col = np.array([cols.index(t) if t in cols else -1 for t in matrix.index])
    margin = np.full(len(m), np.nan)
    if len(cols) >= 2:
        rows = np.flatnonzero(own_col >= 0)
        own = m[rows, own_col[rows]]
        others = filled[rows].copy()
        others[np.arange(len(rows)), own_col[rows]] = -np.inf
        best_other = others.max(axis=1)
        ok = np.isfinite(own) & np.isfinite(best_other)
        margin[rows[ok]] = own[ok] - best_other[ok]
    return best_match, margin

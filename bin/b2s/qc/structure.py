"""Within-type structure of generated cells, judged against the reference alone (QC without held-out data).

Marker r, kNN typing, library size and detection rate are met by NB counts drawn from each type's
mean profile: a generator that learnt nothing inside a type. What only a trained generator keeps
is the variation inside a type: gene programs that co-vary. Per cell type:

- genes: the :data:`N_GENES` that vary most (log-normalised X) among the type's reference cells,
  among genes detected in at least :data:`MIN_DETECTED` of them;
- **structure**: Pearson r between the off-diagonal entries of the gene-gene Pearson correlation
  matrix of the generated cells of the type and that of its reference cells (~1: the reference's
  programs; ~0: none, e.g. each type's mean with count noise; a gene constant in one set
  correlates 0 with every other);
- **floor**: what real cells score, the reference's own split score: the type's reference cells
  split (seeded) into as many cells as were generated, at most half, and the rest; genes chosen
  on the rest (the reference's role), the two parts' matrices compared; the mean over
  :data:`N_SPLITS` splits. Matching the generated count keeps a small group from being judged
  against a floor that more cells would reach; the smaller reference part makes the floor
  conservative;
- **variance ratio**: median over those genes of the generated cells' variance / the reference's.

A type with fewer than :data:`MIN_CELLS` reference or generated cells, or fewer than 3 variable
genes, is not assessed; one whose floor is under :data:`MIN_FLOOR` (the reference itself shows
no reproducible structure) is not judged. The QC warns (:func:`structure_warnings`) when a
type keeps under :data:`MIN_FLOOR_SHARE` of its floor, or when the VAE by itself (``uns['vae_identity']``,
b2s.generate.rates.vae_identity) tells fewer than half the types apart.

Why these thresholds (benchmarks/README.md, "QC without held-out data: within-type structure",
``benchmarks/structure_qc.py``): on the Hao PBMC reference held-out real cells score above their
floor and none is flagged, NB counts from each type's mean (the null) score ~0 and every judged
type is flagged, and resampled reference cells score far above the floor; :data:`MIN_FLOOR`
leaves unjudged the types whose floor is too small to tell real cells from the null.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE
from b2s.qc.metrics import ordered_types
from b2s.utils import indicator

#: genes per type whose co-variation is compared
N_GENES = 100
#: seeded splits of the reference averaged for the floor
N_SPLITS = 5
#: fewer reference or generated cells of a type than this: not assessed
MIN_CELLS = 10
#: a gene counts as expressed in a type when detected in at least this share of its cells (and >= 2)
MIN_DETECTED = 0.05
#: a type whose structure is under this share of its floor is flagged
MIN_FLOOR_SHARE = 0.5
#: a floor below this: the reference itself shows no reproducible structure in the type (not judged)
MIN_FLOOR = 0.05
#: below this share of types told apart by the VAE itself (before the calibration) the QC warns
MIN_VAE_IDENTITY_RATE = 0.5

ADVICE = ("train longer (raise --epoch_num, and --patience so early stopping does not end it first), "
          "ideally on a GPU (-profile gpu, seconds instead of minutes), or pass --vae_weights trained that way")


def _moments(x: sp.csr_matrix, codes: np.ndarray, n_types: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per type (codes < 0: in none): cell count, per-gene variance and number of cells detected
    (types x genes), by sparse products, never densifying ``x``."""
    ind = indicator(codes, n_types)
    n = np.asarray(ind.sum(axis=1)).ravel()
    s = np.asarray((ind @ x).todense())
    s2 = np.asarray((ind @ x.multiply(x)).todense())
    det = np.asarray((ind @ (x > 0).astype(np.float64)).todense())
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n[:, None]
        var = np.clip(s2 / n[:, None] - mean ** 2, 0.0, None)
    return n, np.nan_to_num(var), det


def _top_genes(var: np.ndarray, det: np.ndarray, n: float, n_genes: int) -> np.ndarray:
    """Positions (sorted) of the ``n_genes`` most variable genes detected in >= MIN_DETECTED of ``n`` cells."""
    cand = np.flatnonzero((var > 1e-12) & (det >= max(2.0, MIN_DETECTED * n)))
    return np.sort(cand[np.argsort(-var[cand], kind="stable")[:n_genes]])


def _corr(dense: np.ndarray) -> np.ndarray:
    """Gene-gene Pearson correlation (genes x genes) of a cells x genes block; 0 for a constant gene."""
    c = dense - dense.mean(axis=0)
    sd = np.sqrt((c ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (c.T @ c) / np.outer(sd, sd)
    r[~np.isfinite(r)] = 0.0
    return r


def _offdiag_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r between the upper off-diagonal entries of two correlation matrices (0 if one is flat)."""
    iu = np.triu_indices(len(a), 1)
    x, y = a[iu] - a[iu].mean(), b[iu] - b[iu].mean()
    d = np.sqrt((x ** 2).sum() * (y ** 2).sum())
    return float((x * y).sum() / d) if d > 0 else 0.0


def _dense(x: sp.csr_matrix, rows: np.ndarray, genes: np.ndarray) -> np.ndarray:
    return x[rows][:, genes].toarray().astype(np.float64)


def _split_codes(codes: np.ndarray, size_a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Codes of a seeded split of every type into ``size_a[type]`` cells (A) and the rest (B); a
    cell gets -1 in the part it is not in. Vectorised: one random key per cell, ranked within its type."""
    order = np.lexsort((rng.random(len(codes)), codes))
    n_per = np.bincount(codes[codes >= 0], minlength=len(size_a))
    start = np.concatenate([[0], np.cumsum(n_per)])
    sorted_codes = codes[order]
    first = np.searchsorted(sorted_codes, 0)  # cells in no type (-1) sort first
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - first - np.where(sorted_codes >= 0, start[np.maximum(sorted_codes, 0)], 0)
    in_a = (codes >= 0) & (rank < size_a[np.maximum(codes, 0)])
    return np.where(in_a, codes, -1), np.where(~in_a & (codes >= 0), codes, -1)


def _csr(adata: ad.AnnData) -> sp.csr_matrix:
    x = adata.X
    return sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else sp.csr_matrix(np.asarray(x, dtype=np.float64))


def _round(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def within_type_structure(reference: ad.AnnData, cells: ad.AnnData, n_genes: int = N_GENES,
                          n_splits: int = N_SPLITS, min_cells: int = MIN_CELLS, seed: int = 0) -> dict[str, Any]:
    """Within-type structure, its floor and the variance ratio of ``cells`` (generated)
    against ``reference`` (model input), per reference type, as in the module docstring.

    Both carry log-normalised X and ``obs['celltype']``; genes are matched by name. Returns a
    JSON-able dict: ``per_celltype`` {type: n_reference, n_generated, n_genes, structure, floor,
    share_of_floor, variance_ratio, note}, and over the assessed types ``structure_mean``,
    ``floor_mean``, ``variance_ratio_median``, ``n_types_assessed`` and ``types_under_floor``
    (structure < :data:`MIN_FLOOR_SHARE` x floor, floor >= :data:`MIN_FLOOR`); plus the settings.
    Seeded: the same inputs and seed give the same numbers.
    """
    ref_labels = reference.obs[CELLTYPE].astype(str).to_numpy()
    types = ordered_types(reference)
    genes = pd.Index(reference.var_names).intersection(pd.Index(cells.var_names), sort=False)
    xr = _csr(reference)[:, pd.Index(reference.var_names).get_indexer(genes)]
    xg = _csr(cells)[:, pd.Index(cells.var_names).get_indexer(genes)]
    codes = pd.Categorical(ref_labels, categories=types).codes.astype(np.int64)
    gcodes = pd.Categorical(cells.obs[CELLTYPE].astype(str).to_numpy(), categories=types).codes.astype(np.int64)
    k = len(types)
    n_ref, var_ref, det_ref = _moments(xr, codes, k)
    n_gen, var_gen, _ = _moments(xg, gcodes, k)

    # floor: seeded splits of every type at once into A (as many cells as were generated, at most
    # half) and B (the rest, in the reference's role: genes chosen on it)
    rng = np.random.default_rng(seed)
    size_a = np.minimum(n_gen, n_ref // 2).astype(np.int64)
    floors = np.full((n_splits, k), np.nan)
    for s in range(n_splits):
        ca, cb = _split_codes(codes, size_a, rng)
        nb, var_b, det_b = _moments(xr, cb, k)
        for t in range(k):
            if n_ref[t] < min_cells or n_gen[t] < min_cells:
                continue
            top = _top_genes(var_b[t], det_b[t], nb[t], n_genes)
            if len(top) >= 3:
                floors[s, t] = _offdiag_r(_corr(_dense(xr, np.flatnonzero(ca == t), top)),
                                          _corr(_dense(xr, np.flatnonzero(cb == t), top)))

    per: dict[str, dict[str, Any]] = {}
    for t, name in enumerate(types):
        row: dict[str, Any] = {"n_reference": int(n_ref[t]), "n_generated": int(n_gen[t]), "n_genes": 0,
                               "structure": None, "floor": None, "share_of_floor": None,
                               "variance_ratio": None, "note": ""}
        top = _top_genes(var_ref[t], det_ref[t], n_ref[t], n_genes)
        if n_ref[t] < min_cells or n_gen[t] < min_cells:
            row["note"] = f"not assessed: fewer than {min_cells} reference or generated cells"
        elif len(top) < 3:
            row["note"] = "not assessed: fewer than 3 variable expressed genes"
        else:
            score = _offdiag_r(_corr(_dense(xg, np.flatnonzero(gcodes == t), top)),
                               _corr(_dense(xr, np.flatnonzero(codes == t), top)))
            floor = float(np.nanmean(floors[:, t])) if np.isfinite(floors[:, t]).any() else np.nan
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = float(np.median(var_gen[t, top] / var_ref[t, top]))
            row.update({"n_genes": int(len(top)), "structure": _round(score), "floor": _round(floor),
                        "share_of_floor": _round(score / floor) if np.isfinite(floor) and floor >= MIN_FLOOR
                        else None, "variance_ratio": _round(ratio)})
            if not np.isfinite(floor) or floor < MIN_FLOOR:
                row["note"] = (f"the reference itself shows no reproducible structure here (floor < {MIN_FLOOR}): "
                               "not judged")
        per[name] = row
    done = [r for r in per.values() if r["structure"] is not None]
    judged = {n: r for n, r in per.items() if r["share_of_floor"] is not None}
    under = [n for n, r in judged.items() if r["structure"] < MIN_FLOOR_SHARE * r["floor"]]
    mean = lambda key: _round(float(np.mean([r[key] for r in done if r[key] is not None]))  # noqa: E731
                              ) if any(r[key] is not None for r in done) else None
    ratios = [r["variance_ratio"] for r in done if r["variance_ratio"] is not None]
    return {"structure_mean": mean("structure"), "floor_mean": mean("floor"),
            "variance_ratio_median": _round(float(np.median(ratios))) if ratios else None,
            "n_types_assessed": len(done), "n_types_judged": len(judged), "types_under_floor": under,
            "per_celltype": per,
            "settings": {"n_genes": int(n_genes), "n_splits": int(n_splits), "min_cells": int(min_cells),
                         "min_floor_share": MIN_FLOOR_SHARE, "seed": int(seed)}}


def structure_warnings(within: dict[str, Any], vae: dict[str, Any] | None = None) -> list[str]:
    """Plain sentences for the log and the report: types keeping under half of their floor, and a
    VAE that by itself tells fewer than half the types apart (``vae``: b2s.qc.metrics.vae_identity_of)."""
    out = []
    under = within.get("types_under_floor") or []
    if under:
        per = within["per_celltype"]
        detail = ", ".join(f"{t} {per[t]['structure']:.2f} vs {per[t]['floor']:.2f}" for t in under[:6])
        out.append(
            f"within-type structure: {len(under)} of {within['n_types_judged']} cell types keep under "
            f"{MIN_FLOOR_SHARE:g} x the gene-gene correlation structure that real cells of the type keep "
            f"(structure vs the reference's own floor: {detail}{', ...' if len(under) > 6 else ''}): "
            f"their generated cells are close to the type's mean with count noise, not cells with the reference's gene programs; {ADVICE}")
    if vae is not None:
        k, n = vae.get("vae_celltypes_identified"), vae.get("vae_celltypes_assessed")
        if n is not None and k is not None and n >= 2 and k < MIN_VAE_IDENTITY_RATE * n:
            out.append(
                f"the VAE by itself tells only {k} of {n} cell types apart (decoded profiles before the "
                "per-type calibration): the generated cells' type identity comes from the calibration alone and "
                f"the VAE is undertrained; {ADVICE}")
    return out


def within_type_qc(reference: ad.AnnData, cells: ad.AnnData, vae: dict[str, Any] | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """QC's metrics.json keys for the within-type structure of ``cells`` and the warnings
    (``warnings``, with :func:`structure_warnings`)."""
    w = within_type_structure(reference, cells, seed=seed)
    return {"within_type_structure_mean": w["structure_mean"], "within_type_floor_mean": w["floor_mean"],
            "within_type_variance_ratio": w["variance_ratio_median"],
            "within_type_types_assessed": w["n_types_assessed"],
            "within_type_types_under_floor": w["types_under_floor"],
            "within_type": {"per_celltype": w["per_celltype"], **w["settings"]},
            "warnings": structure_warnings(w, vae)}


def summary_line(q: dict[str, Any]) -> str:
    """One log line of :func:`within_type_qc`'s numbers."""
    f = lambda v: "NA" if v is None else f"{v:.3f}"  # noqa: E731
    return (f"within-type structure (gene-gene correlation vs the reference, mean over "
            f"{q['within_type_types_assessed']} types) {f(q['within_type_structure_mean'])}; real cells' "
            f"floor (reference split) {f(q['within_type_floor_mean'])}; "
            f"variance ratio {f(q['within_type_variance_ratio'])}; "
            f"{len(q['within_type_types_under_floor'])} type(s) under {MIN_FLOOR_SHARE:g} x the floor")

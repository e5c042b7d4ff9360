"""Goodness of fit of estimated fractions: does the reference explain each bulk sample?

Each sample's fractions (of cells) times the per-type mean counts per cell give the bulk that the
reference predicts; it is compared with the real bulk on the marker genes (the genes the
estimate rests on), both scaled to the same total:

- ``fit_r``: Pearson r of log1p(CPM) between bulk and reconstruction over the marker genes;
- ``residual``: the share of the bulk's marker-gene reads the reconstruction misplaces
  (half the L1 distance of the two compositions: 0 = identical, 1 = disjoint).

A sample with ``fit_r`` < :data:`MIN_FIT_R` or ``residual`` > :data:`MAX_RESIDUAL` is flagged:
its cells are probably not all of the reference's types (a missing type, another tissue), so
its fractions should not be trusted. Thresholds from benchmarks/fractions_real.py (Hao PBMC
pseudo-bulks: every sample explained by a full reference has r >= 0.95 and residual <= 0.10;
with the monocytes removed from the reference, myeloid-rich samples fall below; see
benchmarks/README.md).
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd

MIN_FIT_R: float = 0.9
MAX_RESIDUAL: float = 0.2


def goodness_of_fit(bulk: pd.DataFrame, reference: anndata.AnnData, fractions: pd.DataFrame,
                    marker_genes: list[str] | None = None) -> pd.DataFrame:
    """Per-sample ``fit_r``, ``residual`` and ``explained`` (bool) of ``fractions``.

    Args:
        bulk: genes x samples raw counts.
        reference: raw counts, ``obs['celltype']``.
        fractions: samples x types cell fractions (any estimator's).
        marker_genes: genes to compare on; default: the fold-change markers of the ``nnls`` method.
    """
    from b2s.fractions import _bulk_matrix, _markers, _shared, type_profiles

    ref_pos, bulk_pos = _shared(bulk, reference)
    prof = type_profiles(reference, ref_pos)
    ref_genes = pd.Index(reference.var_names.astype(str)[ref_pos])
    if marker_genes:
        genes = ref_genes.get_indexer(pd.Index(marker_genes))
        genes = np.sort(genes[genes >= 0])
    else:
        genes = _markers(prof["mean"], 50)
    fr = fractions.reindex(columns=prof["types"], fill_value=0.0).to_numpy(dtype=np.float64)
    recon = fr @ prof["mean"][:, genes]  # samples x genes, expected counts per cell
    b = _bulk_matrix(bulk, bulk_pos)[:, genes]
    b_cpm = b / np.maximum(b.sum(axis=1, keepdims=True), 1e-300) * 1e6
    r_cpm = recon / np.maximum(recon.sum(axis=1, keepdims=True), 1e-300) * 1e6
    lb, lr = np.log1p(b_cpm), np.log1p(r_cpm)
    lb_c = lb - lb.mean(axis=1, keepdims=True)
    lr_c = lr - lr.mean(axis=1, keepdims=True)
    den = np.sqrt((lb_c ** 2).sum(axis=1) * (lr_c ** 2).sum(axis=1))
    fit_r = np.where(den > 0, (lb_c * lr_c).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    residual = 0.5 * np.abs(b_cpm - r_cpm).sum(axis=1) / 1e6
    out = pd.DataFrame({"fit_r": fit_r, "residual": residual}, index=fractions.index)
    out["explained"] = (out["fit_r"] >= MIN_FIT_R) & (out["residual"] <= MAX_RESIDUAL)
    out.index.name = "sample"
    return out


def fit_warnings(fit: pd.DataFrame) -> list[str]:
    """One line per sample the reference does not explain."""
    return [f"sample {s}: the reference explains it poorly (fit r {row.fit_r:.3f} < {MIN_FIT_R} or residual "
            f"{row.residual:.3f} > {MAX_RESIDUAL}); a cell type may be missing from the reference or the "
            "tissue differs, so treat its fractions with caution"
            for s, row in fit.loc[~fit["explained"]].iterrows()]

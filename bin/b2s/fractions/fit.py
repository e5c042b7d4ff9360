"""Goodness of fit of estimated fractions: does the reference explain each bulk sample?

Each sample's fractions (of cells) times the per-type mean counts per cell give the bulk that the
reference predicts; it is compared with the real bulk, both scaled to counts per million over the
shared genes, on the genes expressed in either (>= :data:`MIN_CPM` CPM in that sample): all
expressed genes, not only the markers, since the markers are chosen from the reference and
cannot show what it lacks.

- ``fit_r``: Pearson r of log1p(CPM) between bulk and reconstruction;
- ``residual``: the share of the bulk's reads the reconstruction misplaces (half the L1
  distance of the two compositions: 0 = identical, 1 = disjoint).

A sample with ``fit_r`` < :data:`MIN_FIT_R` or ``residual`` > :data:`MAX_RESIDUAL` is flagged:
its cells are probably not all of the reference's types (a missing type, another tissue).
The thresholds are calibrated on Hao PBMC pseudo-bulks with the full reference (none flagged)
and with types removed from it (myeloid-rich and rare-type samples flagged when their types are
missing). A missing type whose neighbour can stand in for it (no monocytes while mDC are kept)
changes the fit little and is NOT detected (benchmarks/README.md, "Cell fractions on real
full-transcriptome data", goodness of fit). Real bulk RNA-seq against a single-cell reference
fits less tightly than pseudo-bulks; the thresholds flag clear misfits, and values near them are a
reason to look rather than a verdict.
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd

from b2s._constants import SAMPLE

MIN_FIT_R: float = 0.9
MAX_RESIDUAL: float = 0.12
MIN_CPM: float = 10.0


def goodness_of_fit(bulk: pd.DataFrame, reference: anndata.AnnData, fractions: pd.DataFrame) -> pd.DataFrame:
    """Per-sample ``fit_r``, ``residual``, ``n_genes`` and ``explained`` (bool) of ``fractions``.

    Args:
        bulk: genes x samples raw counts.
        reference: raw counts, ``obs['celltype']``.
        fractions: samples x types cell fractions (any estimator's; types absent there count 0).
    """
    from b2s.fractions.signature import bulk_matrix, shared_genes, type_profiles

    ref_pos, bulk_pos = shared_genes(bulk, reference)
    prof = type_profiles(reference, ref_pos)
    fr = fractions.reindex(columns=prof["types"], fill_value=0.0).to_numpy(dtype=np.float64)
    recon = fr @ prof["mean"]  # samples x genes, expected counts per cell
    b = bulk_matrix(bulk, bulk_pos)
    b_cpm = b / np.maximum(b.sum(axis=1, keepdims=True), 1e-300) * 1e6
    r_cpm = recon / np.maximum(recon.sum(axis=1, keepdims=True), 1e-300) * 1e6
    keep = (b_cpm >= MIN_CPM) | (r_cpm >= MIN_CPM)  # samples x genes
    n = keep.sum(axis=1)
    lb, lr = np.log1p(b_cpm), np.log1p(r_cpm)
    nn = np.maximum(n, 1)[:, None]
    lb_c = np.where(keep, lb - (lb * keep).sum(axis=1, keepdims=True) / nn, 0.0)
    lr_c = np.where(keep, lr - (lr * keep).sum(axis=1, keepdims=True) / nn, 0.0)
    den = np.sqrt((lb_c ** 2).sum(axis=1) * (lr_c ** 2).sum(axis=1))
    fit_r = np.where(den > 0, (lb_c * lr_c).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    residual = 0.5 * np.abs(b_cpm - r_cpm).sum(axis=1) / 1e6
    out = pd.DataFrame({"fit_r": fit_r, "residual": residual, "n_genes": n}, index=fractions.index)
    out["explained"] = (out["fit_r"] >= MIN_FIT_R) & (out["residual"] <= MAX_RESIDUAL)
    out.index.name = SAMPLE
    return out


def fit_warnings(fit: pd.DataFrame) -> list[str]:
    """One line per sample the reference does not explain."""
    return [f"sample {s}: the reference explains it poorly (fit r {row.fit_r:.3f}, min {MIN_FIT_R}; residual "
            f"{row.residual:.3f}, max {MAX_RESIDUAL}); a cell type may be missing from the reference or the "
            "tissue differs, so treat its fractions with caution"
            for s, row in fit.loc[~fit["explained"]].iterrows()]

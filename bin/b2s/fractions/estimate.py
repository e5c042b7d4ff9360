"""Cell-type fractions of bulk samples, group means and target cell numbers (ESTIMATE_FRACTIONS).

Four estimators share one signature, :func:`estimate_sample_fractions`:

``wls`` (default)
    Variance-weighted robust NNLS (:mod:`b2s.fractions.wls`): markers from a between-type test on
    the full gene space (Welch t on per-cell log CP10k for every ORDERED pair of types, so the few
    genes that tell CD4 from CD8 T cells are kept; :mod:`b2s.fractions.markers`), per-type MEAN
    raw counts per cell as the signature (coefficients = cell numbers, so per-type mRNA content
    is corrected: fractions of cells, not reads), genes weighted by the residual variance the
    fit implies (reference-mean error from the type's cell count, which cells the bulk sampled,
    counting noise from the library size (TPM/FPKM have none: its scale is fitted per sample
    from the residuals, so TPM and counts of the same samples give nearly the same fractions;
    benchmarks/README.md "Bulk units"), a fitted expression-proportional term; per-type variances
    shrunk towards a negative-binomial trend), re-weighted twice with Huber weights on the
    standardised residuals (genes whose bulk expression departs from the reference lose
    influence), each solve an exact Lawson-Hanson NNLS for all samples at once, its normal
    equations corrected for the noise of signatures estimated from few reference cells
    (errors-in-variables: without it a type with 5 reference cells is under-estimated and a
    similar type absorbs its cells). Deterministic.
    ``markers`` (``--markers``) replaces the automatic selection. Options: ``n_per_pair`` (30),
    ``min_fold`` (3), ``n_irls`` (2), ``huber`` (1.0), ``sampling``, ``multiplicative``,
    ``shrink`` (10), ``eiv`` (0.5).
``nnls``
    The simple baseline (the null of the fraction benchmarks). Non-negative least squares of
    each bulk sample (CPM on the genes shared with the reference) on per-type MEAN profiles
    (counts per cell), restricted to marker genes (top ``n_markers`` per type by fold change of
    the type's CPM mean over the highest other type), every gene weighted by 1/sqrt(its mean over
    the type profiles) (Poisson-like variance, so highly expressed genes do not dominate and noisy
    low ones are not amplified; ``gene_scale``). Because the profiles are counts *per cell*, the
    coefficients are proportional to cell numbers, i.e. CELL fractions (``cell_share=False``
    returns expression shares instead). All samples are solved at once by an accelerated
    projected-gradient solver (no per-sample loop).
``tape`` / ``scaden``
    Small torch MLPs trained on pseudo-bulks simulated from SINGLE reference cells (cell-level
    sampling as TAPE and Scaden were published; omicverse instead mixes one summed profile per
    type): Dirichlet fractions, half of the mixtures with a random half of the types set to zero,
    ``n_cells`` cells drawn per mixture by those fractions, counts summed with one sparse
    (mixtures x cells) @ (cells x genes) product; marker genes only. Input = CPM -> log2(x+1) ->
    per-gene z-score with the pseudo-bulks' mean/sd (``scaling='minmax'``: Scaden's per-sample
    min-max), applied identically to the real bulk. ``tape``: one CELU/dropout encoder with TAPE's
    non-negative linear signature decoder (loss = L1 on fractions + L1 reconstruction of the
    min-max scaled input). ``scaden``: Scaden's ensemble of three ReLU MLPs (256/512/1024 wide,
    its dropout rates) averaged. Softmax outputs, Adam, seeded init/dropout/shuffling, 1 thread.

Why ``wls`` is the default: on real full-transcriptome pseudo-bulks (Hao PBMC, 3 seeded
reference / held-out splits, ``benchmarks/fractions_real.py``) it has the highest r and the lowest
RMSE and per-type bias of the four estimators, Rectangle and omicverse's ``scaden`` / ``tape``,
in about a second, and it beats ``nnls`` (the null: NNLS on the type means, without the variance
model or the pairwise markers) on the bundled data too (benchmarks/README.md, "Cell fractions on
real full-transcriptome data"; the earlier choice of ``nnls`` and its design measurements are in
"Design measurements of the fraction estimators" there).
"""

from __future__ import annotations

import time

import anndata
import numpy as np
import pandas as pd

from b2s._constants import CELLTYPE, FRACTION, GROUP, N_CELLS, SAMPLE
from b2s.errors import InputError
from b2s.fractions.mlp import mlp_fractions
from b2s.fractions.nnls import nnls_fractions, wls_fractions
from b2s.fractions.signature import celltype_labels

METHODS: tuple[str, ...] = ("wls", "nnls", "tape", "scaden")
DEFAULT_METHOD: str = "wls"


def estimate_sample_fractions(bulk: pd.DataFrame, reference: anndata.AnnData,
                              method: str = DEFAULT_METHOD, seed: int = 42, **kwargs) -> pd.DataFrame:
    """Cell-type fractions of every bulk sample.

    Args:
        bulk: genes x samples raw counts (index gene symbols).
        reference: raw counts (CSR), ``obs['celltype']``.
        method: one of :data:`METHODS`.
        seed: seeds every random step.
        **kwargs: estimator options (``nnls``: n_markers, gene_scale, cell_share; ``tape``/
            ``scaden``: n_pseudobulk, n_cells, n_markers, epochs, batch_size, lr).

    Returns:
        samples x cell types (columns sorted by name), rows non-negative and summing to 1.
    """
    if method not in METHODS:
        raise InputError(f"--method '{method}' is unknown; use one of {', '.join(METHODS)}")
    if bulk.shape[1] == 0:
        raise InputError("bulk_counts.tsv: no sample columns; give at least one bulk sample")
    if method == "wls":
        out = wls_fractions(bulk, reference, seed=seed, **kwargs)
    elif method == "nnls":
        out = nnls_fractions(bulk, reference, seed=seed, **kwargs)
    else:
        out = mlp_fractions(method, bulk, reference, seed=seed, **kwargs)
    out.index.name = SAMPLE
    attrs = dict(out.attrs)
    out = out[sorted(out.columns)]
    out.attrs.update(attrs)
    return out


def group_fractions(sample_fractions: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Mean of the per-sample fractions over each group's samples (index ``group``, groups in
    order of first appearance in ``groups``)."""
    missing = sorted(set(groups[SAMPLE].astype(str)) - set(sample_fractions.index.astype(str)))
    if missing:
        raise InputError(
            f"groups.csv: sample(s) {', '.join(missing)} have no estimated fractions (not in the "
            "bulk matrix); list only columns of bulk_counts.tsv"
        )
    sf = sample_fractions.copy()
    sf.index = sf.index.astype(str)
    g = groups.astype({GROUP: str, SAMPLE: str})
    out = sf.loc[g[SAMPLE].to_numpy()].groupby(g[GROUP].to_numpy(), sort=False).mean()
    out.index.name = GROUP
    return out


#: How the number of cells per group is set (:func:`cell_number_rule`), as the console and the report say it.
CELL_RULES = {
    "library_size": "total = reference cells x group library size / reference counts, x --scale_size",
    "reference_cells": "TPM/FPKM carry no library size: total = the reference's cell number, x --scale_size",
    "cells_per_group": "--cells_per_group cells per group, split by the fractions",
}


def cell_number_rule(bulk: pd.DataFrame, cells_per_group: int | None = None) -> str:
    """``cells_per_group`` when given; else ``library_size`` for counts (omicverse's rule) and
    ``reference_cells`` for TPM/FPKM (``bulk.attrs['units']``), whose sums are no library sizes."""
    if cells_per_group:
        return "cells_per_group"
    return "library_size" if bulk.attrs.get("units", "counts") == "counts" else "reference_cells"


def total_cells(bulk: pd.DataFrame, groups: pd.DataFrame, reference: anndata.AnnData,
                cells_per_group: int | None = None) -> dict[str, float]:
    """The total cell number per group, by :func:`cell_number_rule`:

    * ``library_size``: n_reference_cells * L(group) / total reference counts, where L(group) is
      the library size of the group-mean bulk profile (sum over all bulk genes of the mean raw
      count over the group's samples), as omicverse's ``predicted_fraction``;
    * ``reference_cells``: the number of reference cells (after ``--max_single_cells``), i.e. as if
      the group's library equalled the reference's;
    * ``cells_per_group``: that number.
    """
    g = groups.astype({GROUP: str, SAMPLE: str})
    missing = sorted(set(g[SAMPLE]) - set(bulk.columns.astype(str)))
    if missing:
        raise InputError(f"groups.csv: sample(s) {', '.join(missing)} are not columns of bulk_counts.tsv; "
                         "fix the samplesheet or the bulk matrix")
    names = list(pd.unique(g[GROUP]))
    rule = cell_number_rule(bulk, cells_per_group)
    if rule == "cells_per_group":
        return {k: float(cells_per_group) for k in names}
    if rule == "reference_cells":
        return {k: float(reference.n_obs) for k in names}
    ref_total = float(reference.X.sum())
    if ref_total <= 0:
        raise InputError("reference.h5ad: X sums to 0; the reference must hold raw counts")
    col_totals = bulk.sum(axis=0)
    col_totals.index = col_totals.index.astype(str)
    lib = col_totals.loc[g[SAMPLE].to_numpy()].groupby(g[GROUP].to_numpy(), sort=False).mean()
    return {k: float(reference.n_obs * v / ref_total) for k, v in lib.items()}


def cell_targets(bulk: pd.DataFrame, groups: pd.DataFrame, reference: anndata.AnnData,
                 group_fracs: pd.DataFrame, scale_size: float = 2, cells_per_group: int | None = None) -> pd.DataFrame:
    """Number of cells to generate per group and type (as omicverse's ``predicted_fraction``).

    n_cells = int(fraction * total * scale_size), at least 1, with total from :func:`total_cells`;
    with ``cells_per_group`` n_cells = int(fraction * cells_per_group) (scale_size not applied).

    Returns columns ``group, celltype, fraction, n_cells`` (groups in ``group_fracs`` order,
    cell types sorted; every reference type is listed, a type without a fraction gets 0).
    """
    types = sorted(set(celltype_labels(reference).categories) | set(map(str, group_fracs.columns)))
    fr = group_fracs.copy()
    fr.columns = fr.columns.astype(str)
    fr = fr.reindex(columns=types, fill_value=0.0)
    totals = total_cells(bulk, groups, reference, cells_per_group)
    total = np.array([totals[str(k)] for k in fr.index], dtype=np.float64)
    factor = 1.0 if cells_per_group else float(scale_size)
    raw = fr.to_numpy(dtype=np.float64) * total[:, None] * factor
    n = np.maximum(np.floor(raw).astype(np.int64), 1)
    out = pd.DataFrame({
        GROUP: np.repeat(fr.index.astype(str).to_numpy(), len(types)),
        CELLTYPE: np.tile(types, len(fr)),
        FRACTION: fr.to_numpy(dtype=np.float64).ravel(),
        N_CELLS: n.ravel(),
    })
    return out


def fraction_accuracy(pred: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Pearson r, RMSE and Lin's CCC over all (sample, cell type) entries.

    Rows are matched by sample name (the shared ones) and columns by cell type (union; a type
    missing on one side counts as 0 there).
    """
    p, t = pred.copy(), truth.copy()
    p.index, t.index = p.index.astype(str), t.index.astype(str)
    p.columns, t.columns = p.columns.astype(str), t.columns.astype(str)
    rows = p.index.intersection(t.index)
    if rows.empty:
        raise ValueError("prediction and truth share no sample names")
    cols = sorted(set(p.columns) | set(t.columns))
    a = p.loc[rows].reindex(columns=cols, fill_value=0.0).to_numpy(dtype=np.float64).ravel()
    b = t.loc[rows].reindex(columns=cols, fill_value=0.0).to_numpy(dtype=np.float64).ravel()
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    rmse = float(np.sqrt(np.mean((a - b) ** 2)))
    ccc = float(2 * np.cov(a, b, bias=True)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2))
    return {"r": r, "rmse": rmse, "ccc": ccc}


def timed_estimate(bulk: pd.DataFrame, reference: anndata.AnnData, method: str = DEFAULT_METHOD,
                   seed: int = 42, **kwargs) -> tuple[pd.DataFrame, float]:
    """:func:`estimate_sample_fractions` plus its wall-clock seconds."""
    t0 = time.perf_counter()
    out = estimate_sample_fractions(bulk, reference, method=method, seed=seed, **kwargs)
    return out, time.perf_counter() - t0

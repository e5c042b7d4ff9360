"""QC against the bulk: does the pseudo-bulk of a group's generated cells explain its input bulk?

The seed tool (and Bulk2Space) never checks the generated cells against the bulk they come
from. Here, for one group, on the genes shared by the bulk and the model (log2 CPM over those
genes, so both sides have the same gene universe):

- the group's bulk: the mean over its samples of each sample's CPM;
- the pseudo-bulk of the generated and of the filtered cells: the sum of their counts
  (``layers['counts']``; cells without counts: ``expm1(X)``, i.e. CP10k);
- the composition-only expectation: ``sum_t fraction_t x mean reference counts of type t`` (the
  reference's per-type mean cell, raw counts, so types with large libraries weigh as in a bulk).

Each is scored against the bulk by Pearson and Spearman r and the share of variance explained,
``1 - SS(bulk - predicted) / SS(bulk - mean)`` (no refit: a constant offset counts as error). The
expectation shows what composition alone explains; the generated cells add to it only if they
carry the group's own expression (``--bulk_shift``, :mod:`b2s.generate.bulkshift`).
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE, COUNTS_LAYER, FRACTION, GENE, GROUP, N_CELLS, SAMPLE
from b2s.errors import InputError
from b2s.utils import indicator

#: Scores reported per predicted profile.
SCORE_KEYS = ("pearson_r", "spearman_r", "var_explained", "n_genes")


def read_bulk_inputs(bulk_path: str, groups_path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PREPARE_INPUTS' ``bulk_counts.tsv`` (genes x samples) and ``groups.csv`` (group, sample), checked."""
    import os

    for arg, path in (("--bulk", bulk_path), ("--groups", groups_path)):
        if not os.path.isfile(path):
            raise InputError(f"{arg} {path} does not exist; pass the file written by PREPARE_INPUTS")
    try:
        bulk = pd.read_csv(bulk_path, sep="\t", index_col=0)
        groups = pd.read_csv(groups_path, dtype=str)
    except Exception as err:
        raise InputError(f"--bulk {bulk_path} / --groups {groups_path} not readable ({type(err).__name__}); "
                         "pass bulk_counts.tsv and groups.csv written by PREPARE_INPUTS") from None
    if not {GROUP, SAMPLE} <= set(groups.columns):
        raise InputError(f"--groups {groups_path} needs columns group,sample (found: {', '.join(groups.columns)}); "
                         "pass the groups.csv written by PREPARE_INPUTS")
    if bulk.shape[1] == 0 or not all(pd.api.types.is_numeric_dtype(t) for t in bulk.dtypes):
        raise InputError(f"--bulk {bulk_path} is not a numeric genes x samples table; pass the "
                         "bulk_counts.tsv written by PREPARE_INPUTS")
    bulk.index = bulk.index.astype(str)
    bulk.columns = bulk.columns.astype(str)
    return bulk, groups


def group_bulk(bulk: pd.DataFrame, groups: pd.DataFrame, group: str) -> pd.DataFrame:
    """Raw counts (genes x samples) of the samples of ``group`` (``groups``: columns ``group, sample``)."""
    g = groups.astype({GROUP: str, SAMPLE: str})
    samples = g.loc[g[GROUP] == str(group), SAMPLE].tolist()
    if not samples:
        raise InputError(f"--group '{group}' is not in the groups table (groups: "
                         f"{', '.join(pd.unique(g['group']))}); pass groups.csv of the same run")
    missing = [s for s in samples if s not in set(map(str, bulk.columns))]
    if missing:
        raise InputError(f"groups.csv sample(s) {', '.join(missing)} of group '{group}' are not columns of "
                         "the bulk matrix; pass bulk_counts.tsv and groups.csv from the same PREPARE_INPUTS run")
    out = bulk.copy()
    out.columns = out.columns.astype(str)
    return out[samples]


def cpm(x: np.ndarray) -> np.ndarray:
    """Counts per million over the given genes (last axis); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    tot = x.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, x / np.where(tot > 0, tot, 1.0) * 1e6, 0.0)


def log_cpm(x: np.ndarray) -> np.ndarray:
    """log2(CPM + 1) over the given genes (last axis)."""
    return np.log2(cpm(x) + 1.0)


def cell_counts(adata: ad.AnnData) -> sp.csr_matrix:
    """Counts of the cells (``layers['counts']``; else ``expm1(X)``, CP10k), CSR float64."""
    if COUNTS_LAYER in adata.layers:
        return sp.csr_matrix(adata.layers[COUNTS_LAYER], dtype=np.float64)
    x = sp.csr_matrix(adata.X, dtype=np.float64, copy=True)
    np.expm1(x.data, out=x.data)
    return x


def pseudobulk(adata: ad.AnnData, genes: pd.Index) -> np.ndarray:
    """Summed counts of all cells of ``adata`` on ``genes`` (0 for genes it lacks, or no cells)."""
    out = np.zeros(len(genes))
    if adata.n_obs == 0:
        return out
    pos = pd.Index(adata.var_names).get_indexer(genes)
    sums = np.asarray(cell_counts(adata).sum(axis=0)).ravel()
    out[pos >= 0] = sums[pos[pos >= 0]]
    return out


def type_indicator(reference: ad.AnnData, types: list[str]) -> sp.csr_matrix:
    """Types x cells 0/1 matrix of the reference's ``obs['celltype']`` (cells of other types: none)."""
    codes = pd.Categorical(reference.obs[CELLTYPE].astype(str).to_numpy(), categories=types).codes
    return indicator(codes, len(types))


def type_mean_counts(reference: ad.AnnData, types: list[str], genes: pd.Index) -> np.ndarray:
    """Types x genes: mean count per cell of each reference type (0 for a type without cells)."""
    ind = type_indicator(reference, types)
    pos = pd.Index(reference.var_names).get_indexer(genes)
    if (pos < 0).any():
        raise InputError("genes missing from the reference model input; pass the model_input.h5ad of the same run")
    sums = np.asarray((ind @ cell_counts(reference)[:, pos]).todense())
    n = np.asarray(ind.sum(axis=1)).ravel()
    return sums / np.maximum(n, 1)[:, None]


def composition_expectation(profiles: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Expected bulk (genes) of cell fractions ``fractions`` (types) and per-type mean cells ``profiles``."""
    f = np.clip(np.asarray(fractions, dtype=np.float64), 0.0, None)
    return f @ profiles


def fractions_of(targets: pd.DataFrame, types: list[str]) -> np.ndarray:
    """Cell fractions of one group's ``targets`` rows (``fraction``, else ``n_cells``) in ``types`` order."""
    col = FRACTION if FRACTION in targets.columns else N_CELLS
    f = targets.assign(**{CELLTYPE: targets[CELLTYPE].astype(str)}).groupby(CELLTYPE)[col].sum()
    f = pd.to_numeric(f, errors="coerce").reindex(types).fillna(0.0).clip(lower=0.0).to_numpy(float)
    return f / f.sum() if f.sum() > 0 else f


def score(bulk_log: np.ndarray, pred_log: np.ndarray) -> dict[str, Any]:
    """Pearson r, Spearman r and share of variance of ``bulk_log`` explained by ``pred_log`` (no refit)."""
    from scipy.stats import pearsonr, spearmanr

    y, p = np.asarray(bulk_log, float), np.asarray(pred_log, float)
    n = int(len(y))
    if n < 3 or np.ptp(y) == 0 or np.ptp(p) == 0:
        return {"pearson_r": None, "spearman_r": None, "var_explained": None, "n_genes": n}
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - p) ** 2).sum())
    return {"pearson_r": round(float(pearsonr(y, p)[0]), 6),
            "spearman_r": round(float(spearmanr(y, p)[0]), 6),
            "var_explained": round(1.0 - ss_res / ss_tot, 6), "n_genes": n}


def bulk_qc(bulk_group: pd.DataFrame, generated: ad.AnnData, filtered: ad.AnnData,
            reference: ad.AnnData, fractions: np.ndarray, types: list[str],
            top_n: int = 50) -> dict[str, Any]:
    """Scores and residual genes of one group (see the module docstring).

    Args:
        bulk_group: raw counts, genes x the group's samples.
        generated, filtered: the group's cells (counts layer or log-normalised X).
        reference: the model input (``layers['counts']`` or X, ``obs['celltype']``).
        fractions: the group's cell fractions, in ``types`` order.
        top_n: genes with the largest |generated - bulk| log2 CPM residuals kept in the table.

    Returns:
        ``summary`` (frame: one row per predicted profile ``generated, filtered,
        composition_expected`` with :data:`SCORE_KEYS`), ``residuals`` (frame of the ``top_n``
        genes: log2 CPM of bulk, generated, filtered, expectation and the residuals),
        ``log_cpm`` (frame over all shared genes, for the scatter plot) and ``metrics`` (dict).
    """
    genes = pd.Index(generated.var_names).intersection(pd.Index(bulk_group.index.astype(str)), sort=False)
    if len(genes) == 0:
        raise InputError("the generated cells share no gene with the bulk matrix; pass bulk_counts.tsv "
                         "and the generated h5ad of the same run")
    b = bulk_group.copy()
    b.index = b.index.astype(str)
    bulk_l = np.log2(cpm(b.loc[genes].to_numpy(float).T).mean(axis=0) + 1.0)
    expected = composition_expectation(type_mean_counts(reference, types, genes), fractions)
    logs = {"bulk": bulk_l,
            "generated": log_cpm(pseudobulk(generated, genes)),
            "filtered": log_cpm(pseudobulk(filtered, genes)) if filtered.n_obs else np.full(len(genes), np.nan),
            "composition_expected": log_cpm(expected)}
    rows = []
    for name in ("generated", "filtered", "composition_expected"):
        s = score(bulk_l, logs[name]) if np.isfinite(logs[name]).all() else \
            {"pearson_r": None, "spearman_r": None, "var_explained": None, "n_genes": len(genes)}
        rows.append({"profile": name, **s})
    summary = pd.DataFrame(rows, columns=["profile", *SCORE_KEYS])
    table = pd.DataFrame({f"{k}_log2cpm": v for k, v in logs.items()}, index=pd.Index(genes, name=GENE))
    table["residual_generated"] = table["generated_log2cpm"] - table["bulk_log2cpm"]
    table["residual_expected"] = table["composition_expected_log2cpm"] - table["bulk_log2cpm"]
    order = np.argsort(-np.abs(table["residual_generated"].to_numpy()), kind="stable")
    residuals = table.iloc[order[:max(0, int(top_n))]]
    by = summary.set_index("profile")
    metrics: dict[str, Any] = {
        name: {k: (None if pd.isna(by.loc[name, k]) else float(by.loc[name, k]) if k != "n_genes"
                   else int(by.loc[name, k])) for k in SCORE_KEYS}
        for name in by.index}
    gen_ve, exp_ve = metrics["generated"]["var_explained"], metrics["composition_expected"]["var_explained"]
    metrics["var_explained_gain"] = (round(gen_ve - exp_ve, 6) if gen_ve is not None and exp_ve is not None
                                     else None)
    metrics["n_samples"] = int(bulk_group.shape[1])
    metrics["top_residual_genes"] = list(map(str, residuals.index[:10]))
    return {"summary": summary, "residuals": residuals, "log_cpm": table, "metrics": metrics}

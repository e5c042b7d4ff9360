"""QC stage: how well do the generated cells match the reference and the targets?

- :func:`celltype_proportions`: reference vs target vs generated vs filtered proportions.
- :func:`marker_correlation`: the seed's marker correlation (omicverse
  ``bulk2single_plot_correlation``): wilcoxon markers per reference type, per-type mean
  expression of reference and generated cells on the union of those markers, Pearson r for every
  (reference type, generated type) pair.
- :func:`embed`: MDE (pymde, as ``ov.utils.mde``) of a joint PCA of reference and generated cells.
- :func:`knn_typing` / :func:`typing_summary`: kNN typing of generated cells by a classifier fit
  on reference cells (PCA of the reference + k nearest neighbours), beside the reference's own
  leave-one-out accuracy: realism without held-out data.
- :func:`qc_metrics`: one JSON-able dict of the numbers above.
"""

from __future__ import annotations

import json
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE, FRACTION, GROUP, N_CELLS
from b2s.errors import InputError

#: the columns of cell_targets.csv (ESTIMATE_FRACTIONS)
TARGET_COLUMNS = [GROUP, CELLTYPE, FRACTION, N_CELLS]

def qc_log(msg: str) -> None:
    print(f"[qc] {msg}", flush=True)


def celltypes_of(adata: ad.AnnData) -> pd.Series:
    if CELLTYPE not in adata.obs:
        raise InputError(f"AnnData has no obs['{CELLTYPE}'] column (found: "
                         f"{', '.join(map(str, adata.obs.columns)) or 'none'}); pass the "
                         "model_input.h5ad / generated h5ad written by this pipeline")
    return adata.obs[CELLTYPE].astype(str)


def ordered_types(reference: ad.AnnData) -> list[str]:
    col = reference.obs[CELLTYPE]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.astype(str))
        return [str(c) for c in col.cat.categories if str(c) in present]
    return sorted(set(col.astype(str)))


def celltype_proportions(reference: ad.AnnData, targets: pd.DataFrame, generated: ad.AnnData,
                         filtered: ad.AnnData) -> pd.DataFrame:
    """Cell-type counts and fractions of the four cell sets of one group.

    ``targets`` has columns ``celltype, n_cells`` (rows of cell_targets.csv for one group).
    Returns a frame indexed by cell type (reference types first, then any other type) with count
    columns ``n_reference, n_target, n_generated, n_filtered`` and fraction columns
    ``reference, target, generated, filtered`` (each fraction column sums to 1, or is all 0 when
    the set is empty).
    """
    missing = {CELLTYPE, N_CELLS} - set(targets.columns)
    if missing:
        raise InputError(f"cell targets table lacks column(s) {sorted(missing)}; pass the "
                         "cell_targets.csv written by ESTIMATE_FRACTIONS (group,celltype,fraction,n_cells)")
    tgt = targets.assign(**{CELLTYPE: targets[CELLTYPE].astype(str)}).groupby(CELLTYPE)[N_CELLS].sum()
    counts = {
        "reference": celltypes_of(reference).value_counts(),
        "target": tgt,
        "generated": celltypes_of(generated).value_counts(),
        "filtered": celltypes_of(filtered).value_counts(),
    }
    order = ordered_types(reference)
    extra = sorted(set().union(*[set(c.index) for c in counts.values()]) - set(order))
    index = pd.Index(order + extra, name=CELLTYPE)
    out = pd.DataFrame(index=index)
    for name, c in counts.items():
        out[f"n_{name}"] = c.reindex(index).fillna(0).astype(int)
    for name in counts:
        n = out[f"n_{name}"]
        out[name] = n / n.sum() if n.sum() > 0 else 0.0
    return out


def _l1(p: pd.Series, q: pd.Series) -> float:
    return float(np.abs(p.to_numpy(float) - q.to_numpy(float)).sum())


def nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


#: Below this share of cell types told apart (``r_margin > 0``) the QC warns that the generated
#: cells do not separate by type (an undertrained VAE tells few types apart on the bundled data,
#: a trained one all; docs/output.md, "Reading the identity check").
MIN_IDENTITY_RATE = 0.5
#: Below this median own-vs-best-other r margin the types are told apart in name only: a run of
#: the seed's settings on the Hao PBMC reference (mixed MDE) had a margin near 0, well-trained runs
#: have margins of several hundredths (benchmarks/README.md, realism section).
MIN_MEDIAN_MARGIN = 0.01


def vae_identity_of(generated: ad.AnnData) -> dict[str, Any] | None:
    """The VAE's own type separation that GENERATE recorded (``uns['vae_identity']``, see
    :func:`b2s.generate.rates.vae_identity`) as metrics keys, or None when the cells carry none."""
    raw = generated.uns.get("vae_identity") if hasattr(generated, "uns") else None
    try:
        d = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        d = None
    if not isinstance(d, dict) or d.get("told_apart") is None:
        return None
    return {"vae_celltypes_identified": int(d["told_apart"]), "vae_celltypes_assessed": int(d["n_types"]),
            "vae_margin_median": nan_to_none(d.get("median_margin"))}


def identity_summary(corr_summary: pd.DataFrame) -> dict[str, Any]:
    """How many reference types the generated cells reproduce distinctly, plus a warning if few.

    Returns ``n_celltypes_identified`` (``r_margin > 0``), ``n_celltypes_assessed`` (finite
    margin), ``celltype_identity_rate``, ``marker_r_margin_median`` and ``warnings`` (list of
    plain sentences, empty when fine). It warns when fewer than :data:`MIN_IDENTITY_RATE` of the
    types are told apart, or when the median margin is below :data:`MIN_MEDIAN_MARGIN` (types
    "told apart" by a hair are not told apart).
    """
    margin = corr_summary["r_margin"].to_numpy(float) if "r_margin" in corr_summary else np.array([])
    assessed = np.isfinite(margin)
    n_ok, n = int((margin[assessed] > 0).sum()), int(assessed.sum())
    rate = n_ok / n if n else None
    med = float(np.median(margin[assessed])) if n else None
    warnings = []
    if n >= 2 and (rate < MIN_IDENTITY_RATE or med < MIN_MEDIAN_MARGIN):
        warnings.append(
            f"generated cells of different types are not distinguishable by marker expression ({n_ok} of "
            f"{n} types told apart, median margin {med:.4f}, needs >= {MIN_MEDIAN_MARGIN}): the cell types "
            "are mixed (see the MDE plot) and the VAE is likely undertrained; rerun with a higher "
            "--epoch_num and --patience (the loss must be well past its early plateau) and check the "
            "typing accuracy below")
    return {"n_celltypes_identified": n_ok, "n_celltypes_assessed": n,
            "celltype_identity_rate": nan_to_none(rate), "marker_r_margin_median": nan_to_none(med),
            "warnings": warnings}


def qc_metrics(props: pd.DataFrame, corr_summary: pd.DataFrame, params: dict[str, Any],
               filter_summary: dict[str, Any] | None = None,
               corr_summary_unfiltered: pd.DataFrame | None = None,
               typing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary numbers of one group as a JSON-able dict (NaN written as null).

    ``props`` from :func:`celltype_proportions`, ``corr_summary`` from
    :func:`marker_correlation` (on the filtered cells); optional correlation of the unfiltered
    generated cells, the FILTER summary and the kNN typing (:func:`typing_summary`).
    """
    n_gen = int(props["n_generated"].sum())
    n_filt = int(props["n_filtered"].sum())
    r = corr_summary["pearson_r"].to_numpy(float)
    missing = corr_summary.loc[~np.isfinite(r), CELLTYPE].astype(str).tolist()
    by_type = corr_summary.set_index(CELLTYPE)
    per_type = {
        str(t): {"reference": int(row.n_reference), "target": int(row.n_target),
                 "generated": int(row.n_generated), "filtered": int(row.n_filtered),
                 "pearson_r": nan_to_none(by_type["pearson_r"].get(t, np.nan)),
                 "r_margin": nan_to_none(by_type["r_margin"].get(t, np.nan))
                 if "r_margin" in by_type else None}
        for t, row in props.iterrows()}
    identity = identity_summary(corr_summary)
    out: dict[str, Any] = {
        "n_target": int(props["n_target"].sum()),
        "n_generated": n_gen,
        "n_filtered": n_filt,
        "fraction_kept": nan_to_none(n_filt / n_gen) if n_gen else None,
        "n_celltypes_reference": int((props["n_reference"] > 0).sum()),
        "n_celltypes_generated": int((props["n_generated"] > 0).sum()),
        "n_celltypes_filtered": int((props["n_filtered"] > 0).sum()),
        "marker_r_mean": nan_to_none(np.nanmean(r)) if np.isfinite(r).any() else None,
        "marker_r_median": nan_to_none(np.nanmedian(r)) if np.isfinite(r).any() else None,
        "marker_r_min": nan_to_none(np.nanmin(r)) if np.isfinite(r).any() else None,
        "n_markers": int(corr_summary["n_markers"].max()) if len(corr_summary) else 0,
        "celltypes_without_r": missing,
        **{k: v for k, v in identity.items() if k != "warnings"},
        "proportion_l1": {
            "target_vs_generated": round(_l1(props["target"], props["generated"]), 6),
            "target_vs_filtered": round(_l1(props["target"], props["filtered"]), 6),
            "generated_vs_filtered": round(_l1(props["generated"], props["filtered"]), 6),
        },
        "per_celltype": per_type,
    }
    if corr_summary_unfiltered is not None:
        ru = corr_summary_unfiltered["pearson_r"].to_numpy(float)
        out["marker_r_mean_unfiltered"] = (nan_to_none(np.nanmean(ru))
                                           if np.isfinite(ru).any() else None)
    if filter_summary is not None:
        out["filter"] = {k: v for k, v in filter_summary.items() if k != "params"}
    out["warnings"] = list(identity["warnings"])
    if typing is not None:
        out.update({k: v for k, v in typing.items() if k != "warnings"})
        out["warnings"] += typing.get("warnings") or []
    out["params"] = params
    return out


def read_cells(path: str, arg: str, producer: str, need_celltype: bool = True) -> ad.AnnData:
    """Read an h5ad written by an earlier stage, checked; X becomes CSR float32.

    ``arg`` names the command-line option and ``producer`` the stage that writes the file, for
    one-line errors.
    """
    import os

    if not os.path.isfile(path):
        raise InputError(f"{arg} {path} does not exist; pass the file written by {producer}")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # truncated / not HDF5
        raise InputError(f"{arg} {path} is not a readable h5ad file ({type(err).__name__}); "
                         f"rerun {producer}") from None
    if adata.n_vars < 1:
        raise InputError(f"{arg} {path} has no genes; rerun {producer}")
    x = adata.X
    adata.X = (x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))).astype(np.float32)
    if adata.X.nnz and not np.isfinite(adata.X.data).all():
        raise InputError(f"{arg} {path} X contains NaN or infinite values; rerun {producer}")
    if need_celltype and CELLTYPE not in adata.obs:
        raise InputError(f"{arg} {path} has no obs['{CELLTYPE}']; pass the file written by {producer}")
    return adata


def read_target_table(path: str) -> pd.DataFrame:
    """cell_targets.csv as read (``group`` and ``celltype`` as text), its columns checked."""
    import os

    if not os.path.isfile(path):
        raise InputError(f"--targets {path} does not exist; pass the cell_targets.csv written by ESTIMATE_FRACTIONS")
    try:
        df = pd.read_csv(path, dtype={GROUP: str, CELLTYPE: str})
    except Exception as err:
        raise InputError(f"--targets {path} is not a readable CSV ({type(err).__name__}); pass ESTIMATE_FRACTIONS' "
                         "cell_targets.csv") from None
    missing = [c for c in TARGET_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"--targets {path} lacks column(s) {', '.join(missing)} (found: "
                         f"{', '.join(map(str, df.columns))}); it must have group,celltype,fraction,n_cells")
    return df


def group_targets(df: pd.DataFrame, path: str, group: str) -> pd.DataFrame:
    """Rows ``celltype, fraction, n_cells`` of ``group`` in ``df`` (:func:`read_target_table` of ``path``), checked."""
    rows = df[df[GROUP] == group]
    if rows.empty:
        raise InputError(f"--group '{group}' is not in --targets {path} (groups: "
                         f"{', '.join(pd.unique(df[GROUP]).astype(str))}); pass one of them")
    n = pd.to_numeric(rows[N_CELLS], errors="coerce")
    if n.isna().any() or (n < 0).any() or (n != n.round()).any():
        raise InputError(f"--targets {path} has non-integer or negative n_cells for group '{group}'; "
                         "n_cells must be whole numbers >= 0")
    if rows[CELLTYPE].duplicated().any():
        dup = rows.loc[rows[CELLTYPE].duplicated(), CELLTYPE].tolist()
        raise InputError(f"--targets {path} lists cell type(s) {dup} twice for group '{group}'; keep one row per "
                         "group and cell type")
    return rows.assign(**{N_CELLS: n.astype(int)}).drop(columns=GROUP).reset_index(drop=True)


def read_targets(path: str, group: str) -> pd.DataFrame:
    """Rows ``celltype, fraction, n_cells`` of ``group`` from cell_targets.csv, checked (GENERATE and QC)."""
    return group_targets(read_target_table(path), path, group)


def read_all_targets(path: str) -> dict[str, pd.DataFrame]:
    """:func:`read_targets` of every group of cell_targets.csv, in file order (GENERATE's cohort)."""
    df = read_target_table(path)
    return {str(g): group_targets(df, path, str(g)) for g in df[GROUP].dropna().unique()}

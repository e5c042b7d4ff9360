"""Bulk-informed generation: per-type, per-gene fold changes of a group's expression, between groups or vs the reference.

In Bulk2Single the bulk sets only how many cells of each type are made; the cells are reference
cells re-encoded, so two groups with the same composition get the same cells. Here each group's
bulk is compared with what its composition predicts and the difference is handed to the cell
types that make the gene (``--bulk_shift``):

1. Expectation: ``E_g = sum_t f_t m_tg`` (fractions f, reference mean count per cell m), as CPM
   over the genes shared with the bulk; ``s_tg = f_t m_tg / E_g`` is type t's share of gene g.
2. Composition refit: an error in the fractions moves every gene in proportion to the types'
   shares (``b_g / E_g - 1 = sum_t s_tg gamma_t`` exactly), which is not expression. ``gamma``
   is fitted by least squares over the expressed genes (3 rounds, genes off by > 3 MAD left out,
   so a few dozen truly changed genes do not pull it) and the fractions are corrected to
   ``f_t (1 + gamma_t)`` before the ratios are taken.
3. Per gene, the log2 ratio of bulk to expectation (pseudocount 1 CPM), mean over the group's
   samples, with a standard error from the samples (variance moderated toward the median over
   genes, 4 prior degrees of freedom, as limma), the Poisson error of the bulk counts and the
   error of the expectation (the per-type means come from finitely many reference cells: their
   cell-to-cell variance / n); shrunk to 0 unless ``|r| > z se`` (z = 2): no evidence, no shift.
   Hard rather than soft thresholding (``sign(r) max(|r| - z se, 0)``, ``shrink="soft"``): on the
   perturbation benchmark soft kept much less of the true fold changes of the perturbed genes
   for the same share of shifted pairs in unperturbed groups (benchmarks/README.md,
   "Bulk-informed generation").
4. Allocation to types, where the type makes the gene (``m_tg > 0``; genes off stay off):
   ``allocate``: every type gets the gene's ratio (each gene's bulk counts split across types in
   proportion to ``f_t m_tg``: the expectation BayesPrism's sampler converges to);
   ``weighted``: the least-norm split of the change, ``1 + x_t`` with ``x_t = s_t d / sum s^2``
   (``d`` = ratio - 1), which puts the change on the types that dominate the gene.

Fold changes are capped to +-``max_lfc`` (log2). Vectorised over genes and types; deterministic.

``contrast`` (the default with >= 2 groups, :func:`contrast_model` + :func:`contrast_shifts`):
steps 1-3 per sample (each sample's own refitted fractions), then each group's mean log2 ratio
minus the cohort's (median of the groups; the mean of two; or ``--reference_group``): a factor
every sample shares with the reference (platform, gene length) cancels. The contrast is split
over the types as ``weighted`` does, onto identifiable types only (>= 5 % of the group, see
:data:`MIN_SHARE`, :data:`MAX_MDE`); the others are reported and left unshifted. Shifts vs the
reference (``allocate``, ``weighted``) stay opt-in: with a per-gene platform bias shared by all
samples, ``contrast`` leaves the cells of unperturbed groups as close to the reference as no
shift does, where ``weighted`` writes the bias into every cell, and it recovers the perturbed
types' changes best (benchmarks/README.md, "Between-group shifts"). Its limit is attribution,
not noise: a gene's contrast is one number per group, and which of the types sharing the gene
made it is barely in a few replicates; the alternative splits tried were each worse on some view,
so the least-norm split stays (benchmarks/README.md, "Information ceiling").
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from b2s._constants import CELLTYPE, GENE, GROUP, SAMPLE
from b2s.errors import InputError
from b2s.groupnames import group_id
from b2s.qc.bulk import cpm

SHIFT_CHOICES = ("none", "allocate", "weighted", "contrast")
#: GENERATE's mode with >= 2 groups (``--bulk_shift auto``; one group: none). Shifts against the
#: reference (``weighted``, ``allocate``) also absorb what every sample shares with the reference
#: (platform, gene length) and write it into every cell; contrasts between groups cancel it
#: (benchmarks/README.md, "Between-group shifts").
DEFAULT_SHIFT = "contrast"
PSEUDO_CPM = 1.0
MIN_CPM_REFIT = 5.0
PRIOR_DF = 4.0


def _type_mean_and_variance(reference: ad.AnnData, types: list[str], genes: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Types x genes: mean count per cell, and the variance of that mean (cell variance / n; sparse sums)."""
    from b2s.qc.bulk import cell_counts, type_indicator

    ind = type_indicator(reference, types)
    x = cell_counts(reference)[:, pd.Index(reference.var_names).get_indexer(genes)]
    n = np.asarray(ind.sum(axis=1)).ravel()
    mean = np.asarray((ind @ x).todense()) / np.maximum(n, 1)[:, None]
    sq = np.asarray((ind @ x.multiply(x)).todense()) / np.maximum(n, 1)[:, None]
    var_cells = np.clip(sq - mean ** 2, 0.0, None) * (n / np.maximum(n - 1, 1))[:, None]
    return mean, (var_cells + mean) / np.maximum(n, 1)[:, None]  # + mean: a Poisson floor for rare genes


def refit_fractions(bulk_cpm: np.ndarray, profiles: np.ndarray, fractions: np.ndarray,
                    rounds: int = 3) -> np.ndarray:
    """Fractions corrected for what composition explains of ``bulk_cpm`` (genes; step 2 of the module docstring)."""
    f = np.clip(np.asarray(fractions, float), 0.0, None)
    on = f > 0
    if on.sum() < 1:
        return f
    w = f[:, None] * profiles
    E = w.sum(axis=0)
    e = cpm(E)
    use = e >= MIN_CPM_REFIT
    if use.sum() <= on.sum():
        return f / f.sum()
    S = (w[on][:, use] / E[use]).T  # genes x types in use
    d = bulk_cpm[use] / e[use] - 1.0
    keep = np.ones(len(d), dtype=bool)
    gamma = np.zeros(int(on.sum()))
    for _ in range(rounds):
        gamma = np.linalg.lstsq(S[keep], d[keep], rcond=None)[0]
        res = d - S @ gamma
        mad = 1.4826 * np.median(np.abs(res[keep] - np.median(res[keep])))
        if not np.isfinite(mad) or mad == 0:
            break
        keep = np.abs(res) <= 3.0 * mad
    out = f.copy()
    out[on] = f[on] * np.clip(1.0 + gamma, 0.0, None)
    return out / out.sum() if out.sum() > 0 else f / f.sum()


def estimate_shifts(bulk_group: pd.DataFrame, reference: ad.AnnData, types: list[str],
                    fractions: np.ndarray, mode: str = "allocate", z: float = 2.0,
                    max_lfc: float = 4.0, refit: bool = True, shrink: str = "hard") -> dict[str, Any]:
    """Per-type log2 fold changes of one group vs the reference (see the module docstring).

    Args:
        bulk_group: raw counts, genes x the group's samples.
        reference: the model input (``layers['counts']`` or X, ``obs['celltype']``).
        types: cell types, the order of ``fractions`` and of the result's rows.
        fractions: the group's cell fractions.
        mode: ``allocate`` or ``weighted``.
        z: soft threshold in standard errors.
        max_lfc: cap of |log2 fold change|.
        refit: correct the fractions first (step 2).
        shrink: ``hard`` (keep ratios past ``z`` standard errors) or ``soft`` (subtract ``z se``).

    Returns:
        ``lfc`` (frame types x reference genes, log2; 0 for genes not in the bulk), ``table``
        (long frame of the non-zero shifts: celltype, gene, log2fc, gene_log2ratio, se, share,
        sorted by |log2fc|), ``fractions_refit`` (dict) and ``summary`` (dict: per type the
        number of genes shifted up and down).
    """
    if mode not in ("allocate", "weighted"):
        raise InputError(f"--bulk_shift {mode} is not one of allocate, weighted (shifts vs the reference); "
                         "pass --bulk_shift weighted, or use contrast_shifts")
    if shrink not in ("hard", "soft"):
        raise ValueError(f"shrink must be hard or soft, not {shrink!r}")
    ref_genes = pd.Index(reference.var_names.astype(str))
    b = bulk_group.copy()
    b.index = b.index.astype(str)
    genes = ref_genes.intersection(b.index, sort=False)
    if len(genes) == 0:
        raise InputError("the model input shares no gene with the bulk matrix; pass bulk_counts.tsv "
                         "and model_input.h5ad of the same run")
    counts = b.loc[genes].to_numpy(np.float64).T  # samples x genes
    prof, prof_var = _type_mean_and_variance(reference, types, genes)
    f = np.clip(np.asarray(fractions, float), 0.0, None)
    f = f / f.sum() if f.sum() > 0 else f
    bulk_cpm = cpm(counts)  # samples x genes
    f_fit = refit_fractions(bulk_cpm.mean(axis=0), prof, f) if refit else f
    w = f_fit[:, None] * prof
    E = w.sum(axis=0)
    e = cpm(E)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(E > 0, w / np.where(E > 0, E, 1.0), 0.0)  # types x genes
    ratios = np.log2((bulk_cpm + PSEUDO_CPM) / (e + PSEUDO_CPM))
    r = ratios.mean(axis=0)
    n_s = ratios.shape[0]
    ln2sq = np.log(2.0) ** 2
    # Poisson error of the bulk counts, and the error of the expectation: the per-type means come
    # from a finite number of reference cells (their cell-to-cell variance / n)
    var = 1.0 / ((counts.sum(axis=0) + 1.0) * ln2sq)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(E > 0, (f_fit[:, None] ** 2 * prof_var).sum(axis=0) / np.where(E > 0, E, 1.0) ** 2, 0.0)
    var += rel / ln2sq
    if n_s >= 2:
        s2 = ratios.var(axis=0, ddof=1)
        s0 = float(np.median(s2))
        var += (PRIOR_DF * s0 + (n_s - 1) * s2) / (PRIOR_DF + n_s - 1) / n_s
    se = np.sqrt(var)
    if shrink == "soft":
        shrunk = np.sign(r) * np.clip(np.abs(r) - z * se, 0.0, max_lfc)
    else:  # hard: a gene past the threshold keeps its whole ratio
        shrunk = np.where(np.abs(r) > z * se, np.clip(r, -max_lfc, max_lfc), 0.0)
    made = prof > 0
    if mode == "allocate":
        lfc = np.where(made & (f_fit[:, None] > 0), shrunk[None, :], 0.0)
    else:
        d = np.exp2(shrunk) - 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.where(made, share * d[None, :] / np.maximum((share ** 2).sum(axis=0), 1e-300)[None, :], 0.0)
        lfc = np.log2(np.clip(1.0 + x, 2.0 ** -max_lfc, 2.0 ** max_lfc))
        lfc[:, shrunk == 0] = 0.0
    lfc_df = pd.DataFrame(0.0, index=pd.Index(types, name=CELLTYPE), columns=ref_genes)
    lfc_df.loc[:, genes] = lfc
    ti, gi = np.nonzero(lfc)
    table = pd.DataFrame({CELLTYPE: np.asarray(types, dtype=object)[ti], GENE: genes.to_numpy()[gi],
                          "log2fc": lfc[ti, gi], "gene_log2ratio": r[gi], "se": se[gi],
                          "share": share[ti, gi]})
    table = table.iloc[np.argsort(-np.abs(table["log2fc"].to_numpy()), kind="stable")].reset_index(drop=True)
    summary = {t: {"n_up": int((lfc[i] > 0).sum()), "n_down": int((lfc[i] < 0).sum())}
               for i, t in enumerate(types)}
    return {"lfc": lfc_df, "table": table, "summary": summary,
            "fractions_refit": {t: round(float(v), 6) for t, v in zip(types, f_fit)}}


#: Types under this share of a group's cells are not identifiable from its bulk: left unshifted.
MIN_SHARE = 0.05
#: A type is identifiable in a group when the smallest detectable change of its median gene (z
#: standard errors of the gene's contrast, divided by the type's share of the gene) is at most
#: this |log2 FC| (a 4-fold change).
MAX_MDE = 2.0


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values."""
    p = np.asarray(p, float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    adj = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(adj, 0.0, 1.0)
    return out


def contrast_model(bulk: pd.DataFrame, groups: pd.DataFrame, reference: ad.AnnData, types: list[str],
                   group_fractions: dict[str, np.ndarray], reference_group: str | None = None,
                   refit: bool = True) -> dict[str, Any]:
    """Per-gene log2 contrast of every group against the cohort (``--bulk_shift contrast``), once per cohort.

    Per sample: the group's fractions refitted to the sample's own bulk (:func:`refit_fractions`,
    so replicate composition is taken out sample by sample), the expectation ``E_s = f_s m`` and the
    log2 ratio ``r_s = log2((bulk CPM + 1) / (E_s CPM + 1))``. A per-gene factor shared by every
    sample (platform, gene length, the reference's own bias) adds the same to every ``r_s`` and
    cancels in the contrast ``d_k = mean_k(r) - centre``: the centre is ``reference_group``'s mean,
    the mean of the two groups, or with >= 3 groups the median of the group means (one changed
    group does not move it); each ``d_k`` is then centred on its median expressed gene (the CPM
    closure: a group's changed genes move all others' CPM). Variance: the pooled within-group variance of ``r`` (moderated toward
    the median over genes, :data:`PRIOR_DF` prior degrees of freedom; without replicates the
    typical between-group variance) / n plus the Poisson error of the counts, for the group and
    its centre.

    Args:
        bulk: raw counts, genes x samples (every sample of ``groups``).
        groups: columns ``group, sample``.
        reference: the model input (``layers['counts']`` or X, ``obs['celltype']``).
        types: cell types, the order of the fraction arrays.
        group_fractions: group -> cell fractions (``types`` order).
        reference_group: a group to compare against instead of the cohort.
        refit: False: every sample keeps its group's fractions (no per-sample refit; benchmark only).

    Returns:
        dict with ``genes``, ``types``, ``groups``, ``d`` and ``se`` (groups x genes, log2),
        ``fractions`` (groups x types, mean refitted), ``profiles`` (types x genes), ``expected_cpm``
        (groups x genes), ``centre`` (text) and per sample ``sample_group`` (group index),
        ``sample_fractions`` (samples x types, refitted), ``sample_log2ratio`` (samples x genes) and
        ``sample_var`` (genes: the moderated within-group variance of a sample's log2 ratio).
    """
    g = groups.astype({GROUP: str, SAMPLE: str})
    names = list(pd.unique(g[GROUP]))
    reference_group = group_id(reference_group, names)
    if len(names) < 2:
        raise InputError("--bulk_shift contrast needs >= 2 bulk groups in the samplesheet (found "
                         f"{len(names)}); add groups or pass --bulk_shift none|weighted")
    if reference_group is not None and str(reference_group) not in names:
        raise InputError(f"--reference_group '{reference_group}' is not a group of the samplesheet "
                         f"(groups: {', '.join(names)}); pass one of them")
    missing = [n for n in names if n not in group_fractions]
    if missing:
        raise InputError(f"no cell fractions for group(s) {', '.join(missing)}; pass cell_targets.csv of the same run")
    ref_genes = pd.Index(reference.var_names.astype(str))
    b = bulk.copy()
    b.index, b.columns = b.index.astype(str), b.columns.astype(str)
    genes = ref_genes.intersection(b.index, sort=False)
    if len(genes) == 0:
        raise InputError("the model input shares no gene with the bulk matrix; pass bulk_counts.tsv "
                         "and model_input.h5ad of the same run")
    samples = g[SAMPLE].tolist()
    absent = [s for s in samples if s not in set(b.columns)]
    if absent:
        raise InputError(f"groups.csv sample(s) {', '.join(absent)} are not columns of the bulk matrix; "
                         "pass bulk_counts.tsv and groups.csv from the same PREPARE_INPUTS run")
    k_of = np.array([names.index(x) for x in g[GROUP]])
    counts = b.loc[genes, samples].to_numpy(np.float64).T  # samples x genes
    prof, _ = _type_mean_and_variance(reference, types, genes)
    bulk_cpm = cpm(counts)
    f_s = np.vstack([refit_fractions(bulk_cpm[i], prof, _norm(group_fractions[names[k]])) if refit
                     else _norm(group_fractions[names[k]]) for i, k in enumerate(k_of)])
    e = cpm(f_s @ prof)
    r = np.log2((bulk_cpm + PSEUDO_CPM) / (e + PSEUDO_CPM))
    K, n_k = len(names), np.bincount(k_of, minlength=len(names)).astype(float)
    rbar = np.vstack([r[k_of == k].mean(axis=0) for k in range(K)])
    df = len(samples) - K
    ln2sq = np.log(2.0) ** 2
    if df > 0:
        s2 = ((r - rbar[k_of]) ** 2).sum(axis=0) / df
        s2 = (PRIOR_DF * float(np.median(s2)) + df * s2) / (PRIOR_DF + df)
    else:  # no replicates: the typical gene's spread between groups
        s2 = np.full(len(genes), float(np.median(rbar.var(axis=0, ddof=1))))
    tot = np.vstack([counts[k_of == k].sum(axis=0) for k in range(K)])
    v = s2[None, :] / n_k[:, None] + 1.0 / ((tot + 1.0) * ln2sq)
    if reference_group is not None:
        j = names.index(str(reference_group))
        d, var = rbar - rbar[j], v + v[j]
        var[j] = np.inf  # the reference group itself: no contrast
        centre = f"reference group {reference_group}"
    elif K == 2:
        d = rbar - rbar.mean(axis=0)
        var = np.broadcast_to(v.sum(axis=0) / 4.0, v.shape).copy()
        centre = "mean of the 2 groups"
    else:
        d = rbar - np.median(rbar, axis=0)
        var = v + np.pi / 2 * (v.sum(axis=0) - v) / (K - 1) ** 2
        centre = f"median of the {K} groups"
    fr = np.vstack([f_s[k_of == k].mean(axis=0) for k in range(K)])
    # CPM closure: a group's changed genes move every other gene's CPM a little; the median
    # expressed gene is taken as unchanged (as TMM does)
    expressed = (cpm(fr @ prof) >= MIN_CPM_REFIT).all(axis=0)
    if expressed.any():
        d = d - np.median(d[:, expressed], axis=1, keepdims=True)
    return {"genes": genes, "ref_genes": ref_genes, "types": list(types), "groups": names, "d": d,
            "se": np.sqrt(var), "fractions": fr / fr.sum(axis=1, keepdims=True), "profiles": prof,
            "expected_cpm": cpm(fr @ prof), "centre": centre, "sample_group": k_of, "sample_fractions": f_s,
            "sample_log2ratio": r, "sample_var": s2}


def _norm(f: np.ndarray) -> np.ndarray:
    f = np.clip(np.asarray(f, float), 0.0, None)
    return f / f.sum() if f.sum() > 0 else f


def contrast_shifts(model: dict[str, Any], group: str, z: float = 2.0, max_lfc: float = 4.0,
                    min_share: float = MIN_SHARE, max_mde: float = MAX_MDE, fdr: float | None = None) -> dict[str, Any]:
    """Per-type log2 fold changes of ``group`` against the cohort from :func:`contrast_model`.

    A gene's contrast ``d`` is kept where ``|d| > z se`` (no evidence, no shift; per gene, without
    multiple-testing control: ``fdr`` keeps ``padj < fdr`` instead, which on the perturbation
    benchmark shifts no unperturbed pair but loses part of the perturbed types' changes,
    benchmarks/README.md "Information ceiling") and split over
    the types with the least-norm allocation of ``weighted`` (``1 + x_t``, ``x_t = s_t (2^d - 1) /
    sum s^2``; ``s``: the group's type shares of the gene), onto identifiable types only: a type
    holding < ``min_share`` of the group's cells, or whose median gene's smallest detectable change
    ``log2(1 + (2^(z se) - 1) / s_t)`` exceeds ``max_mde``, is reported as not identifiable and
    left unshifted. Standard error of a type's log2 FC: the delta method on ``se``; p values are
    two-sided normal, BH-adjusted over the group's genes.

    Returns:
        ``lfc`` (types x reference genes), ``table`` (the shifts: celltype, gene, log2fc, se, z,
        pvalue, padj, gene_log2contrast, share; by |log2fc|), ``summary`` (per type: share,
        identifiable, reason, median detectable |log2 FC|, n_up, n_down), ``fractions_refit`` and
        ``centre``.
    """
    from scipy.stats import norm

    k = model["groups"].index(str(group))
    types, genes, prof = model["types"], model["genes"], model["profiles"]
    d, se, f = model["d"][k], model["se"][k], model["fractions"][k]
    w = f[:, None] * prof
    E = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(E > 0, w / np.where(E > 0, E, 1.0), 0.0)
        zs = np.where(np.isfinite(se) & (se > 0), d / se, 0.0)
        mde = np.log2(1.0 + (np.exp2(np.minimum(z * se, 30.0)) - 1.0)[None, :] / share)
    expressed = model["expected_cpm"][k] >= MIN_CPM_REFIT
    summary: dict[str, dict[str, Any]] = {}
    ident = np.zeros(len(types), dtype=bool)
    for i, t in enumerate(types):
        on = expressed & (prof[i] > 0)
        med = float(np.median(mde[i, on])) if on.any() else float("inf")
        if f[i] < min_share:
            reason = f"{f[i]:.1%} of the group's cells (< {min_share:.0%})"
        elif not med <= max_mde:
            reason = f"median detectable |log2 FC| {med:.2f} > {max_mde:g}"
        else:
            reason = ""
            ident[i] = True
        summary[t] = {"share": round(float(f[i]), 4), "identifiable": bool(ident[i]), "reason": reason,
                      "median_detectable_log2fc": round(med, 3) if np.isfinite(med) else None}
    p = 2.0 * norm.sf(np.abs(zs))
    padj = _bh(np.where(np.isfinite(se), p, 1.0))
    kept = np.isfinite(se) & ((np.abs(d) > z * se) if fdr is None else (padj < fdr))
    shrunk = np.where(kept, np.clip(d, -max_lfc, max_lfc), 0.0)
    a = share / np.maximum((share ** 2).sum(axis=0), 1e-300)[None, :]
    x = a * (np.exp2(shrunk) - 1.0)[None, :]
    lfc = np.log2(np.clip(1.0 + x, 2.0 ** -max_lfc, 2.0 ** max_lfc))
    lfc[~(ident[:, None] & (prof > 0) & kept[None, :])] = 0.0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        slope = a * np.exp2(shrunk)[None, :] / np.maximum(1.0 + x, 2.0 ** -max_lfc)
    lfc_se = np.abs(slope) * se[None, :]
    lfc_df = pd.DataFrame(0.0, index=pd.Index(types, name=CELLTYPE), columns=model["ref_genes"])
    lfc_df.loc[:, genes] = lfc
    ti, gi = np.nonzero(lfc)
    table = pd.DataFrame({CELLTYPE: np.asarray(types, dtype=object)[ti], GENE: genes.to_numpy()[gi],
                          "log2fc": lfc[ti, gi], "se": lfc_se[ti, gi], "z": zs[gi], "pvalue": p[gi],
                          "padj": padj[gi], "gene_log2contrast": d[gi], "share": share[ti, gi]})
    table = table.iloc[np.argsort(-np.abs(table["log2fc"].to_numpy()), kind="stable")].reset_index(drop=True)
    for i, t in enumerate(types):
        summary[t].update(n_up=int((lfc[i] > 0).sum()), n_down=int((lfc[i] < 0).sum()))
    return {"lfc": lfc_df, "table": table, "summary": summary, "centre": model["centre"],
            "fractions_refit": {t: round(float(v), 6) for t, v in zip(types, f)}}

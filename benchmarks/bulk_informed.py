#!/usr/bin/env python3
"""Bulk-informed generation with known truth: are a group's own expression changes carried into its cells?

    .venv/bin/python benchmarks/bulk_informed.py --quick          # 1 split, 10 epochs (~10 min on 2 shared cores)
    .venv/bin/python benchmarks/bulk_informed.py                  # splits 0,1,2, 30 epochs
    .venv/bin/python benchmarks/bulk_informed.py --shifts_only   # shrinkage variants, shifts alone (~1 min)
    .venv/bin/python benchmarks/bulk_informed.py --contrast --epochs 5   # between-group shifts (issue #25)
    .venv/bin/python benchmarks/bulk_informed.py --contrast --gen_sigma -1 --oracle   # + information ceiling
    # --contrast options: --candidates NAME:key=value;...  --samples_per_group N  --cells_per_sample N
    # options: --splits 0,1,2 --epochs 30 --modes none,allocate,weighted --omicverse --out FILE.json

Data: the Hao et al. PBMC counts (benchmarks/realdata.py, 11,180 genes), split per seed into a
reference half and a held-out half, four pseudo-bulk groups of 3 samples summed from held-out
cells (realdata.make_pseudobulks). In the ``tcell`` group only, before summing, the held-out cells
of two types (``T cells CD4 conv``, 40 % of the group; ``Tregs``, 25 %) get known fold changes:
per type 40 genes, 20 up and 20 down, |log2 FC| uniform in [1, 2], drawn from genes expressed in
the type (mean >= 3 counts per 10k in the reference cells of the type) that are not among its
200 top markers (largest log fold change vs the other types) nor perturbed in the other type;
plus 200 control genes drawn the same way and left alone. The other three groups are
unperturbed. Everything downstream is the pipeline's own stage code: fractions
(``b2s.fractions.estimate``, default method, estimated from the perturbed bulk), model input
(``b2s.preprocess.model_input``), one training run (``b2s.model.train.train_vae``, few epochs: the
per-type calibration of the count sampler makes the per-type means independent of how far
training went), then ``b2s.generate.cells.generate_cells`` per group and ``--bulk_shift`` mode with the
shifts of ``b2s.generate.bulkshift.estimate_shifts`` from that group's bulk (``scale_size`` 4 instead of the
pipeline's 2: twice the cells, so the sampling noise of the measured fold changes is small).

Metrics, per perturbed type (perturbed group) and per mode; recovered log2 FC of a gene =
log2((mean CP10k of the generated cells of the type + 0.1) / (same of the reference cells of the
type + 0.1)):

- ``r``: Pearson r of recovered vs true log2 FC over the type's 40 perturbed + the 200 control genes;
- ``up`` / ``down``: median recovered log2 FC of the up / down genes (true medians beside them);
- ``ctrl``: median |recovered log2 FC| of the control genes;
- ``false``: unperturbed groups, median |recovered log2 FC| over every type (with >= 20 generated
  cells) on all 280 benchmark genes; ``n_shift``: mean number of (type, gene) shifts per
  unperturbed group;
- realism on the unperturbed groups (``b2s.qc.metrics``): kNN typing accuracy, marker r, types told apart.

``--contrast`` (issue #25, :func:`contrast_grid`): one perturbed group (four types, one per share
bin), replicate concentration x a per-gene platform bias shared by every sample, ``contrast`` vs
``weighted`` vs ``none`` vs BayesPrism's expectation (``--bayesprism``: the PyPI package itself),
and the coverage of the composition intervals; benchmarks/README.md "Between-group shifts".
``--oracle`` adds estimators that know what the bulk cannot tell (the noise-free bulk; the type
that changed each gene) and ``--candidates`` alternative estimators: benchmarks/README.md
"Information ceiling".

``--omicverse`` adds omicverse 2.3.2's generation (``b2s.engines.omicverse.generate_cells``,
the same weights): it ignores the bulk, so it should score ~0. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "bin")]

PERTURBED_GROUP = "tcell"
PERTURBED_TYPES = ("T cells CD4 conv", "Tregs")
N_UP = N_DOWN = 20
N_CONTROL = 200
TOP_MARKERS = 200
MIN_CP10K = 3.0
#: cells generated per target cell: more cells, less sampling noise in the recovered fold changes
SCALE_SIZE = 4
PSEUDO = 0.1


def cp10k_means(x: sp.csr_matrix, lib: np.ndarray, labels: np.ndarray, types: list[str]) -> np.ndarray:
    """Types x genes mean of counts / library * 1e4."""
    codes = pd.Categorical(labels, categories=types).codes
    ok = codes >= 0
    ind = sp.csr_matrix((np.ones(int(ok.sum())), (codes[ok], np.flatnonzero(ok))), shape=(len(types), len(labels)))
    scale = 1e4 / np.maximum(lib, 1.0)
    sums = np.asarray((ind @ sp.diags(scale) @ sp.csr_matrix(x, dtype=np.float64)).todense())
    return sums / np.maximum(np.asarray(ind.sum(axis=1)).ravel(), 1)[:, None]


def choose_genes(ref_means: np.ndarray, types: list[str], rng: np.random.Generator,
                 perturbed: tuple[str, ...] = PERTURBED_TYPES) -> dict[str, Any]:
    """Perturbed genes (with true log2 FC) per perturbed type, and the control genes (gene positions)."""
    taken: set[int] = set()
    truth: dict[str, dict[int, float]] = {}
    logm = np.log2(ref_means + PSEUDO)
    for t in perturbed:
        i = types.index(t)
        others = np.delete(logm, i, axis=0).max(axis=0)
        markers = set(np.argsort(-(logm[i] - others), kind="stable")[:TOP_MARKERS])
        cand = [g for g in np.flatnonzero(ref_means[i] >= MIN_CP10K) if g not in markers and g not in taken]
        pick = rng.choice(cand, size=N_UP + N_DOWN, replace=False)
        mag = rng.uniform(1.0, 2.0, size=len(pick))
        sign = np.r_[np.ones(N_UP), -np.ones(N_DOWN)]
        truth[t] = {int(g): float(s * m) for g, s, m in zip(pick, sign, mag)}
        taken |= set(map(int, pick))
    # controls: expressed in the first two perturbed types (the large ones)
    expressed = np.flatnonzero((ref_means[[types.index(t) for t in perturbed[:2]]] >= MIN_CP10K).all(axis=0))
    cand = [g for g in expressed if g not in taken]
    controls = np.sort(rng.choice(cand, size=min(N_CONTROL, len(cand)), replace=False)).astype(int)
    return {"truth": truth, "controls": controls}


def perturb(heldout, truth: dict[str, dict[int, float]]):
    """A copy of the held-out cells whose counts of the perturbed types are scaled by the true fold changes."""
    labels = heldout.obs["celltype"].astype(str).to_numpy()
    names = list(truth)
    code = pd.Categorical(labels, categories=names).codes  # -1: not perturbed
    fac = np.ones((len(names) + 1, heldout.n_vars))  # last row: the unperturbed types
    for i, t in enumerate(names):
        for g, lfc in truth[t].items():
            fac[i, g] = 2.0 ** lfc
    x = sp.coo_matrix(heldout.X, dtype=np.float64)
    x.data = x.data * fac[np.where(code[x.row] >= 0, code[x.row], len(names)), x.col]
    out = heldout.copy()
    out.X = sp.csr_matrix(x, dtype=np.float32)  # realdata.make_pseudobulks rounds the sums
    return out


def prepare(split: int, concentration: float = 200.0, bias_sigma: float = 0.0,
            perturbed: tuple[str, ...] = PERTURBED_TYPES, cells_per_sample: int = 400,
            samples_per_group: int = 3) -> dict[str, Any]:
    """Reference, bulk with the perturbation in one group, truth, fractions, model input.

    ``concentration``: Dirichlet concentration of the replicates' fractions; ``bias_sigma``: a
    per-gene factor, log-normal, shared by every sample (a platform difference from the reference).
    ``clean_bulk``: the noise-free bulk of the same samples (for the oracles of ``--oracle``): each
    sample's true cell counts per type times the held-out cells' mean counts of the type (with the
    perturbation in the perturbed group), times the same platform factor; no cell sampling, no rounding."""
    import b2s.fractions.estimate as fractions
    import b2s.preprocess as preprocess
    import realdata

    adata = realdata.load_hao()
    ref, held = realdata.split_reference(adata, seed=split)
    types = list(adata.obs["celltype"].cat.categories)
    design = realdata.pseudobulk_design(types)
    ref_lib = np.asarray(ref.X.sum(axis=1)).ravel()
    ref_means = cp10k_means(ref.X, ref_lib, ref.obs["celltype"].astype(str).to_numpy(), types)
    genes = choose_genes(ref_means, types, np.random.default_rng(1000 + split), perturbed)
    held_p = perturb(held, genes["truth"])
    plain = {g: d for g, d in design.items() if g != PERTURBED_GROUP}
    size = {"samples_per_group": samples_per_group, "cells_per_sample": cells_per_sample}
    b0, t0, s0 = realdata.make_pseudobulks(held, plain, seed=split, concentration=concentration, **size)
    b1, t1, s1 = realdata.make_pseudobulks(held_p, {PERTURBED_GROUP: design[PERTURBED_GROUP]}, seed=split + 500,
                                           concentration=concentration, **size)
    bulk = pd.concat([b1, b0], axis=1)
    # noise-free bulk: true cell counts x the held-out type means (perturbed ones in the perturbed group)
    held_labels = held.obs["celltype"].astype(str).to_numpy()
    mu = {PERTURBED_GROUP: counts_means(held_p.X, held_labels, types)}
    mu_plain = counts_means(held.X, held_labels, types)
    clean = pd.concat([t1, t0])[types] * cells_per_sample  # samples x types, true cell counts
    sample_group = pd.concat([s1, s0]).set_index("sample")["group"]
    clean_bulk = pd.DataFrame(np.column_stack([clean.loc[s].to_numpy() @ mu.get(sample_group[s], mu_plain)
                                               for s in bulk.columns]), index=bulk.index, columns=bulk.columns)
    if bias_sigma > 0:
        bias = np.random.default_rng(2000 + split).lognormal(0.0, bias_sigma, bulk.shape[0])
        bulk = pd.DataFrame(np.rint(bulk.to_numpy(np.float64) * bias[:, None]).astype(np.int64),
                            index=bulk.index, columns=bulk.columns)
        clean_bulk = clean_bulk * bias[:, None]
    sheet = pd.concat([s1, s0], ignore_index=True)
    true_fractions = pd.concat([t1, t0])
    sf = fractions.estimate_sample_fractions(bulk, ref, seed=split)
    gf = fractions.group_fractions(sf, sheet)
    targets = fractions.cell_targets(bulk, sheet, ref, gf, scale_size=SCALE_SIZE)
    mi = preprocess.model_input(ref, bulk.index)
    pos = pd.Index(mi.var_names).get_indexer(adata.var_names)
    # gene positions above are in adata's gene order: map them to the model input's
    to_mi = {int(g): int(pos[g]) for g in range(adata.n_vars) if pos[g] >= 0}
    truth = {t: {to_mi[g]: v for g, v in d.items() if g in to_mi} for t, d in genes["truth"].items()}
    controls = np.array([to_mi[g] for g in genes["controls"] if g in to_mi])
    mi_means = cp10k_means(mi.layers["counts"], mi.obs["total_counts"].to_numpy(), mi.obs["celltype"].astype(str).to_numpy(), types)
    return {"mi": mi, "bulk": bulk, "clean_bulk": clean_bulk, "sheet": sheet, "targets": targets, "types": types,
            "truth": truth, "controls": controls, "ref_means": mi_means,
            "true_fractions": true_fractions, "sample_fractions": sf}


def counts_means(x, labels: np.ndarray, types: list[str]) -> np.ndarray:
    """Types x genes mean raw count per cell."""
    return cp10k_means(x, np.full(len(labels), 1e4), labels, types)


def recovered_lfc(gen, data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Types x genes recovered log2 FC of generated cells vs the reference cells, and generated cells per type."""
    types = data["types"]
    labels = gen.obs["celltype"].astype(str).to_numpy()
    if "counts" in gen.layers:
        x, lib = gen.layers["counts"], gen.obs["total_counts"].to_numpy()
        means = cp10k_means(x, lib, labels, types)
    else:  # omicverse: X = decoder output (log1p CP10k)
        xe = sp.csr_matrix(gen.X, dtype=np.float64, copy=True)
        np.expm1(xe.data, out=xe.data)
        means = cp10k_means(xe, np.full(gen.n_obs, 1e4), labels, types)
    n = pd.Series(labels).value_counts().reindex(types).fillna(0).to_numpy(int)
    return np.log2(means + PSEUDO) - np.log2(data["ref_means"] + PSEUDO), n


def evaluate(gens: dict[str, Any], data: dict[str, Any], markers: dict | None) -> dict[str, Any]:
    """Metrics of one mode's generated groups (module docstring)."""
    import b2s.qc as qc

    types, truth, controls = data["types"], data["truth"], data["controls"]
    all_genes = np.unique(np.r_[controls, *[list(d) for d in truth.values()]]).astype(int)
    out: dict[str, Any] = {}
    lfc, _ = recovered_lfc(gens[PERTURBED_GROUP], data)
    for t, d in truth.items():
        i = types.index(t)
        g = np.array(list(d))
        true = np.array(list(d.values()))
        rec = lfc[i, g]
        x = np.r_[true, np.zeros(len(controls))]
        y = np.r_[rec, lfc[i, controls]]
        out[t] = {"r": float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan"),
                  "up": float(np.median(rec[true > 0])), "up_true": float(np.median(true[true > 0])),
                  "down": float(np.median(rec[true < 0])), "down_true": float(np.median(true[true < 0])),
                  "ctrl": float(np.median(np.abs(lfc[i, controls])))}
    false, typing, marker_r, apart = [], [], [], []
    for grp, gen in gens.items():
        if grp == PERTURBED_GROUP:
            continue
        lg, n = recovered_lfc(gen, data)
        ok = n >= 20
        false.append(float(np.median(np.abs(lg[ok][:, all_genes]))))
        if markers is not None:
            ts = qc.typing_summary(data["mi"], gen, seed=0)
            summ, _ = qc.marker_correlation(data["mi"], gen, markers=markers)
            ident = qc.identity_summary(summ)
            typing.append(ts["typing_accuracy"])
            marker_r.append(float(np.nanmean(summ["pearson_r"])))
            apart.append(ident["celltype_identity_rate"])
    out["false"] = float(np.mean(false))
    if markers is not None:
        out.update(typing=float(np.mean(typing)), marker_r=float(np.mean(marker_r)), told_apart=float(np.mean(apart)))
    return out


def run_split(split: int, epochs: int, modes: list[str], with_ov: bool, realism: bool) -> list[dict[str, Any]]:
    """Train once, generate every group in every mode, evaluate."""
    import b2s.generate.bulkshift as bulkshift
    import b2s.qc as qc
    import b2s.qc.bulk as bulkqc
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.model.config import TrainConfig
    from b2s.model.train import train_vae

    t0 = time.perf_counter()
    data = prepare(split)
    mi = data["mi"]
    print(f"[split {split}] model input {mi.n_obs} cells x {mi.n_vars} genes; prepared in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    res = train_vae(mi.X, TrainConfig(epoch_num=epochs, patience=epochs, seed=split, device="cpu",
                                      log_every=max(1, epochs // 2), checkpoint_every=10_000))
    print(f"[split {split}] trained {res.epochs_run} epochs in {res.seconds:.0f} s", flush=True)
    markers = qc.reference_markers(mi, 200) if realism else None
    mi_types = list(pd.unique(mi.obs["celltype"].astype(str)))
    rows = []
    for mode in modes + (["omicverse"] if with_ov else []):
        t1 = time.perf_counter()
        gens, n_shift = {}, []
        for grp, tg in data["targets"].groupby("group", sort=False):
            target = dict(zip(tg["celltype"], tg["n_cells"].astype(int)))
            seed = group_seed(split, grp)
            if mode == "omicverse":
                import b2s.engines.omicverse as ove

                gens[grp] = ove.generate_cells(res.state_dict, mi, target, seed=seed, device="cpu")
                continue
            shift = None
            if mode != "none":
                est = bulkshift.estimate_shifts(bulkqc.group_bulk(data["bulk"], data["sheet"], grp), mi, mi_types,
                                                bulkqc.fractions_of(tg, mi_types), mode=mode)
                shift = est["lfc"]
                if grp != PERTURBED_GROUP:
                    n_shift.append(len(est["table"]))
            gens[grp] = generate_cells(res.state_dict, mi, target, seed=seed, device="cpu", shift=shift)
        m = evaluate(gens, data, markers)
        m["n_shift"] = float(np.mean(n_shift)) if n_shift else 0.0
        rows.append({"split": split, "mode": mode, "epochs": res.epochs_run, **m,
                     "seconds": time.perf_counter() - t1})
        msg = "; ".join(f"{t}: r {m[t]['r']:.3f} up {m[t]['up']:.2f}/{m[t]['up_true']:.2f} down "
                        f"{m[t]['down']:.2f}/{m[t]['down_true']:.2f} ctrl {m[t]['ctrl']:.3f}" for t in PERTURBED_TYPES)
        extra = (f" typing {m['typing']:.3f} marker r {m['marker_r']:.3f} apart {m['told_apart']:.2f}"
                 if "typing" in m else "")
        print(f"[split {split}] {mode}: {msg}; false {m['false']:.3f} n_shift {m['n_shift']:.0f}{extra}", flush=True)
    return rows


def shift_variants(splits: list[int]) -> list[dict[str, Any]]:
    """The shifts alone (no training, no generation) of each allocation x shrinkage variant, scored as above.

    Used to choose the shrinkage of b2s.generate.bulkshift (its docstring); the recovered log2 FC is the
    shift itself, so this is what generation carries at best (no sampling noise).
    """
    import b2s.generate.bulkshift as bulkshift
    import b2s.qc.bulk as bulkqc

    rows = []
    for split in splits:
        d = prepare(split)
        mi = d["mi"]
        mi_types = list(pd.unique(mi.obs["celltype"].astype(str)))
        allg = np.unique(np.r_[d["controls"], *[list(v) for v in d["truth"].values()]]).astype(int)
        for mode in ("allocate", "weighted"):
            for shrink, z in (("soft", 2.0), ("soft", 1.0), ("hard", 2.0), ("hard", 3.0)):
                lfc = {}
                for grp, tg in d["targets"].groupby("group", sort=False):
                    est = bulkshift.estimate_shifts(bulkqc.group_bulk(d["bulk"], d["sheet"], grp), mi, mi_types,
                                                    bulkqc.fractions_of(tg, mi_types), mode=mode, z=z, shrink=shrink)
                    lfc[grp] = est["lfc"].reindex(d["types"]).to_numpy()
                row: dict[str, Any] = {"split": split, "mode": mode, "shrink": shrink, "z": z}
                for t, truth in d["truth"].items():
                    i, g = d["types"].index(t), np.array(list(truth))
                    true = np.array(list(truth.values()))
                    rec, ctl = lfc[PERTURBED_GROUP][i, g], lfc[PERTURBED_GROUP][i, d["controls"]]
                    row[t] = {"r": float(np.corrcoef(np.r_[true, np.zeros(len(ctl))], np.r_[rec, ctl])[0, 1]),
                              "up": float(np.median(rec[true > 0])), "down": float(np.median(rec[true < 0])),
                              "ctrl": float(np.median(np.abs(ctl)))}
                others = [v for k, v in lfc.items() if k != PERTURBED_GROUP]
                row["false_mean_abs"] = float(np.mean([np.abs(v[:, allg]).mean() for v in others]))
                row["share_shifted"] = float(np.mean([(v != 0).mean() for v in others]))
                rows.append(row)
                print(f"[split {split}] {mode} {shrink} z={z}: " + "; ".join(
                    f"{t}: r {row[t]['r']:.2f} up {row[t]['up']:.2f} down {row[t]['down']:.2f} ctrl {row[t]['ctrl']:.3f}"
                    for t in d["truth"]) + f"; unperturbed mean |lfc| {row['false_mean_abs']:.3f}, "
                    f"share shifted {row['share_shifted']:.4f}", flush=True)
    return rows


#: --contrast: perturbed types of the tcell group, one per share bin (design shares 40 %, 25 %, 10 %, ~3 %)
CONTRAST_TYPES = ("T cells CD4 conv", "Tregs", "T cells CD8", "B cells")


def share_bin(share: float) -> str:
    """Share bin of a type in its group."""
    return ">=20%" if share >= 0.2 else "5-20%" if share >= 0.05 else "<5%"


def _score_types(lfc: np.ndarray, d: dict[str, Any], shares: dict[str, float],
                 ident: dict[str, bool] | None) -> dict[str, Any]:
    """r, median recovered up / down and control median (signed) of each perturbed type (types x genes ``lfc``)."""
    out = {}
    for t, truth in d["truth"].items():
        i, g = d["types"].index(t), np.array(list(truth))
        true = np.array(list(truth.values()))
        rec, ctl = lfc[i, g], lfc[i, d["controls"]]
        y = np.r_[rec, ctl]
        other = np.array([h for u, tr in d["truth"].items() if u != t for h in tr], dtype=int)
        out[t] = {"share": shares[t], "bin": share_bin(shares[t]),
                  "cross": float(np.median(np.abs(lfc[i, other]))) if len(other) else 0.0,
                  "r": float(np.corrcoef(np.r_[true, np.zeros(len(ctl))], y)[0, 1]) if np.ptp(y) > 0 else 0.0,
                  "up": float(np.median(rec[true > 0])), "up_true": float(np.median(true[true > 0])),
                  "down": float(np.median(rec[true < 0])), "down_true": float(np.median(true[true < 0])),
                  "ctrl": float(np.median(ctl)),
                  "identifiable": None if ident is None else bool(ident[t])}
    return out


def true_attribution(model: dict[str, Any], lfc: np.ndarray, d: dict[str, Any], z: float = 2.0,
                     max_lfc: float = 4.0) -> np.ndarray:
    """Oracle allocation (``--oracle``): the perturbed group's gene contrasts of ``model`` (kept where
    ``|d| > z se``, as the method) handed whole to the type that truly changed the gene,
    ``log2(1 + (2^d - 1) / s_tg)`` (its share ``s_tg``), 0 for the other perturbed types; every other
    gene keeps the method's ``lfc`` (types x model-input genes, ``d['types']`` order)."""
    k = model["groups"].index(PERTURBED_GROUP)
    genes = pd.Index(model["genes"])
    pos = genes.get_indexer(d["mi"].var_names)
    dk, se = model["d"][k], model["se"][k]
    w = model["fractions"][k][:, None] * model["profiles"]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(w.sum(axis=0) > 0, w / w.sum(axis=0), 0.0)  # model types x model genes
    mtypes = list(model["types"])
    out = lfc.copy()
    perturbed = {h for tr in d["truth"].values() for h in tr}
    for t, tr in d["truth"].items():
        i = d["types"].index(t)
        for g in perturbed:
            out[i, g] = 0.0
        for g in tr:
            j = pos[g]
            if j < 0 or not (np.isfinite(se[j]) and abs(dk[j]) > z * se[j]) or share[mtypes.index(t), j] <= 0:
                continue
            x = (2.0 ** np.clip(dk[j], -max_lfc, max_lfc) - 1.0) / share[mtypes.index(t), j]
            out[i, g] = float(np.log2(np.clip(1.0 + x, 2.0 ** -max_lfc, 2.0 ** max_lfc)))
    return out


#: ``posterior`` candidate: prior sd (log2 FC) of a changed gene in the type that changed it, fitted per
#: group by marginal likelihood over this grid (:func:`posterior_attribution`)
TAU_GRID = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def posterior_attribution(d: np.ndarray, se: np.ndarray, share: np.ndarray, candidate: np.ndarray,
                          max_lfc: float = 4.0, tau_grid: tuple[float, ...] = TAU_GRID,
                          n_grid: int = 121) -> tuple[np.ndarray, float]:
    """Posterior mean log2 FC of each type, given a gene's contrast ``d`` (genes) changed in ONE type
    (``--candidates NAME:allocation=posterior``, tried as an alternative to the least-norm split).

    Hypothesis ``H_t``: only type t changed the gene, by ``l ~ N(0, tau^2)`` (log2), so the bulk moves
    by ``h_t(l) = log2(1 + s_t (2^l - 1))`` (``s_t`` its share of the gene), observed with error
    ``se``; ``P(H_t)`` uniform over the ``candidate`` types (types x genes). Returns types x genes
    ``P(H_t | d) E[l | d, H_t]`` (0 where not a candidate) and ``tau`` (the grid value of the largest
    marginal likelihood). Numerical integration over ``n_grid`` values of ``l`` in +-``max_lfc``.
    """
    T, G = share.shape
    out = np.zeros((T, G))
    ok = candidate.any(axis=0) & np.isfinite(se) & (se > 0)
    if not ok.any():
        return out, float("nan")
    grid = np.linspace(-max_lfc, max_lfc, n_grid)
    s = np.where(candidate[:, ok], share[:, ok], 0.0)  # types x genes
    h = np.log2(np.clip(1.0 + s[:, :, None] * (np.exp2(grid) - 1.0)[None, None, :], 1e-300, None))
    zz = (d[ok][None, :, None] - h) / se[ok][None, :, None]
    lik = np.exp(-0.5 * zz ** 2)  # types x genes x grid (the 1/se factor is common to all hypotheses)
    n_cand = candidate[:, ok].sum(axis=0)
    best = None
    for tau in tau_grid:
        w = np.exp(-0.5 * (grid / tau) ** 2)
        w /= w.sum()
        m = (lik * w).sum(axis=2) * candidate[:, ok]  # p(d | H_t)
        marg = m.sum(axis=0) / n_cand
        ll = float(np.log(np.maximum(marg, 1e-300)).sum())
        if best is None or ll > best[0]:
            best = (ll, tau, w, m, marg)
    _, tau, w, m, marg = best
    post = m / n_cand / np.maximum(marg, 1e-300)  # P(H_t | d)
    mean = (lik * w * grid).sum(axis=2) / np.maximum((lik * w).sum(axis=2), 1e-300)
    out[:, ok] = np.where(candidate[:, ok], post * mean, 0.0)
    return out, float(tau)


def posterior_shifts(model: dict[str, Any], group: str, z: float = 2.0, max_lfc: float = 4.0) -> pd.DataFrame:
    """``contrast_shifts`` with the same evidence gate and identifiable types, but each kept gene's
    contrast split over the types by :func:`posterior_attribution` instead of the least-norm split."""
    import b2s.generate.bulkshift as bulkshift

    res = bulkshift.contrast_shifts(model, group, z=z, max_lfc=max_lfc)
    k = model["groups"].index(str(group))
    d, se, f, prof = model["d"][k], model["se"][k], model["fractions"][k], model["profiles"]
    w = f[:, None] * prof
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(w.sum(axis=0) > 0, w / w.sum(axis=0), 0.0)
    ident = np.array([res["summary"][t]["identifiable"] for t in model["types"]])
    kept = np.isfinite(se) & (np.abs(d) > z * se)
    cand = ident[:, None] & (prof > 0) & (share > 0) & kept[None, :]
    lfc, _ = posterior_attribution(np.where(kept, d, 0.0), se, share, cand, max_lfc)
    out = pd.DataFrame(0.0, index=pd.Index(model["types"], name="celltype"), columns=model["ref_genes"])
    out.loc[:, model["genes"]] = lfc
    return out


def persample_attribution(model: dict[str, Any], d: dict[str, Any], z: float = 2.0) -> dict[str, float]:
    """Does the variation of the type shares across the perturbed group's samples tell which type
    changed a gene? For each perturbed gene of the identifiable perturbed types whose contrast passes
    the evidence gate: the samples' excess over the cohort centre, ``y_s = 2^(r_s - c) - 1``, fitted
    by each candidate type alone (``y_s = s_st x``, least squares; candidates: the identifiable types,
    >= :data:`b2s.generate.bulkshift.MIN_SHARE` of the group, that make the gene); the share of genes whose
    best-fitting type is the true one, and what picking at random would score."""
    import b2s.generate.bulkshift as bulkshift

    k = model["groups"].index(PERTURBED_GROUP)
    genes = pd.Index(model["genes"])
    pos = genes.get_indexer(d["mi"].var_names)
    own = model["sample_group"] == k
    centre = model["d"][k] - model["sample_log2ratio"][own].mean(axis=0)  # d = mean_k(r) - c  =>  -c
    y = np.exp2(model["sample_log2ratio"][own] + centre) - 1.0  # samples x genes
    w = model["sample_fractions"][own][:, :, None] * model["profiles"][None]
    share = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)  # samples x types x genes
    mtypes = list(model["types"])
    cand_types = np.flatnonzero(model["fractions"][k] >= bulkshift.MIN_SHARE)
    kept = np.abs(model["d"][k]) > z * model["se"][k]
    hits, chance, n = 0, 0.0, 0
    for t, tr in d["truth"].items():
        if mtypes.index(t) not in cand_types:
            continue
        for g in tr:
            j = pos[g]
            if j < 0 or not kept[j]:
                continue
            cands = [c for c in cand_types if model["profiles"][c, j] > 0]
            rss = []
            for c in cands:
                sc = share[:, c, j]
                rss.append(float(((y[:, j] - sc * (sc @ y[:, j]) / (sc @ sc)) ** 2).sum()))
            n += 1
            hits += int(cands[int(np.argmin(rss))] == mtypes.index(t))
            chance += 1.0 / len(cands)
    return {"persample_true_type": hits / n if n else float("nan"), "persample_chance": chance / n if n else float("nan"),
            "persample_n": n}


def sample_split(model: dict[str, Any], k: int, kept: np.ndarray, types_on: np.ndarray,
                 base: np.ndarray, spread: float = 1.0) -> np.ndarray:
    """Redistribute each kept gene's change over the types with the group's samples (``--candidates NAME:allocation=samples``, tried).

    Per sample s of group k, the excess over the cohort ``y_s = 2^(r_s - c) - 1`` is modelled as
    ``sum_t S_st x_t`` (``S_st``: type t's share of the gene in sample s, from the sample's refitted
    fractions; types outside ``types_on`` hold no part) plus noise of variance ``(ln 2 (1 + mean
    y))^2 v`` (``v``: the within-group variance of r). ``x = base + w``: the amount along the mean
    shares stays the one of ``base`` (the least-norm split of the group's contrast), ``w`` (orthogonal
    to the mean shares) has a normal prior centred on 0 with sd ``spread x |base|`` (``spread`` < 0:
    chosen per group by the marginal likelihood of the samples' residuals over 0, 0.25, .., 4); its
    posterior mean moves the change toward the types whose share tracks the samples' excess.
    Without variation of the shares across samples ``w = 0``. Returns types x genes ``x`` (``base`` outside ``kept``).
    """
    own = model["sample_group"] == k
    T = base.shape[0]
    x_out = base.copy()
    idx = np.flatnonzero(kept)
    if own.sum() < 2 or len(idx) == 0 or spread == 0:
        return x_out
    prof = model["profiles"][:, idx]
    f_all = model["sample_fractions"][own]
    S = (f_all * types_on[None, :])[:, :, None] * prof[None]
    S = S / np.maximum((f_all[:, :, None] * prof[None]).sum(axis=1, keepdims=True), 1e-300)  # samples x types x genes
    c = model["d"][k, idx] - model["sample_log2ratio"][own][:, idx].mean(axis=0)  # -centre
    y = np.exp2(model["sample_log2ratio"][own][:, idx] + c) - 1.0  # samples x genes
    noise = (np.log(2.0) * (1.0 + y.mean(axis=0))) ** 2 * model["sample_var"][idx]
    sbar = S.mean(axis=0)
    u = sbar / np.maximum(np.linalg.norm(sbar, axis=0, keepdims=True), 1e-300)  # types x genes
    b0 = base[:, idx]
    St = np.transpose(S, (2, 0, 1))  # genes x samples x types
    uu = np.einsum("tg,ug->gtu", u, u)
    resid = y.T - np.einsum("gst,tg->gs", St, b0)  # genes x samples
    if spread < 0:  # empirical Bayes: the grid value of the largest marginal likelihood of the residuals
        best = None
        for cand in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
            l2 = (cand * np.linalg.norm(b0, axis=0)) ** 2
            cov = (noise[:, None, None] * np.eye(St.shape[1])[None]
                   + l2[:, None, None] * np.einsum("gst,gtu,gru->gsr", St, np.eye(T)[None] - uu, St))
            _, logdet = np.linalg.slogdet(cov)
            quad = np.einsum("gs,gs->g", resid, np.linalg.solve(cov, resid[:, :, None])[:, :, 0])
            ll = float(-0.5 * (logdet + quad).sum())
            if best is None or ll > best[0]:
                best = (ll, cand)
        spread = best[1]
        if spread == 0:
            return x_out
    lam2 = np.maximum((spread * np.linalg.norm(b0, axis=0)) ** 2, 1e-300)
    A = (np.einsum("gst,gsu->gtu", St, St) / noise[:, None, None] + (np.eye(T)[None] - uu) / lam2[:, None, None]
         + uu * (1e6 / lam2)[:, None, None])  # w along the mean shares: held at 0
    rhs = np.einsum("gst,gs->gt", St, resid) / noise[:, None]
    w = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
    x_out[:, idx] = b0 + w.T * types_on[:, None]
    return x_out


def alternative_split(model: dict[str, Any], group: str, allocation: str, spread: float = 1.0,
                      z: float = 2.0, max_lfc: float = 4.0) -> pd.DataFrame:
    """``contrast_shifts`` with the same evidence gate and identifiable types, the change split by
    least norm over the identifiable types only (``allocation="identifiable"``: the types that carry
    the shift reproduce the whole contrast), then for ``allocation="samples"`` redistributed with the
    group's samples (:func:`sample_split`)."""
    import b2s.generate.bulkshift as bulkshift

    res = bulkshift.contrast_shifts(model, group, z=z, max_lfc=max_lfc)
    k = model["groups"].index(str(group))
    d, se, f, prof = model["d"][k], model["se"][k], model["fractions"][k], model["profiles"]
    w = f[:, None] * prof
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(w.sum(axis=0) > 0, w / w.sum(axis=0), 0.0)
    ident = np.array([res["summary"][t]["identifiable"] for t in model["types"]])
    kept = np.isfinite(se) & (np.abs(d) > z * se)
    carriers = share * ident[:, None]
    x = carriers / np.maximum((carriers ** 2).sum(axis=0), 1e-300) * (np.exp2(np.clip(np.where(kept, d, 0.0), -max_lfc, max_lfc)) - 1.0)
    if allocation == "samples":
        x = sample_split(model, k, kept, ident, x, spread)
    lfc = np.log2(np.clip(1.0 + x, 2.0 ** -max_lfc, 2.0 ** max_lfc))
    lfc[~(ident[:, None] & (prof > 0) & kept[None, :])] = 0.0
    out = pd.DataFrame(0.0, index=pd.Index(model["types"], name="celltype"), columns=model["ref_genes"])
    out.loc[:, model["genes"]] = lfc
    return out


def _false(lfcs: dict[str, np.ndarray], d: dict[str, Any], n: dict[str, np.ndarray] | None = None) -> float:
    """Unperturbed groups: median |log2 FC| of each type (>= 20 generated cells) on the genes it expresses
    (reference >= MIN_CP10K), the median over types, then the mean over groups."""
    per_group = []
    for grp, lfc in lfcs.items():
        if grp == PERTURBED_GROUP:
            continue
        meds = [float(np.median(np.abs(lfc[i, d["ref_means"][i] >= MIN_CP10K])))
                for i in range(len(d["types"])) if n is None or n[grp][i] >= 20]
        per_group.append(float(np.median(meds)))
    return float(np.mean(per_group))


def _false_detail(lfcs: dict[str, np.ndarray], d: dict[str, Any]) -> dict[str, float]:
    """Unperturbed groups, shifts alone: share of the (type, expressed gene) pairs shifted and their
    mean |log2 FC| (more sensitive than ``false``, the median, which is 0 while < half are shifted)."""
    on = d["ref_means"] >= MIN_CP10K
    other = [lfc for g, lfc in lfcs.items() if g != PERTURBED_GROUP]
    return {"false_shifted": float(np.mean([(lfc[on] != 0).mean() for lfc in other])),
            "false_mean_abs": float(np.mean([np.abs(lfc[on]).mean() for lfc in other]))}


def _coverage(d: dict[str, Any], seed: int) -> dict[str, Any]:
    """Composition contrast (b2s.qc.composition) of the estimated sample fractions vs the design's true change."""
    import realdata
    from b2s.qc.composition import composition_contrast

    design = pd.DataFrame(realdata.pseudobulk_design(d["types"])).T  # groups x types
    cc = composition_contrast(d["sample_fractions"][d["types"]], d["sheet"], seed=seed)
    names = list(design.index)
    truth = {(k, t): design.loc[k, t] - design.drop(index=k)[t].mean() for k in names for t in d["types"]}
    hit = [(r.ci_low <= truth[(r.group, r.celltype)] <= r.ci_high) for r in cc.itertuples()]
    return {"coverage": float(np.mean(hit)), "n": len(hit), "flagged": int(cc["excludes_0"].sum()),
            "median_width": float((cc["ci_high"] - cc["ci_low"]).median())}


def bayesprism_lfc(d: dict[str, Any], seed: int, chain: int, burn: int,
                   n_top: int = 1000) -> tuple[dict[str, np.ndarray], float]:
    """BayesPrism's (PyPI ``bayesprism``, benchmark only) per-type expression of every sample (Z of the
    initial Gibbs run, the per-type expression BayesPrism reports), as the same kind of group contrast:
    per type, log2 of the group's mean CPM (+ 1) minus the median over the groups. Returns types x
    model genes per group and the seconds it took. The package is imported from ``$B2S_BAYESPRISM_PATH``
    (e.g. ``pip install --no-deps --target DIR bayesprism returns``); its plotting module's
    altair / vl_convert are stubbed (not used here). Its Gibbs sampler loops over genes in Python
    (~0.8 ms per gene, sample and iteration here), so it runs on the benchmark's perturbed and
    control genes plus the ``n_top`` genes with the most bulk reads, with a short chain."""
    import types as _types

    for m in ("altair", "vl_convert"):
        stub = sys.modules.setdefault(m, _types.ModuleType(m))
        stub.Chart = object  # a type annotation of its plotting module
    sys.path[:0] = [p for p in os.environ.get("B2S_BAYESPRISM_PATH", "").split(os.pathsep) if p]
    import torch
    from bayesprism import GibbsControl, get_exp, new_prism, run_prism
    from returns.maybe import Some

    torch.set_num_threads(1)
    mi = d["mi"]
    all_genes = pd.Index(mi.var_names.astype(str))
    bench = np.unique(np.r_[d["controls"], *[list(v) for v in d["truth"].values()]]).astype(int)
    reads = d["bulk"].loc[all_genes].to_numpy(np.float64).sum(axis=1)
    cols = np.unique(np.r_[bench, np.argsort(-reads)[:n_top]])
    genes = list(all_genes[cols])
    ref = sp.csr_matrix(mi.layers["counts"])[:, cols].toarray().astype(np.float32)
    mix = d["bulk"].loc[genes].to_numpy(np.float32).T
    t0 = time.perf_counter()
    prism = new_prism(ref, tuple(mi.obs["celltype"].astype(str)), Some(tuple(mi.obs["celltype"].astype(str))), mix,
                      gene_names=Some(tuple(genes)), bulk_names=Some(tuple(d["bulk"].columns))).unwrap()
    bp = run_prism(prism, update_gibbs=False, gibbs_control=Some(GibbsControl(
        chain_length=chain, burn_in=burn, thinning=2, seed=Some(int(seed)), num_threads=1))).unwrap()
    seconds = time.perf_counter() - t0
    groups = d["sheet"].set_index("sample")["group"]
    names = list(pd.unique(d["sheet"]["group"]))
    out = {g: np.zeros((len(d["types"]), mi.n_vars)) for g in names}
    for i, t in enumerate(d["types"]):
        z = get_exp(bp, "type", t).unwrap().to_pandas().set_index("bulk_id")
        pos = all_genes.get_indexer(z.columns)
        c = z.to_numpy(np.float64)
        c = c / np.maximum(c.sum(axis=1, keepdims=True), 1e-12) * 1e6
        lg = np.vstack([np.log2(c[(groups.reindex(z.index) == g).to_numpy()].mean(axis=0) + 1.0) for g in names])
        lg = lg - np.median(lg, axis=0)
        for k, g in enumerate(names):
            out[g][i, pos] = lg[k]
    return out, seconds


def expected_z_lfc(d: dict[str, Any]) -> dict[str, np.ndarray]:
    """BayesPrism's per-type expression in expectation: given fractions theta, its Gibbs sampler's Z
    converges to ``X_sg theta_sk m_kg / sum_k theta_sk m_kg`` (each gene's reads split over the types
    in proportion to their expected share). With the pipeline's per-sample fractions as theta, the
    same group contrast as :func:`bayesprism_lfc` (per type, log2 of the group's mean CPM + 1 minus
    the median over the groups). Types x model genes per group."""
    import b2s.qc.bulk as bulkqc

    mi = d["mi"]
    genes = pd.Index(mi.var_names.astype(str))
    prof = bulkqc.type_mean_counts(mi, d["types"], genes)  # types x genes
    x = d["bulk"].loc[genes].to_numpy(np.float64).T  # samples x genes
    theta = d["sample_fractions"].reindex(index=d["bulk"].columns, columns=d["types"]).fillna(0.0).to_numpy()
    w = theta[:, :, None] * prof[None, :, :]  # samples x types x genes
    z = x[:, None, :] * w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    z = z / np.maximum(z.sum(axis=2, keepdims=True), 1e-300) * 1e6
    groups = d["sheet"].set_index("sample")["group"].reindex(d["bulk"].columns).to_numpy()
    names = list(pd.unique(d["sheet"]["group"]))
    lg = np.stack([np.log2(z[groups == g].mean(axis=0) + 1.0) for g in names])  # groups x types x genes
    lg = lg - np.median(lg, axis=0, keepdims=True)
    return {g: lg[k] for k, g in enumerate(names)}


def contrast_grid(splits: list[int], concentrations: list[float], sigmas: list[float], epochs: int,
                  gen_sigma: float | None, bayesprism: tuple[int, int] | None = None, oracle: bool = False,
                  cells_per_sample: int = 400, samples_per_group: int = 3,
                  candidates: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Between-group shifts on the perturbed cohort: shifts alone for every (split, concentration, bias
    sigma), and on generated cells (modes none / weighted / contrast) where sigma == ``gen_sigma``.

    ``oracle`` adds the information ceiling, shifts alone: ``oracle_clean`` = the same contrast on the
    noise-free bulk (``prepare``'s ``clean_bulk``) with the true fractions; ``oracle_attr`` = the
    contrast of the real bulk with each perturbed gene's change handed to the type that truly made it
    (:func:`true_attribution`); ``oracle_both`` = both; and :func:`persample_attribution`.
    ``candidates``: name -> keyword arguments of ``contrast_shifts`` (``z``, ``fdr``), of
    ``contrast_model`` (``refit``), ``true_fractions`` (1: the true group fractions), ``allocation``
    (``posterior``: :func:`posterior_shifts`; ``identifiable`` / ``samples`` with ``spread``:
    :func:`alternative_split`), each scored as a further mode (shifts alone)."""
    import b2s.generate.bulkshift as bulkshift
    import b2s.qc.bulk as bulkqc
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.generate.rates import rate_model
    from b2s.model.config import TrainConfig
    from b2s.model.train import train_vae

    candidates = candidates or {}

    rows = []
    for split in splits:
        trained = None
        for conc in concentrations:
            for sigma in sigmas:
                t0 = time.perf_counter()
                d = prepare(split, concentration=conc, bias_sigma=sigma, perturbed=CONTRAST_TYPES,
                            cells_per_sample=cells_per_sample, samples_per_group=samples_per_group)
                mi, types = d["mi"], d["types"]
                mi_types = list(pd.unique(mi.obs["celltype"].astype(str)))
                tf = d["true_fractions"].groupby(d["sheet"].set_index("sample")["group"]).mean()
                shares = {t: float(tf.loc[PERTURBED_GROUP, t]) for t in CONTRAST_TYPES}
                fr = {g: bulkqc.fractions_of(tg, mi_types) for g, tg in d["targets"].groupby("group", sort=False)}
                t1 = time.perf_counter()
                model = bulkshift.contrast_model(d["bulk"], d["sheet"], mi, mi_types, fr)
                est = {"contrast": {g: bulkshift.contrast_shifts(model, g) for g in fr}}
                t_contrast = time.perf_counter() - t1
                est["weighted"] = {g: bulkshift.estimate_shifts(bulkqc.group_bulk(d["bulk"], d["sheet"], g), mi,
                                                               mi_types, fr[g], mode="weighted") for g in fr}
                ident = {t: est["contrast"][PERTURBED_GROUP]["summary"][t]["identifiable"] for t in CONTRAST_TYPES}
                ctrl_d = {g: float(np.median(model["d"][k][pd.Index(model["genes"]).get_indexer(
                    mi.var_names[d["controls"]])])) for k, g in enumerate(model["groups"])}
                cov = _coverage(d, seed=split)
                est["expected_z"] = expected_z_lfc(d)
                if bayesprism is not None:
                    est["bayesprism"], bp_seconds = bayesprism_lfc(d, split, *bayesprism)
                extra: tuple[str, ...] = ()
                if oracle:
                    tfr = d["true_fractions"].groupby(d["sheet"].set_index("sample")["group"]).mean()
                    clean = bulkshift.contrast_model(d["clean_bulk"], d["sheet"], mi, mi_types,
                                                     {g: tfr.loc[g, mi_types].to_numpy() for g in fr})
                    as_arr = {m: {g: est_g["lfc"].reindex(index=types, columns=mi.var_names).to_numpy()
                                  for g, est_g in e.items()}
                              for m, e in (("contrast", est["contrast"]),
                                           ("oracle_clean", {g: bulkshift.contrast_shifts(clean, g) for g in fr}))}
                    est["oracle_clean"] = as_arr["oracle_clean"]
                    est["oracle_attr"] = {**as_arr["contrast"], PERTURBED_GROUP: true_attribution(
                        model, as_arr["contrast"][PERTURBED_GROUP], d)}
                    est["oracle_both"] = {**as_arr["oracle_clean"], PERTURBED_GROUP: true_attribution(
                        clean, as_arr["oracle_clean"][PERTURBED_GROUP], d)}
                    extra = ("oracle_clean", "oracle_attr", "oracle_both")
                for name, kw in candidates.items():
                    kw = dict(kw)
                    m_kw = {"refit": bool(kw.pop("refit"))} if "refit" in kw else {}
                    if kw.pop("true_fractions", 0):
                        tfr = d["true_fractions"].groupby(d["sheet"].set_index("sample")["group"]).mean()
                        frc = {g: tfr.loc[g, mi_types].to_numpy() for g in fr}
                    else:
                        frc = fr
                    cm = bulkshift.contrast_model(d["bulk"], d["sheet"], mi, mi_types, frc, **m_kw) if m_kw or frc is not fr \
                        else model
                    alloc = kw.pop("allocation", "least_norm")
                    est[name] = {g: (posterior_shifts(cm, g, **kw) if alloc == "posterior" else
                                     alternative_split(cm, g, alloc, **kw) if alloc in ("identifiable", "samples") else
                                     bulkshift.contrast_shifts(cm, g, **kw)["lfc"]).reindex(
                        index=types, columns=mi.var_names).to_numpy() for g in fr}
                    extra += (name,)
                ps = persample_attribution(model, d) if oracle else {}
                if ps:
                    print(f"[split {split} c{conc:g} s{sigma:g}] per-sample fits pick the true type of "
                          f"{ps['persample_true_type']:.0%} of {ps['persample_n']} changed genes (chance "
                          f"{ps['persample_chance']:.0%})", flush=True)
                base = {"split": split, "concentration": conc, "sigma": sigma, "coverage": cov, **ps,
                        "contrast_seconds": t_contrast, "ctrl_gene_contrast": ctrl_d}
                for mode in ("none", "weighted", "contrast", "expected_z") + (("bayesprism",) if bayesprism else ()) + extra:
                    lfcs = {g: (np.zeros((len(types), mi.n_vars)) if mode == "none" else est[mode][g]
                                if mode in ("bayesprism", "expected_z") + extra else
                                est[mode][g]["lfc"].reindex(index=types, columns=mi.var_names).to_numpy())
                            for g in fr}
                    rows.append({**base, "eval": "shifts", "mode": mode,
                                 **_score_types(lfcs[PERTURBED_GROUP], d, shares, ident if mode == "contrast" else None),
                                 "false": _false(lfcs, d), **_false_detail(lfcs, d),
                                 **({"seconds": bp_seconds} if mode == "bayesprism" else {})})
                    r = rows[-1]
                    print(f"[split {split} c{conc:g} s{sigma:g}] shifts {mode}: " + "; ".join(
                        f"{t} ({r[t]['share']:.0%}) r {r[t]['r']:.2f} up {r[t]['up']:.2f}/{r[t]['up_true']:.2f} "
                        f"down {r[t]['down']:.2f}/{r[t]['down_true']:.2f} ctrl {r[t]['ctrl']:+.3f}"
                        + ("" if r[t]["identifiable"] is None else f" id {int(r[t]['identifiable'])}")
                        for t in CONTRAST_TYPES) + f"; false {r['false']:.3f}", flush=True)
                print(f"[split {split} c{conc:g} s{sigma:g}] composition coverage {cov['coverage']:.2f} of "
                      f"{cov['n']} (flagged {cov['flagged']}); control-gene contrast "
                      + ", ".join(f"{g} {v:+.3f}" for g, v in ctrl_d.items())
                      + f"; contrast {t_contrast:.1f} s; prepared {t1 - t0:.0f} s", flush=True)
                if gen_sigma is None or sigma != gen_sigma:
                    continue
                if trained is None:
                    res = train_vae(mi.X, TrainConfig(epoch_num=epochs, patience=epochs, seed=split, device="cpu",
                                                      log_every=max(1, epochs), checkpoint_every=10_000))
                    trained = (res.state_dict, rate_model(res.state_dict, mi, device="cpu"))
                for mode in ("none", "weighted", "contrast"):
                    lfcs, ns = {}, {}
                    for grp, tg in d["targets"].groupby("group", sort=False):
                        target = dict(zip(tg["celltype"], tg["n_cells"].astype(int)))
                        shift = None if mode == "none" else est[mode][grp]["lfc"]
                        gen = generate_cells(trained[0], mi, target, seed=group_seed(split, grp), device="cpu",
                                             shift=shift, rates=trained[1])
                        lfcs[grp], ns[grp] = recovered_lfc(gen, d)
                    rows.append({**base, "eval": "generated", "mode": mode,
                                 **_score_types(lfcs[PERTURBED_GROUP], d, shares, ident if mode == "contrast" else None),
                                 "false": _false(lfcs, d, ns)})
                    r = rows[-1]
                    print(f"[split {split} c{conc:g} s{sigma:g}] generated {mode}: " + "; ".join(
                        f"{t} r {r[t]['r']:.2f} up {r[t]['up']:.2f} down {r[t]['down']:.2f} ctrl {r[t]['ctrl']:+.3f}"
                        for t in CONTRAST_TYPES) + f"; false {r['false']:.3f}", flush=True)
    return rows


def contrast_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean over splits per (eval, mode, concentration, sigma, share bin)."""
    flat = []
    for r in rows:
        for t in CONTRAST_TYPES:
            v = r[t]
            flat.append({"eval": r["eval"], "mode": r["mode"], "conc": r["concentration"], "sigma": r["sigma"],
                         "type": t, "bin": v["bin"], "share": v["share"], "r": v["r"], "up": v["up"],
                         "up_true": v["up_true"], "down": v["down"], "down_true": v["down_true"], "ctrl": v["ctrl"],
                         "cross": v.get("cross", np.nan),
                         "identifiable": np.nan if v["identifiable"] is None else float(v["identifiable"]),
                         "false": r["false"], "coverage": r["coverage"]["coverage"]})
    df = pd.DataFrame(flat)
    return df.groupby(["eval", "mode", "conc", "sigma", "type"], sort=False).mean(numeric_only=True)


def _candidates(text: str) -> dict[str, dict[str, Any]]:
    """``NAME:key=value;key=value,NAME2:...`` -> {NAME: {key: value}} (numbers parsed)."""
    out: dict[str, dict[str, Any]] = {}
    for item in filter(None, text.split(",")):
        name, _, kws = item.partition(":")
        kw: dict[str, Any] = {}
        for pair in filter(None, kws.split(";")):
            k, _, v = pair.partition("=")
            try:
                kw[k] = float(v)
            except ValueError:
                kw[k] = v
        out[name] = kw
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table and one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="split 0, 10 epochs, no realism metrics")
    p.add_argument("--splits", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--modes", default="none,allocate,weighted")
    p.add_argument("--omicverse", action="store_true", help="add omicverse's generation (same weights)")
    p.add_argument("--no_realism", action="store_true", help="skip kNN typing / marker r on unperturbed groups")
    p.add_argument("--shifts_only", action="store_true",
                   help="score the shifts alone for each allocation x shrinkage variant (no training; seconds)")
    p.add_argument("--contrast", action="store_true",
                   help="between-group shifts: concentrations x bias sigmas x splits (shifts alone; generated cells "
                        "at --gen_sigma), composition interval coverage")
    p.add_argument("--concentrations", default="20,200")
    p.add_argument("--sigmas", default="0,0.3,0.5,0.6")
    p.add_argument("--gen_sigma", type=float, default=0.5, help="--contrast: bias sigma scored on generated cells")
    p.add_argument("--bayesprism", default=None, metavar="CHAIN,BURN",
                   help="--contrast: add BayesPrism's per-type expression (Gibbs chain length, burn-in), shifts alone")
    p.add_argument("--oracle", action="store_true",
                   help="--contrast: add the oracles (noise-free bulk; true attribution; both), shifts alone")
    p.add_argument("--candidates", default="", help="--contrast: extra contrast_shifts variants, NAME:key=value;key=value,...")
    p.add_argument("--cells_per_sample", type=int, default=400, help="--contrast: cells per pseudo-bulk sample")
    p.add_argument("--samples_per_group", type=int, default=3, help="--contrast: pseudo-bulk samples per group")
    p.add_argument("--out", help="write the rows as JSON here too")
    args = p.parse_args(argv)
    if args.contrast:
        from realism import machine_info

        t0 = time.perf_counter()
        rows = contrast_grid([int(s) for s in args.splits.split(",")], [float(c) for c in args.concentrations.split(",")],
                             [float(x) for x in args.sigmas.split(",")], 5 if args.quick else args.epochs,
                             args.gen_sigma,
                             tuple(int(x) for x in args.bayesprism.split(",")) if args.bayesprism else None,
                             args.oracle, args.cells_per_sample, args.samples_per_group, _candidates(args.candidates))
        info = machine_info()
        print(f"CPU: {info['cpu']} ({' '.join(info['simd'])}), {info['cores']} cores; {time.perf_counter() - t0:.0f} s")
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(contrast_table(rows).round(3).to_string())
        if args.out:
            Path(args.out).write_text(json.dumps({"rows": rows, "machine": info}, indent=1, default=float))
        print(json.dumps({"rows": rows, "machine": info}, default=float))
        return
    if args.shifts_only:
        rows = shift_variants([0] if args.quick else [int(s) for s in args.splits.split(",")])
        print(json.dumps({"rows": rows}, default=float))
        return
    import torch

    from realism import machine_info

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    splits = [0] if args.quick else [int(s) for s in args.splits.split(",")]
    epochs = 10 if args.quick else args.epochs
    rows = []
    for s in splits:
        rows += run_split(s, epochs, args.modes.split(","), args.omicverse, realism=not (args.quick or args.no_realism))
    info = machine_info()
    print(f"CPU: {info['cpu']} ({' '.join(info['simd'])}), {info['cores']} cores")
    flat = []
    for r in rows:
        for t in PERTURBED_TYPES:
            flat.append({"mode": r["mode"], "type": t, **{k: r[t][k] for k in ("r", "up", "up_true", "down", "down_true", "ctrl")},
                         "false": r["false"], **{k: r[k] for k in ("typing", "marker_r", "told_apart") if k in r}})
    table = pd.DataFrame(flat).groupby(["mode", "type"], sort=False).mean(numeric_only=True)
    print(table.round(3).to_string())
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "machine": info}, indent=1, default=float))
    print(json.dumps({"rows": rows, "machine": info}, default=float))


if __name__ == "__main__":
    main()

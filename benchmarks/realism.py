#!/usr/bin/env python3
"""Realism of generated cells on a real full-transcriptome reference: ours vs the two nulls vs omicverse 2.3.2.

    .venv/bin/python benchmarks/realism.py --quick       # smoke run, a few minutes
    .venv/bin/python benchmarks/realism.py --splits 0,1,2 --seeds 42,43,44 --variants default --ov-epochs ''
    # options: --epochs default,100 --variants default,previous,... --gen mean:nb[:calibrate[:dispersion]]
    #          --ov-epochs 300 --ov-default --no-nulls --outdir DIR (units already in DIR are reused)

Data: the Hao et al. PBMC counts (benchmarks/realdata.py: 11,180 genes; types split per seeded
split into a reference half and a held-out half; four pseudo-bulk groups summed from held-out
cells). Per split the model input is built as PREPROCESS builds it (``b2s.preprocess.model_input``)
and the cell targets as ESTIMATE_FRACTIONS does (``b2s.fractions.estimate.cell_targets``) but from the TRUE
group fractions, so generation is measured apart from fraction error.

Units (each in its own fresh process, one after the other; results cached as JSON in
``--outdir/units``):

- ``ours``: ``b2s.model.train.train_vae`` with one trainer variant (the native engine's defaults,
  ``b2s.model.config.ENGINE_DEFAULTS``, overridden by the variant), run in chunks up to each of
  ``--epochs`` (``default``: the pipeline's epochs for this reference, a budget of optimizer
  steps; a checkpoint carries the run on), and after each chunk ``b2s.generate.cells.generate_cells``
  with each generation mode for the four groups; one unit per seed of ``--seeds``;
- ``null``: ``nb`` = GENERATE's own calibrated NB sampler behind a decoder that returns the same
  output for every cell (each type's mean profile with count noise: what a generator that learned
  nothing inside a type scores), per seed; ``bootstrap`` = the reference cells themselves cycled to
  the same targets (what copying the reference scores);
- ``floor``: the reference half's real cells, once each, scored as if generated (one pseudo group
  of all of them), and again per group with each type's cells drawn without replacement to the
  group's target (at most all of them): the reference half at the cell numbers generated cells are
  scored on;
- ``ov``: omicverse's seed calls (``Bulk2Single.train`` / ``load`` + ``generate`` through
  ``b2s.engines.omicverse``) at fixed epochs (patience = epochs) and at its defaults (3500
  epochs, patience 50: its early stop).

Metrics of every (unit, epoch, generation mode), mean over the four groups:

- within a cell type (:func:`within_type`, generated vs held-out real cells of the type, on the 100
  genes that vary most among the held-out cells of the type): ``structure`` (r between the two
  gene-gene correlation matrices), ``var_ratio`` (median per-gene variance ratio),
  ``pc_var_ratio`` (variance along the held-out cells' top 5 principal axes), ``substates``
  (1 - total variation distance between the shares of the held-out cells' 3 k-means clusters and
  the generated cells assigned to them); ``structure_eq``: structure with at most as many
  cells per type as the reference half holds (drawn without replacement), to compare with the
  second floor row on equal cell numbers (a correlation matrix from fewer cells scores lower);
- ``typing``: kNN typing accuracy of the generated cells by a classifier fit on held-out REAL
  cells (``b2s.qc.knn.knn_typing``: PCA of the held-out cells, 15 neighbours); ``ceiling``: the same
  classifier on the reference's real cells, weighted to each group's composition; ``ratio``;
- ``marker_r``: per-type marker r vs held-out cells (``b2s.qc.markers.marker_correlation`` with held-out
  markers); ``told_apart`` / ``margin``: the pipeline's identity check (``b2s.qc.metrics.identity_summary``
  on the correlation with the reference);
- distribution per type vs held-out real cells (generated cells of all groups pooled per type):
  ``lib`` = median library size ratio gen/real (counts layer vs real counts when the cells carry
  counts, else sum of expm1(X) vs the real cells' sum of expm1 of their log-normalised values),
  ``det`` = detection-rate ratio (non-zero share of X), ``log2mean`` = median |log2(gen/real
  per-gene mean of expm1(X))| on the type's top 20 % expressed genes; reported as the worst type
  (largest deviation) and the mean over types;
- ``train_s`` / ``seconds``: wall time of training (and of training plus generating the four groups).

The last line printed is one JSON object with every row.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "bin", ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

#: Trainer variants measured (keys of b2s.model.config.TrainConfig over the native engine's defaults).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    # the defaults before the within-type metrics: every gene in the VAE, the seed's rate and batch
    "previous": {"learning_rate": 1e-4, "batch_size": 512, "vae_genes": 0},
    "allgenes": {"vae_genes": 0},
    "genes1000": {"vae_genes": 1000},
    "seed": {"free_bits": 0.0, "kl_warmup": 0, "reparam": "standard"},
    "beta4": {"beta": 4.0},
    "beta0.1": {"beta": 0.1},
    "beta0.01": {"beta": 0.01},
    "freebits0": {"free_bits": 0.0},
    "bs64": {"batch_size": 64},
    "lr2e-3": {"learning_rate": 2e-3},
    "latent32": {"hidden_size": 32},
    "latent64": {"hidden_size": 64},
}


def variant_settings(variant: str) -> dict[str, Any]:
    """TrainConfig keys of a variant: the native engine's defaults (b2s.model.config.ENGINE_DEFAULTS, less
    ``epoch_num``, which ``--epochs`` sets) overridden by the variant's own."""
    from b2s.model.config import ENGINE_DEFAULTS

    base = {k: v for k, v in ENGINE_DEFAULTS["native"].items() if k != "epoch_num"}
    return {**base, **VARIANTS[variant]}


# ----------------------------------------------------------------------------- data


def prepare_split(split: int) -> dict[str, Any]:
    """Reference / held-out halves, model input, held-out log-normalised cells and the cell targets."""
    import pandas as pd

    import b2s.fractions.estimate as fractions
    import b2s.preprocess as preprocess
    import realdata

    adata = realdata.load_hao()
    ref, held = realdata.split_reference(adata, seed=split)
    types = list(adata.obs["celltype"].cat.categories)
    bulk, truth, sheet = realdata.make_pseudobulks(held, realdata.pseudobulk_design(types), seed=split)
    mi = preprocess.model_input(ref, bulk.index)
    held_mi = preprocess.model_input(held, bulk.index)
    group_truth = truth.groupby(sheet.set_index("sample")["group"]).mean()
    group_truth = group_truth.loc[pd.unique(sheet["group"])]
    targets = fractions.cell_targets(bulk, sheet, ref, group_truth)
    by_group = {g: dict(zip(d["celltype"], d["n_cells"].astype(int))) for g, d in targets.groupby("group", sort=False)}
    return {"mi": mi, "held": held_mi, "targets": by_group}


#: Within-type metrics (mean over types, then groups), generated vs held-out real cells of a type.
WITHIN_TYPE_METRICS = ("structure", "var_ratio", "pc_var_ratio", "substates")


def _corr(m: np.ndarray) -> np.ndarray:
    m = m - m.mean(axis=0)
    sd = np.sqrt((m ** 2).sum(axis=0))
    return (m / np.where(sd > 0, sd, np.inf)).T @ (m / np.where(sd > 0, sd, np.inf))


def within_type(cells: Any, held: Any, n_genes: int = 100, min_cells: int = 10, n_pcs: int = 5, k: int = 3,
                seed: int = 0, cap: dict[str, int] | None = None) -> dict[str, dict[str, float]]:
    """Per cell type with >= ``min_cells`` generated and held-out cells, on the ``n_genes`` genes
    that vary most among the held-out real cells of the type (log-normalised X), with at most
    ``cap[type]`` of the type's ``cells`` (drawn without replacement, seeded) when ``cap`` is given:

    - ``structure``: Pearson r between the gene-gene correlation matrices (off-diagonal) of the
      generated and the held-out cells: the gene programs that co-vary inside the type;
    - ``var_ratio``: median over those genes of generated / held-out variance;
    - ``pc_var_ratio``: median over the held-out cells' top ``n_pcs`` principal axes of the
      generated / held-out variance along them (biology concentrates there, count noise does not);
    - ``substates``: the held-out cells' ``k`` k-means clusters on those axes; generated cells are
      assigned to the nearest centre; 1 - total variation distance of the cluster shares.
    """
    import scipy.sparse as sp
    from sklearn.cluster import KMeans

    def dense(a: Any, rows: np.ndarray) -> np.ndarray:
        x = a.X[rows]
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)

    lg = cells.obs["celltype"].astype(str).to_numpy()
    lh = held.obs["celltype"].astype(str).to_numpy()
    out = {}
    for t in np.unique(lh):
        rh, rg = np.flatnonzero(lh == t), np.flatnonzero(lg == t)
        if cap is not None and len(rg) > cap.get(str(t), len(rg)):
            rg = np.sort(np.random.default_rng(seed).choice(rg, cap[str(t)], replace=False))
        if len(rh) < min_cells or len(rg) < min_cells:
            continue
        h = dense(held, rh)
        genes = np.argsort(-h.var(axis=0), kind="stable")[:n_genes]
        h, g = h[:, genes], dense(cells, rg)[:, genes]
        iu = np.triu_indices(len(genes), 1)
        ch, cg = _corr(h)[iu], _corr(g)[iu]
        structure = float(np.corrcoef(ch, cg)[0, 1]) if cg.std() > 0 and ch.std() > 0 else 0.0
        vh, vg = h.var(axis=0), g.var(axis=0)
        mu = h.mean(axis=0)
        axes = np.linalg.svd(h - mu, full_matrices=False)[2][:n_pcs]
        ph, pg = (h - mu) @ axes.T, (g - mu) @ axes.T
        km = KMeans(k, n_init=10, random_state=seed).fit(ph)
        share_h = np.bincount(km.labels_, minlength=k) / len(ph)
        share_g = np.bincount(km.predict(pg), minlength=k) / len(pg)
        out[str(t)] = {"structure": structure, "var_ratio": float(np.median(vg[vh > 0] / vh[vh > 0])),
                       "pc_var_ratio": float(np.median(pg.var(axis=0) / ph.var(axis=0))),
                       "substates": float(1 - 0.5 * np.abs(share_h - share_g).sum())}
    return out


def within_type_summary(per_type: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over types of each within-type metric."""
    return {k: float(np.mean([d[k] for d in per_type.values()])) for k in WITHIN_TYPE_METRICS}


class Evaluator:
    """Everything per split that does not depend on the generated cells, computed once."""

    def __init__(self, data: dict[str, Any], seed: int = 0) -> None:
        import b2s.qc as qc

        self.qc = qc
        self.mi, self.held, self.targets = data["mi"], data["held"], data["targets"]
        self.seed = seed
        self.held_markers = qc.reference_markers(self.held)
        self.ref_markers = qc.reference_markers(self.mi)
        self.typer = qc.KnnTyper(self.held, seed=seed)
        ref_pred = self.typer.predict(self.mi)
        labels = self.mi.obs["celltype"].astype(str).to_numpy()
        self.ref_acc = {t: float((ref_pred[labels == t] == t).mean()) for t in np.unique(labels)}
        self.ref_typing = float((ref_pred == labels).mean())
        s, _ = qc.marker_correlation(self.held, self.mi, markers=self.held_markers)
        self.ref_marker_r = float(np.nanmean(s["pearson_r"]))
        self.real = self._type_stats(self.held, real=True)
        # the reference half's cells per type: the most cells of a type a generator has real sources for
        self.n_ref = {str(t): int(n) for t, n in self.mi.obs["celltype"].astype(str).value_counts().items()}

    @staticmethod
    def _type_stats(adata: Any, real: bool = False) -> dict[str, dict[str, Any]]:
        """Per type: library sizes, detection rate, per-gene mean of expm1(X)."""
        import scipy.sparse as sp

        X = sp.csr_matrix(adata.X)
        counts = adata.layers.get("counts") if hasattr(adata, "layers") else None
        labels = adata.obs["celltype"].astype(str).to_numpy()
        out = {}
        for t in np.unique(labels):
            rows = np.flatnonzero(labels == t)
            xt = X[rows]
            e = xt.copy()
            e.data = np.expm1(e.data)
            st = {"lib_expm1": float(np.median(np.asarray(e.sum(axis=1)).ravel())),
                  "det": float(xt.nnz / max(1, xt.shape[0] * xt.shape[1])),
                  "mean": np.asarray(e.mean(axis=0)).ravel()}
            if counts is not None:
                st["lib_counts"] = float(np.median(np.asarray(sp.csr_matrix(counts)[rows].sum(axis=1)).ravel()))
            out[str(t)] = st
        return out

    def evaluate(self, generated: dict[str, Any]) -> dict[str, Any]:
        """Metrics of the generated cells of every group (dict group -> AnnData)."""
        import anndata as ad

        qc = self.qc
        typing, ceiling, marker_r, told, margin = [], [], [], [], []
        for g, cells in generated.items():
            labels = cells.obs["celltype"].astype(str).to_numpy()
            pred = self.typer.predict(cells)
            typing.append(float((pred == labels).mean()))
            comp = {t: float((labels == t).mean()) for t in np.unique(labels)}
            ceiling.append(sum(w * self.ref_acc.get(t, np.nan) for t, w in comp.items()))
            s, _ = qc.marker_correlation(self.held, cells, markers=self.held_markers)
            marker_r.append(float(np.nanmean(s["pearson_r"])))
            ident = qc.identity_summary(qc.marker_correlation(self.mi, cells, markers=self.ref_markers)[0])
            told.append(ident["celltype_identity_rate"] or 0.0)
            margin.append(ident["marker_r_margin_median"] if ident["marker_r_margin_median"] is not None else np.nan)
        within = [within_type_summary(within_type(cells, self.held, seed=self.seed)) for cells in generated.values()]
        # the same structure on at most as many cells per type as the reference half holds, so that
        # generated cells and the reference half's real cells are scored on equal cell numbers
        # (a correlation matrix from fewer cells is noisier and scores lower)
        structure_eq = [within_type_summary(within_type(cells, self.held, seed=self.seed, cap=self.n_ref))["structure"]
                        for cells in generated.values()]
        pooled = ad.concat(list(generated.values()), join="inner", index_unique="-")
        gen = self._type_stats(pooled)
        lib, det, l2 = {}, {}, {}
        for t, st in gen.items():
            real = self.real[t]
            if "lib_counts" in st:
                lib[t] = st["lib_counts"] / real["lib_counts"]
            else:
                lib[t] = st["lib_expm1"] / real["lib_expm1"]
            det[t] = st["det"] / real["det"]
            top = np.argsort(-real["mean"])[: max(1, int(0.2 * len(real["mean"])))]
            eps = 1e-3
            l2[t] = float(np.median(np.abs(np.log2((st["mean"][top] + eps) / (real["mean"][top] + eps)))))

        def worst(d: dict[str, float], log: bool = False) -> float:
            v = np.asarray(list(d.values()), float)
            return float(v[np.argmax(np.abs(v - (0 if log else 1)))])

        return {
            "typing": float(np.mean(typing)), "ceiling": float(np.mean(ceiling)),
            "ratio": float(np.mean(typing) / np.mean(ceiling)),
            "typing_by_group": dict(zip(generated, typing)),
            "marker_r": float(np.mean(marker_r)), "told_apart": float(np.mean(told)),
            "margin": float(np.nanmean(margin)),
            "lib_worst": worst(lib), "lib_mean": float(np.mean(list(lib.values()))),
            "det_worst": worst(det), "det_mean": float(np.mean(list(det.values()))),
            "log2mean_worst": worst(l2, log=True), "log2mean_mean": float(np.mean(list(l2.values()))),
            "per_type": {t: {"lib": lib[t], "det": det[t], "log2mean": l2[t]} for t in lib},
            **{k: float(np.mean([w[k] for w in within])) for k in WITHIN_TYPE_METRICS},
            "structure_eq": float(np.mean(structure_eq)),
        }


# ----------------------------------------------------------------------------- units


def _threads() -> int:
    import torch

    from b2s.model.device import cpu_count

    torch.set_num_threads(cpu_count())
    return torch.get_num_threads()


def unit_ours(split: int, variant: str, epochs: list[int], gen_modes: list[str], seed: int,
              patience: int) -> dict[str, Any]:
    """Train one variant in chunks to each epoch count; generate and evaluate after each chunk."""
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.generate.rates import DEFAULTS
    from b2s.model.config import TrainConfig, default_epochs
    from b2s.model.train import train_vae, trained_model

    threads = _threads()
    data = prepare_split(split)
    ev = Evaluator(data)
    mi = data["mi"]
    # "default": the pipeline's epochs when --epoch_num is unset (a budget of optimizer steps)
    epochs = sorted(default_epochs(mi.n_obs, variant_settings(variant)["batch_size"]) if e == "default" else int(e)
                    for e in epochs)
    rows = []
    train_s = 0.0
    with tempfile.TemporaryDirectory(prefix="b2s_realism_") as tmp:
        ckpt = os.path.join(tmp, "vae_checkpoint.pt")
        for e in epochs:
            cfg = TrainConfig(**{**variant_settings(variant), "epoch_num": e, "patience": patience, "seed": seed,
                                 "device": "cpu", "checkpoint_path": ckpt, "checkpoint_every": 10_000,
                                 "log_every": 50})
            res = train_vae(mi.X, cfg)
            train_s += res.seconds
            model = trained_model(res, cfg, mi.n_vars)
            kl = float(res.history["kl"].iloc[-1])
            for mode in gen_modes:
                decode, counts, *rest = mode.split(":")
                t0 = time.perf_counter()
                gen = {g: generate_cells(model, mi, tg, seed=group_seed(seed, g), device="cpu",
                                         decode=decode, counts=counts, reparam=cfg.reparam,
                                         calibrate=rest[0] if rest else DEFAULTS["calibrate"],
                                         dispersion=rest[1] if len(rest) > 1 else DEFAULTS["dispersion"])
                       for g, tg in data["targets"].items()}
                gen_s = time.perf_counter() - t0
                m = ev.evaluate(gen)
                rows.append({"unit": f"ours:{variant}", "split": split, "seed": seed, "epoch_num": e,
                             "epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "gen": mode,
                             "train_s": train_s, "gen_s": gen_s, "seconds": train_s + gen_s,
                             "kl_last": kl, **m})
                print(f"[{variant} split {split}] epochs {res.epochs_run} {mode}: typing {m['typing']:.3f} "
                      f"(ceiling {m['ceiling']:.3f}) r {m['marker_r']:.3f} apart {m['told_apart']:.2f} "
                      f"lib {m['lib_worst']:.2f} det {m['det_worst']:.2f} log2 {m['log2mean_worst']:.2f} "
                      f"{train_s + gen_s:.0f} s", flush=True)
    return {"rows": rows, "ceiling_overall": ev.ref_typing, "ref_marker_r": ev.ref_marker_r, "threads": threads}


def unit_ov(split: int, epoch_num: int, patience: int, seed: int) -> dict[str, Any]:
    """omicverse's trainer and generator (seed calls) at one setting."""
    import b2s.engines.omicverse as ove
    from b2s.generate.cells import group_seed
    from b2s.model.config import TrainConfig

    ove.load_omicverse().bulk2single.Bulk2Single  # noqa: B018 - import outside the timing
    threads = _threads()
    data = prepare_split(split)
    ev = Evaluator(data)
    mi = data["mi"]
    cfg = TrainConfig(epoch_num=epoch_num, patience=patience, seed=seed, device="cpu")
    res = ove.train_vae(mi, cfg)
    t0 = time.perf_counter()
    gen = {g: ove.generate_cells(res.state_dict, mi, tg, seed=group_seed(seed, g), device="cpu")
           for g, tg in data["targets"].items()}
    gen_s = time.perf_counter() - t0
    m = ev.evaluate(gen)
    label = "default" if epoch_num == 3500 and patience == 50 else f"{epoch_num}"
    row = {"unit": f"omicverse:{label}", "split": split, "seed": seed, "epoch_num": epoch_num,
           "epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "gen": "omicverse",
           "train_s": res.seconds, "gen_s": gen_s, "seconds": res.seconds + gen_s, **m}
    print(f"[omicverse {label} split {split}] epochs {res.epochs_run}: typing {m['typing']:.3f} "
          f"(ceiling {m['ceiling']:.3f}) r {m['marker_r']:.3f} {res.seconds + gen_s:.0f} s", flush=True)
    return {"rows": [row], "ceiling_overall": ev.ref_typing, "ref_marker_r": ev.ref_marker_r, "threads": threads}


def unit_floor(split: int) -> dict[str, Any]:
    """The sampling floor: the reference half's REAL cells scored as if generated (one pseudo
    group; and per group at the generated cell numbers). What no generator can beat, since generated cells follow the reference half: e.g. the
    per-gene mean metric compares two finite samples of real cells (18-75 cells per type)."""
    data = prepare_split(split)
    ev = Evaluator(data)
    mi = data["mi"]
    labels = mi.obs["celltype"].astype(str).to_numpy()
    rng = np.random.default_rng(split)
    # per group, each type's reference cells drawn without replacement to the group's target (at
    # most all of them): the reference half on the cell numbers that generated cells are scored on
    matched = {g: mi[np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == t), min(n, int((labels == t).sum())),
                                                        replace=False) for t, n in tg.items() if n > 0]))].copy()
               for g, tg in data["targets"].items()}
    rows = []
    for label, cells in (("real reference half (floor)", {"reference": mi}),
                         ("real reference half, at the generated cell numbers", matched)):
        m = ev.evaluate(cells)
        rows.append({"unit": label, "split": split, "seed": 0, "epoch_num": 0, "epochs_run": 0, "best_epoch": 0,
                     "gen": "real", "train_s": 0.0, "gen_s": 0.0, "seconds": 0.0, "kl_last": float("nan"), **m})
    return {"rows": rows, "ceiling_overall": ev.ref_typing, "ref_marker_r": ev.ref_marker_r, "threads": 1}


def unit_null(split: int, kind: str, seed: int) -> dict[str, Any]:
    """The two nulls of every table: ``nb`` (per-type mean profile x the source cell's library, NB
    counts: GENERATE's own sampler behind a constant decoder) and ``bootstrap`` (the reference
    cells themselves, cycled to the same targets: copying the reference)."""
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.model.vae import constant_decoder_vae

    data = prepare_split(split)
    ev = Evaluator(data)
    mi = data["mi"]
    t0 = time.perf_counter()
    if kind == "nb":
        model = constant_decoder_vae(mi.n_vars)
        gen = {g: generate_cells(model, mi, tg, seed=group_seed(seed, g), device="cpu")
               for g, tg in data["targets"].items()}
    else:
        labels = mi.obs["celltype"].astype(str).to_numpy()
        gen = {g: mi[np.concatenate([np.resize(np.flatnonzero(labels == t), n) for t, n in tg.items() if n > 0])].copy()
               for g, tg in data["targets"].items()}
    m = ev.evaluate(gen)
    label = {"nb": "null: NB from type means (no VAE)", "bootstrap": "null: reference cells resampled"}[kind]
    row = {"unit": label, "split": split, "seed": seed, "epoch_num": 0, "epochs_run": 0, "best_epoch": 0,
           "gen": kind, "train_s": 0.0, "gen_s": time.perf_counter() - t0, "seconds": time.perf_counter() - t0,
           "kl_last": float("nan"), **m}
    return {"rows": [row], "ceiling_overall": ev.ref_typing, "ref_marker_r": ev.ref_marker_r, "threads": 1}


def _dispatch(name: str, log_path: str, kwargs: dict) -> dict:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    print(f"=== {name} {kwargs}", flush=True)
    return {"ours": unit_ours, "ov": unit_ov, "floor": unit_floor, "null": unit_null}[name](**kwargs)


#: --cached: tabulate the units already in --outdir, run none
CACHED_ONLY = False


def run_unit(outdir: Path, key: str, name: str, **kwargs: Any) -> dict:
    """Run one unit in a fresh spawned process, unless its JSON is already in ``outdir/units``."""
    units = outdir / "units"
    units.mkdir(parents=True, exist_ok=True)
    path = units / f"{key}.json"
    if path.exists():
        print(f"reusing {path}", flush=True)
        return json.loads(path.read_text())
    if CACHED_ONLY:
        print(f"not run yet, left out: {key}", flush=True)
        return {"rows": [], "ceiling_overall": float("nan"), "ref_marker_r": float("nan")}
    print(f"running {key} ...", flush=True)
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as ex:
        out = ex.submit(_dispatch, name, str(outdir / f"{key}.log"), kwargs).result()
    out["process_s"] = time.perf_counter() - t0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, default=float))
    os.replace(tmp, path)
    for r in out["rows"]:
        print(f"  {r['unit']} e{r['epochs_run']} {r['gen']}: typing {r['typing']:.3f}/{r['ceiling']:.3f} "
              f"r {r['marker_r']:.3f} lib {r['lib_worst']:.2f} det {r['det_worst']:.2f} "
              f"log2 {r['log2mean_worst']:.2f} {r['seconds']:.0f} s", flush=True)
    return out


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """CPU model, SIMD flags, cores, load."""
    model, flags = "unknown", []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))]
    except OSError:
        pass
    return {"cpu": model, "simd": flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average": os.getloadavg()}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over splits per (unit, epoch_num, gen); min / median seconds."""
    import pandas as pd

    df = pd.DataFrame(rows)
    keys = ["unit", "epoch_num", "gen"]
    num = ["epochs_run", "typing", "ceiling", "ratio", "marker_r", "told_apart", "margin", "lib_worst",
           "det_worst", "log2mean_worst", "lib_mean", "det_mean", "log2mean_mean", "train_s",
           *WITHIN_TYPE_METRICS, "structure_eq"]
    g = df.groupby(keys, sort=False)
    out = g[num].mean()
    out["n_splits"] = g["split"].nunique()
    out["n_runs"] = g.size()
    out["seconds_min"] = g["seconds"].min()
    out["seconds_median"] = g["seconds"].median()
    # worst type over every split, not the mean of worsts
    for col in ("lib_worst", "det_worst"):
        out[col] = g[col].apply(lambda v: float(v.to_numpy()[np.argmax(np.abs(v.to_numpy() - 1))]))
    out["log2mean_worst"] = g["log2mean_worst"].max()
    return out.reset_index().to_dict("records")


def print_table(summary: list[dict[str, Any]]) -> None:
    """Markdown table of the summary rows."""
    head = ("| unit | epochs (run) | generation | within-type structure | same, equal cell numbers | variance ratio | PC variance ratio | "
            "sub-states | typing | ceiling | ratio | marker r | told apart | lib worst | det worst | "
            "log2 mean worst | training s | s min / median | splits / runs |")
    print(head)
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(f"| {r['unit']} | {r['epoch_num']} ({r['epochs_run']:.0f}) | {r['gen']} | {r['structure']:.3f} | {r['structure_eq']:.3f} | "
              f"{r['var_ratio']:.2f} | {r['pc_var_ratio']:.2f} | {r['substates']:.3f} | {r['typing']:.3f} | "
              f"{r['ceiling']:.3f} | {r['ratio']:.2f} | {r['marker_r']:.3f} | {r['told_apart']:.2f} | "
              f"{r['lib_worst']:.2f} | {r['det_worst']:.2f} | {r['log2mean_worst']:.2f} | {r['train_s']:.0f} | "
              f"{r['seconds_min']:.0f} / {r['seconds_median']:.0f} | {r['n_splits']} / {r['n_runs']} |")


def main(argv: list[str] | None = None) -> None:
    """Run the units that are not cached yet, then print the table and the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one split, short training: a smoke run")
    p.add_argument("--splits", default=None, help="comma-separated split seeds (default 0,1,2; quick: 0)")
    p.add_argument("--epochs", default=None,
                   help="epoch counts at which ours is evaluated; 'default': the pipeline's (default: default)")
    p.add_argument("--variants", default="default", help=f"trainer variants: {', '.join(VARIANTS)}")
    p.add_argument("--gen", default="mean:nb", help="generation modes decode:counts[:calibrate[:dispersion]]")
    p.add_argument("--ov-epochs", default=None, help="omicverse fixed-epoch points (default 300; quick: 20)")
    p.add_argument("--ov-default", action=argparse.BooleanOptionalAction, default=None,
                   help="also omicverse at its defaults (3500 epochs, patience 50); default on in full mode")
    p.add_argument("--ov-splits", default=None, help="splits for omicverse (default: all splits)")
    p.add_argument("--patience", type=int, default=None, help="patience of ours (default: the pipeline's)")
    p.add_argument("--seeds", default="42", help="comma-separated training / generation seeds")
    p.add_argument("--nulls", action=argparse.BooleanOptionalAction, default=True,
                   help="the NB-from-type-means and resampled-reference null rows")
    p.add_argument("--outdir", default=None)
    p.add_argument("--cached", action="store_true", help="only tabulate the units already in --outdir")
    a = p.parse_args(argv)
    global CACHED_ONLY
    CACHED_ONLY = a.cached
    from b2s.model.config import TrainConfig

    splits = [int(s) for s in (a.splits or ("0" if a.quick else "0,1,2")).split(",")]
    epochs = [e if e == "default" else int(e) for e in (a.epochs or ("20,40" if a.quick else "default")).split(",")]
    ov_spec = a.ov_epochs if a.ov_epochs is not None else ("20" if a.quick else "300")
    ov_epochs = [int(e) for e in ov_spec.split(",") if e]
    ov_default = (not a.quick) if a.ov_default is None else a.ov_default
    ov_splits = [int(s) for s in a.ov_splits.split(",")] if a.ov_splits else splits
    patience = a.patience or TrainConfig().patience
    outdir = Path(a.outdir or tempfile.mkdtemp(prefix="b2s_realism_"))
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"outdir {outdir}", flush=True)
    machine = machine_info()
    t0 = time.perf_counter()
    results = []
    gen = a.gen.split(",")
    seeds = [int(x) for x in a.seeds.split(",")]
    for split in splits:
        results.append(run_unit(outdir, f"floor_s{split}", "floor", split=split))
        if a.nulls:
            results.append(run_unit(outdir, f"null_bootstrap_s{split}", "null", split=split, kind="bootstrap", seed=0))
            for seed in seeds:
                results.append(run_unit(outdir, f"null_nb_s{split}_seed{seed}", "null", split=split, kind="nb", seed=seed))
        for v in a.variants.split(","):
            if not v:
                continue
            for seed in seeds:
                key = f"ours_{v}_s{split}_e{'-'.join(map(str, epochs))}_p{patience}_{'_'.join(gen).replace(':', '-')}_seed{seed}"
                results.append(run_unit(outdir, key, "ours", split=split, variant=v, epochs=epochs,
                                        gen_modes=gen, seed=seed, patience=patience))
        if split in ov_splits:
            for e in ov_epochs:
                results.append(run_unit(outdir, f"ov_s{split}_e{e}_seed{seeds[0]}", "ov", split=split,
                                        epoch_num=e, patience=e, seed=seeds[0]))
            if ov_default:
                results.append(run_unit(outdir, f"ov_s{split}_default_seed{seeds[0]}", "ov", split=split,
                                        epoch_num=3500, patience=50, seed=seeds[0]))
    rows = [r for res in results for r in res["rows"]]
    summary = summarise(rows)
    machine["load_average_end"] = os.getloadavg()
    print(f"\nreference's own cells (ceiling, all cells): typing "
          f"{np.nanmean([r['ceiling_overall'] for r in results]):.3f}, marker r "
          f"{np.nanmean([r['ref_marker_r'] for r in results]):.3f}; machine {machine['cpu']} "
          f"{' '.join(machine['simd'])}; {time.perf_counter() - t0:.0f} s\n")
    print_table(summary)
    print(json.dumps({"summary": summary, "rows": rows, "machine": machine,
                      "ceiling_overall": [r["ceiling_overall"] for r in results],
                      "ref_marker_r": [r["ref_marker_r"] for r in results]}, default=float))


if __name__ == "__main__":
    main()

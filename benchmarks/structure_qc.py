#!/usr/bin/env python3
"""Does the within-type structure QC (b2s.qc.structure) tell real cells from the per-type NB null?

    .venv/bin/python benchmarks/structure_qc.py                 # 3 splits x 3 seeds, ~1 min on one core
    .venv/bin/python benchmarks/structure_qc.py --splits 0 --seeds 0
    .venv/bin/python benchmarks/structure_qc.py --bundled 10:1e-4:512,300:1e-3:128   # ~10 min

QC has no held-out cells: it scores generated cells against the reference and compares the score
with the reference's own split-half floor. Here the "generated" cells are stand-ins with known
answers, on the Hao PBMC reference (benchmarks/realdata.py: 11,180 genes; per split a reference
half, built as PREPROCESS builds the model input, and a held-out half):

- ``held-out real``: the held-out real cells of each type (what a perfect generator makes): the
  QC must not flag them;
- ``held-out real, 30/type``: 30 of them per type (a small group: the floor is computed at the
  generated cell count);
- ``NB null``: NB counts from each type's mean normalised profile x the library of a reference
  cell of the type, per-gene dispersion from the reference within types (b2s.generate.rates.type_dispersion),
  as many cells per type as held out: right type, library and about the right variance, nothing
  co-varying inside the type. The QC must flag it;
- ``resampled reference``: reference cells drawn with replacement (copying the reference).

Per (split, seed; the seed draws the null, the subsample and the floor's splits):
structure, floor, variance ratio (means over types), and flagged / judged types.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bin"), str(ROOT / "benchmarks")]

from b2s.generate.rates import type_dispersion  # noqa: E402
from b2s.preprocess import model_input, normalize_single  # noqa: E402
from b2s.qc.structure import within_type_structure  # noqa: E402
from realdata import load_hao, split_reference  # noqa: E402
from realism import machine_info  # noqa: E402


def nb_null(mi: ad.AnnData, n_per_type: dict[str, int], seed: int) -> ad.AnnData:
    """NB counts from each reference type's mean normalised profile x reference libraries (log-normalised X)."""
    rng = np.random.default_rng(seed)
    labels = mi.obs["celltype"].astype(str).to_numpy()
    types = list(n_per_type)
    counts = sp.csr_matrix(mi.layers["counts"], dtype=np.float64)
    lib = mi.obs["total_counts"].to_numpy(np.float64)
    phi = type_dispersion(counts, lib, pd.Categorical(labels, categories=types).codes, len(types))
    norm = sp.diags(1.0 / lib) @ counts
    blocks, libs, out_labels = [], [], []
    for t in types:
        rows = np.flatnonzero(labels == t)
        src = rng.choice(rows, n_per_type[t])
        mean = np.asarray(norm[rows].mean(axis=0)).ravel()[None, :] * lib[src][:, None]
        blocks.append(sp.csr_matrix(rng.poisson(rng.gamma(1.0 / phi, mean * phi)).astype(np.float32)))
        libs.append(lib[src])
        out_labels += [t] * n_per_type[t]
    c = sp.vstack(blocks, format="csr")
    lib_out = np.concatenate(libs)
    x = sp.diags(1e4 / lib_out) @ c
    x.data = np.log1p(x.data)
    return ad.AnnData(X=sp.csr_matrix(x, dtype=np.float32),
                      obs=pd.DataFrame({"celltype": out_labels}, index=[f"n{i}" for i in range(c.shape[0])]),
                      var=pd.DataFrame(index=mi.var_names.copy()))


def per_type_sample(cells: ad.AnnData, n: int | None, seed: int, replace: bool = False,
                    counts: dict[str, int] | None = None) -> ad.AnnData:
    """Up to ``n`` cells per type (or ``counts[type]``), seeded."""
    rng = np.random.default_rng(seed)
    labels = cells.obs["celltype"].astype(str).to_numpy()
    idx = []
    for t in pd.unique(labels):
        rows = np.flatnonzero(labels == t)
        k = counts[t] if counts else min(n, len(rows))
        idx.append(rng.choice(rows, k, replace=replace))
    out = cells[np.concatenate(idx)].copy()
    out.obs_names = [f"s{i}" for i in range(out.n_obs)]
    return out


def run(splits: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    hao = load_hao()
    rows = []
    for split in splits:
        ref, held = split_reference(hao, seed=split)
        mi = model_input(ref, ref.var_names)
        real = normalize_single(held)
        n_held = real.obs["celltype"].astype(str).value_counts().to_dict()
        for seed in seeds:
            cands = {"held-out real": real,
                     "held-out real, 30/type": per_type_sample(real, 30, seed),
                     "NB null": nb_null(mi, n_held, seed),
                     "resampled reference": per_type_sample(mi, None, seed, replace=True, counts=n_held)}
            for name, cells in cands.items():
                t0 = time.perf_counter()
                res = within_type_structure(mi, cells, seed=seed)
                per = res["per_celltype"]
                shares = [r["share_of_floor"] for r in per.values() if r["share_of_floor"] is not None]
                rows.append({"split": split, "seed": seed, "cells": name, "structure": res["structure_mean"],
                             "floor": res["floor_mean"], "variance_ratio": res["variance_ratio_median"],
                             "min_share_of_floor": min(shares) if shares else None,
                             "judged": res["n_types_judged"], "flagged": len(res["types_under_floor"]),
                             "seconds": time.perf_counter() - t0})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def bundled(settings: list[str]) -> None:
    """The QC on the bundled data's own generated cells: per ``epochs:learning_rate:batch_size[:vae_genes]``,
    ``b2s.model.train.train_vae`` on the model input, ``generate_cells`` at the defaults (targets 2x each
    type's reference cells), then the VAE identity and the within-type QC."""
    from b2s.generate.cells import generate_cells
    from b2s.model.config import ENGINE_DEFAULTS, TrainConfig
    from b2s.model.train import train_vae, trained_model
    from b2s.qc.metrics import vae_identity_of
    from b2s.qc.structure import summary_line, within_type_qc

    ref = ad.read_h5ad(ROOT / "assets" / "test_data" / "reference.h5ad")
    mi = model_input(ref, ref.var_names)
    targets = {str(t): 2 * int(n) for t, n in mi.obs["celltype"].value_counts().items()}
    for spec in settings:
        epochs, lr, batch, *genes = spec.split(":")
        t0 = time.perf_counter()
        native = {k: v for k, v in ENGINE_DEFAULTS["native"].items() if k != "epoch_num"}
        if genes:
            native["vae_genes"] = int(genes[0])
        cfg = TrainConfig(**{**native, "learning_rate": float(lr), "batch_size": int(batch)},
                          epoch_num=int(epochs), patience=int(epochs), device="cpu", seed=42, log_every=10**6)
        model = trained_model(train_vae(mi.X, cfg), cfg, mi.n_vars)
        gen = generate_cells(model, mi, targets, seed=1, device="cpu")
        q = within_type_qc(mi, gen, vae=vae_identity_of(gen), seed=42)
        per = {t: (r["structure"], r["floor"]) for t, r in q["within_type"]["per_celltype"].items()}
        print(json.dumps({"setting": spec, "seconds": round(time.perf_counter() - t0, 1),
                          "vae_identity": json.loads(gen.uns["vae_identity"])["told_apart"],
                          "summary": summary_line(q), "per_type": per, "warnings": [w[:70] for w in q["warnings"]]}),
              flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default="0,1,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--bundled", help="instead: the bundled data's own generated cells, per comma-separated "
                   "epochs:learning_rate:batch_size (e.g. 10:1e-4:512,300:1e-3:128)")
    a = p.parse_args(argv)
    print(json.dumps(machine_info()), flush=True)
    if a.bundled:
        bundled(a.bundled.split(","))
        return
    rows = pd.DataFrame(run([int(s) for s in a.splits.split(",")], [int(s) for s in a.seeds.split(",")]))
    table = rows.groupby("cells", sort=False).agg(
        structure=("structure", "mean"), floor=("floor", "mean"), variance_ratio=("variance_ratio", "mean"),
        min_share_of_floor=("min_share_of_floor", "min"), flagged=("flagged", "sum"), judged=("judged", "sum"),
        runs=("split", "size"), seconds=("seconds", "median"))
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()

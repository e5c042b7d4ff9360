#!/usr/bin/env python3
"""TRAIN_VAE's default on CPU: wall time and within-type structure, 662-cell vs 5,000-cell reference.

    .venv/bin/python benchmarks/train_time.py                 # split 0, the threads this process may use
    taskset -c 0 .venv/bin/python benchmarks/train_time.py    # one thread

The 662-cell reference is the Hao PBMC reference half of ``--split`` (benchmarks/realism.py); the
5,000-cell one resamples its cells per type (with replacement, each count Poisson-redrawn, so no
two cells are identical), keeping the type shares. Both train with the native engine's defaults
(``b2s.model.config.ENGINE_DEFAULTS``; epochs from the step budget, so the larger reference trains as many
optimizer steps in fewer epochs), then generate the four benchmark groups and score them against
the held-out half (``realism.Evaluator``: within-type structure, variance ratio, typing). The last
line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("bin", "benchmarks")]


def upsample(mi, n_cells: int, seed: int):
    """``n_cells`` cells drawn per type from ``mi`` (type shares kept), counts Poisson-redrawn, X
    re-normalised as PREPROCESS does."""
    import anndata as ad
    import scipy.sparse as sp

    from b2s.preprocess import TARGET_SUM

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(mi.n_obs, size=n_cells, replace=True))
    counts = sp.csr_matrix(mi.layers["counts"])[rows]
    counts.data = rng.poisson(counts.data).astype(np.float32)
    counts.eliminate_zeros()
    lib = mi.obs["total_counts"].to_numpy()[rows]
    x = sp.csr_matrix(sp.diags(TARGET_SUM / np.maximum(lib, 1)) @ counts, dtype=np.float32)
    x.data = np.log1p(x.data)
    out = ad.AnnData(X=x, obs=mi.obs.iloc[rows].reset_index(drop=True), var=mi.var.copy())
    out.obs_names = [f"up{i}" for i in range(n_cells)]
    out.layers["counts"] = counts
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", type=int, default=0)
    p.add_argument("--cells", type=int, nargs="+", default=[0, 5000], help="reference sizes (0: the reference half)")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    import realism
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.model.config import TrainConfig, default_epochs
    from b2s.model.device import cpu_threads
    from b2s.model.train import train_vae, trained_model

    data = realism.prepare_split(a.split)
    ev = realism.Evaluator(data)
    rows = []
    for n in a.cells:
        mi = data["mi"] if n == 0 else upsample(data["mi"], n, a.seed)
        settings = realism.variant_settings("default")
        cfg = TrainConfig(**settings, epoch_num=default_epochs(mi.n_obs, settings["batch_size"]), seed=a.seed,
                          device="cpu", log_every=10_000)
        t0 = time.perf_counter()
        res = train_vae(mi.X, cfg)
        train_s = time.perf_counter() - t0
        model = trained_model(res, cfg, mi.n_vars)
        gen = {g: generate_cells(model, mi, tg, seed=group_seed(a.seed, g), device="cpu")
               for g, tg in data["targets"].items()}
        m = ev.evaluate(gen)
        rows.append({"cells": mi.n_obs, "epochs": cfg.epoch_num, "steps": cfg.epoch_num * -(-mi.n_obs // cfg.batch_size),
                     "train_s": round(train_s, 1), "threads": cpu_threads(),
                     **{k: round(m[k], 4) for k in ("structure", "var_ratio", "pc_var_ratio", "substates", "ratio", "marker_r")}})
        print(rows[-1], flush=True)
    print(json.dumps({"rows": rows, "machine": realism.machine_info()}))


if __name__ == "__main__":
    main()

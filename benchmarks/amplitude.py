#!/usr/bin/env python3
"""Does the decoder shrink each cell's deviation from its type? Amplitude estimates and a sweep.

    .venv/bin/python benchmarks/amplitude.py --split 0 --seed 42 --k 1,1.3,1.6,2 [--model PATH]

Trains the pipeline's default VAE on one realism split (``benchmarks/realism.py``; or loads
``--model``, a file this script wrote before, and writes it when the path does not exist yet), then:

1. per cell type, two estimates of how much the decoded cells' deviations from their type's mean
   decoded profile (log scale, the decoder's output) should be scaled to match the reference's
   real cells: the regression slope of the real log-normalised values on the decoded ones (both
   centred per type and gene; 1 = the decoder is the conditional mean), and the scale ``k`` whose
   square fits the real off-diagonal gene-gene covariance by the decoded one on the type's 300
   most varying decoded genes (count noise adds to the diagonal only);
2. the realism metrics (``realism.Evaluator``) of GENERATE's defaults with each decoded block
   replaced by ``centre + k * (block - centre)`` (clipped at 0) before calibration, for each ``k``.

Results: benchmarks/README.md, "Within-type realism".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "bin", ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def trained(split: int, seed: int, mi, path: str | None):
    """The default VAE of this split and seed as GENERATE sees it (trained here or loaded)."""
    import torch

    import realism
    from b2s.model.config import TrainConfig, default_epochs
    from b2s.model.train import train_vae
    from b2s.model.vae import BetaVAE, GeneSubsetVAE

    if path and os.path.exists(path):
        ck = torch.load(path, weights_only=False)
    else:
        st = realism.variant_settings("default")
        cfg = TrainConfig(**{**st, "epoch_num": default_epochs(mi.n_obs, st["batch_size"]), "seed": seed,
                             "device": "cpu", "log_every": 100})
        res = train_vae(mi.X, cfg)
        ck = {"state": res.state_dict, "cfg": cfg.__dict__, "seconds": res.seconds, "genes": res.genes}
        if path:
            torch.save(ck, path)
    inner = BetaVAE(len(ck["genes"]), ck["cfg"]["hidden_size"], ck["cfg"]["reparam"])
    inner.load_state_dict(ck["state"])
    return GeneSubsetVAE(inner, ck["genes"], mi.n_vars).eval(), ck["cfg"]["reparam"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--k", default="1,1.3,1.6,2")
    p.add_argument("--model", default=None)
    a = p.parse_args()
    import scipy.sparse as sp
    import torch

    import b2s.generate.cells as G
    import b2s.generate.rates as R
    import realism

    torch.set_num_threads(1)
    data = realism.prepare_split(a.split)
    ev, mi = realism.Evaluator(data), data["mi"]
    model, reparam = trained(a.split, a.seed, mi, a.model)
    labels = mi.obs["celltype"].astype(str).to_numpy()
    types = list(dict.fromkeys(labels))
    codes = np.array([types.index(t) for t in labels])
    X = sp.csr_matrix(mi.X)
    decode = R.decode_batches
    with torch.inference_mode():
        dec = np.vstack(list(decode(model, X, np.arange(mi.n_obs), "mean", None, torch.device("cpu"), 4096)))
    real = X.toarray()
    centre = np.vstack([dec[codes == t].mean(axis=0) for t in range(len(types))])
    D = dec - centre[codes]
    R = real - np.vstack([real[codes == t].mean(axis=0) for t in range(len(types))])[codes]
    estimates = {}
    for t, name in enumerate(types):
        m = codes == t
        slope = float((R[m] * D[m]).sum() / (D[m] ** 2).sum())
        top = np.argsort(-D[m].var(axis=0))[:300]
        cr, cd = np.cov(R[m][:, top].T), np.cov(D[m][:, top].T)
        off = ~np.eye(len(top), dtype=bool)
        k2 = float((cr[off] * cd[off]).sum() / (cd[off] ** 2).sum())
        estimates[name] = {"cells": int(m.sum()), "slope": round(slope, 3), "offdiag_k": round(float(np.sqrt(max(k2, 0))), 3)}
        print(f"{name:28s} cells {m.sum():4d}  slope {slope:.2f}  off-diagonal k {np.sqrt(max(k2, 0)):.2f}", flush=True)

    scale = {"k": 1.0}

    def amplified(model_, X_ref, rows, decode_, gen, dev, bs):
        pos = 0
        for block in decode(model_, X_ref, rows, decode_, gen, dev, bs):
            c = codes[rows[pos:pos + len(block)]]
            pos += len(block)
            yield np.maximum(centre[c] + scale["k"] * (block - centre[c]), 0).astype(np.float32)

    R.decode_batches = amplified
    rows = []
    for k in (float(x) for x in a.k.split(",")):
        scale["k"] = k
        gen = {g: G.generate_cells(model, mi, tg, seed=G.group_seed(a.seed, g), device="cpu", reparam=reparam)
               for g, tg in data["targets"].items()}
        m = ev.evaluate(gen)
        row = {"k": k, **{x: round(m[x], 3) for x in ("structure", "structure_eq", "var_ratio", "pc_var_ratio",
                                                       "substates", "ratio", "marker_r", "lib_worst", "det_worst",
                                                       "lib_mean", "det_mean")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"split": a.split, "seed": a.seed, "estimates": estimates, "sweep": rows}))


if __name__ == "__main__":
    main()

"""Fractions from TPM vs counts of the same samples, with and without a gene-length bias (issue 26).

A 3' UMI reference counts each transcript once; a full-length bulk library counts it in proportion
to its length, so its raw counts carry a per-gene length factor the reference lacks; TPM divides it
out. Gene lengths are not in the Hao data: the factor is simulated, log-normal (sigma
``--length_sigma``, 0.7 by default: the spread of log human transcript lengths, ~2 kb median,
IQR ~1.2-4 kb), one draw per (split, seed), normalised to mean 1.

Per split (seeded per-type reference / held-out halving of the Hao PBMC cells, benchmarks/realdata.py)
and seed (pseudo-bulks: 12 samples of 400 held-out cells in 4 groups, the length draw and the
Poisson draw), the same samples as four inputs:

- ``counts``: the pseudo-bulk counts (no bias);
- ``tpm``: the same scaled per sample to 1e6 (TPM with all lengths equal: the no-bias control);
- ``counts_fl``: full-length-like counts, Poisson(counts x length factor);
- ``tpm_fl``: TPM of those, (counts_fl / length) scaled per sample to 1e6 (what salmon/RSEM report).

Each is given to ``b2s.fractions.estimate.estimate_sample_fractions`` as the pipeline gives it (TPM as
TPM), with the default ``wls`` and the null ``nnls`` (NNLS on type means). Scores: Pearson r and
RMSE over all sample x type entries against the true cell fractions, and the largest |difference|
between the fractions from ``tpm`` and from ``counts``. The bundled data (assets/test_data, 6
samples, truth_fractions.csv) gets the same four inputs (one length draw per seed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bulk_units.py            # 3 splits x 3 seeds + bundled
    .venv/bin/python benchmarks/bulk_units.py --splits 1 --seeds 1         # quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "bin")]

import b2s.fractions.estimate as fr  # noqa: E402
import realdata  # noqa: E402
from realism import machine_info  # noqa: E402

INPUTS = ("counts", "tpm", "counts_fl", "tpm_fl")
METHODS = ("wls", "nnls")


def per_million(x: pd.DataFrame) -> pd.DataFrame:
    return x / x.sum(axis=0) * 1e6


def four_inputs(counts: pd.DataFrame, rng: np.random.Generator, sigma: float) -> dict[str, pd.DataFrame]:
    """The same samples as counts, TPM, full-length-like counts and their TPM (module docstring)."""
    length = rng.lognormal(0.0, sigma, counts.shape[0])
    length /= length.mean()
    fl = pd.DataFrame(rng.poisson(counts.to_numpy(dtype=np.float64) * length[:, None]),
                      index=counts.index, columns=counts.columns)
    fl = fl.loc[:, fl.sum(axis=0) > 0]
    out = {"counts": counts, "tpm": per_million(counts.astype(np.float64)), "counts_fl": fl,
           "tpm_fl": per_million(fl / length[:, None])}
    for k, v in out.items():
        v.attrs["units"] = "counts" if k.startswith("counts") else "tpm"
    return out


def score_all(inputs: dict[str, pd.DataFrame], ref, truth: pd.DataFrame, tag: dict) -> list[dict]:
    rows, preds = [], {}
    for method in METHODS:
        for name, bulk in inputs.items():
            t0 = time.perf_counter()
            pred = fr.estimate_sample_fractions(bulk, ref, method=method, seed=1)
            preds[(method, name)] = pred
            acc = fr.fraction_accuracy(pred, truth)
            rows.append({**tag, "method": method, "input": name, "r": acc["r"], "rmse": acc["rmse"],
                         "seconds": time.perf_counter() - t0})
        cols = sorted(preds[(method, "counts")].columns)
        diff = (preds[(method, "tpm")][cols] - preds[(method, "counts")][cols]).to_numpy()
        rows.append({**tag, "method": method, "input": "tpm vs counts: max |diff|", "r": np.nan,
                     "rmse": float(np.abs(diff).max())})
        rows.append({**tag, "method": method, "input": "tpm vs counts: rms diff", "r": np.nan,
                     "rmse": float(np.sqrt(np.mean(diff ** 2)))})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--length_sigma", type=float, default=0.7)
    p.add_argument("--out", default=str(HERE / "bulk_units_latest.json"))
    args = p.parse_args(argv)
    rows: list[dict] = []
    hao = realdata.load_hao()
    design = realdata.pseudobulk_design(sorted(hao.obs["celltype"].astype(str).unique()))
    for split in range(1, args.splits + 1):
        ref, held = realdata.split_reference(hao, split)
        for seed in range(1, args.seeds + 1):
            bulk, truth, _ = realdata.make_pseudobulks(held, design, seed=seed)
            rng = np.random.default_rng(1000 * split + seed)
            rows += score_all(four_inputs(bulk, rng, args.length_sigma), ref, truth,
                              {"data": "hao", "split": split, "seed": seed})
            print(f"split {split} seed {seed} done", flush=True)
    import anndata

    td = HERE.parent / "assets" / "test_data"
    ref = anndata.read_h5ad(td / "reference.h5ad")
    bulk = pd.read_csv(td / "bulk_counts.tsv.gz", sep="\t", index_col=0)
    truth = pd.read_csv(td / "truth_fractions.csv", index_col=0)
    for seed in range(1, args.seeds + 1):
        rows += score_all(four_inputs(bulk, np.random.default_rng(seed), args.length_sigma), ref, truth,
                          {"data": "bundled", "split": 0, "seed": seed})
    df = pd.DataFrame(rows)
    table = (df.groupby(["data", "method", "input"], sort=False)
               .agg(r=("r", "mean"), r_min=("r", "min"), rmse=("rmse", "mean"), rmse_max=("rmse", "max"),
                    n=("rmse", "size")).reset_index())
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    res = {"machine": machine_info(), "length_sigma": args.length_sigma, "splits": args.splits, "seeds": args.seeds,
           "table": table.to_dict(orient="records"), "runs": rows}
    Path(args.out).write_text(json.dumps(res, default=float) + "\n")
    print(f"machine: {res['machine']['cpu']}; wrote {args.out}")
    return res


if __name__ == "__main__":
    main()

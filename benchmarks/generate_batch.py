#!/usr/bin/env python3
"""GENERATE on a batch of groups: the current bin/ against an earlier revision's, same inputs.

Runs ``bin/generate.py`` of ``--before_rev`` (``git archive``) and of the working tree on the
same GENERATE inputs (a task folder of a real run: ``model_input.h5ad``, ``vae.pth`` with its
sidecar, ``cell_targets.csv``), all groups of the targets in one process, alternating the two
``--repeats`` times; reports wall min / median of each, their ratio, and whether every
``<group>.generated.h5ad`` holds the same cells (X, counts, obs) in both.

    .venv/bin/python benchmarks/generate_batch.py --inputs DIR --before_rev 61094d2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from realism import machine_info  # noqa: E402
from scale import bin_of_rev  # noqa: E402


def run(bin_dir: Path, inputs: Path, groups: list[str], out: Path) -> float:
    """Wall seconds of one GENERATE process on all ``groups``."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(bin_dir / "generate.py"), "--input", str(inputs / "model_input.h5ad"),
           "--weights", str(inputs / "vae.pth"), "--targets", str(inputs / "cell_targets.csv"),
           "--group", *groups, "--device", "cpu", "--seed", "42", "--bulk_shift", "none", "--hidden_size", "256",
           "--engine", "native", "--bulk", str(inputs / "bulk_counts.tsv"), "--groups", str(inputs / "groups.csv"),
           "--outdir", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(bin_dir)))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return time.perf_counter() - t0


def same_cells(a: Path, b: Path, groups: list[str]) -> bool:
    import anndata as ad

    for g in groups:
        x, y = ad.read_h5ad(a / f"{g}.generated.h5ad"), ad.read_h5ad(b / f"{g}.generated.h5ad")
        if not (x.obs.equals(y.obs) and (x.X != y.X).nnz == 0
                and (x.layers["counts"] != y.layers["counts"]).nnz == 0):
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--before_rev", required=True)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import pandas as pd

    groups = list(pd.unique(pd.read_csv(args.inputs / "cell_targets.csv")["group"].astype(str)))
    m = machine_info()
    print(f"# CPU: {m['cpu']} ({m['cores']} CPUs; {' '.join(m['simd'])}); load {m['load_average'][0]:.1f}; "
          f"{len(groups)} groups", flush=True)
    with tempfile.TemporaryDirectory(prefix="b2s_genbatch_") as tmp:
        tmp = Path(tmp)
        bins = {"before": bin_of_rev(args.before_rev, tmp / "before"), "after": REPO / "bin"}
        walls: dict[str, list[float]] = {k: [] for k in bins}
        for i in range(args.repeats):
            for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                walls[name].append(run(bins[name], args.inputs, groups, tmp / f"{name}_{i}"))
                print(f"{name} repeat {i}: {walls[name][-1]:.1f} s", flush=True)
        same = same_cells(tmp / "before_0", tmp / "after_0", groups)
    b, a = np.array(walls["before"]), np.array(walls["after"])
    print(f"\n| GENERATE, {len(groups)} groups in one task | wall min (s) | wall median (s) |")
    print("|---|---:|---:|")
    print(f"| before ({args.before_rev}) | {b.min():.1f} | {np.median(b):.1f} |")
    print(f"| after | {a.min():.1f} | {np.median(a):.1f} |")
    print(f"after / before: min {a.min() / b.min():.2f}, median {np.median(a) / np.median(b):.2f}; "
          f"same cells: {same}")


if __name__ == "__main__":
    main()

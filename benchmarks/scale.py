#!/usr/bin/env python3
"""Scale benchmark, reference side: PREPARE_INPUTS peak memory and time vs atlas size.

A synthetic atlas is written to h5ad in chunks (the writer never holds it whole): real Hao PBMC
cells (``benchmarks/realdata.py``; 11,180 genes, ~740 non-zeros per cell) resampled with
per-cell depth noise and Poisson noise, their cell-type labels kept. ``bin/prepare_inputs.py``
then runs on it (default ``--max_single_cells`` 5000) under ``/usr/bin/time -v``, once with the
current code and once with the code of ``--before_rev`` (the last commit that read the whole
reference), and the two ``reference.h5ad`` outputs are compared (same cells, same matrix).

    .venv/bin/python benchmarks/scale.py --quick          # 50k cells
    .venv/bin/python benchmarks/scale.py --cells 50000 250000

With ``--pipeline`` the whole pipeline (``nextflow run``, local executor, plain parameters; the
atlas's four pseudo-bulk samples are four groups) also runs on each atlas, and every stage's peak
RSS and task time come from its Nextflow trace: only PREPARE_INPUTS reads the atlas, so no stage
should grow with it. ``--epoch_num`` bounds training (the pipeline's 3,500 with patience 50
would dominate the run without telling anything about the atlas size).

    .venv/bin/python benchmarks/scale.py --cells 50000 1000000 --before_rev '' --pipeline

With ``--omicverse`` the seed tool's set-up on each atlas is measured the same way (its users'
calls: ``anndata.read_h5ad`` of the atlas, then ``Bulk2Single(bulk, adata, celltype_key)``, which
densifies the WHOLE reference with ``to_df()`` before any subsampling), under an address-space
cap (``--omicverse_cap_gb``, default 20) so an atlas it cannot hold fails with MemoryError
instead of taking the machine down.

    .venv/bin/python benchmarks/scale.py --cells 50000 250000 1000000 --before_rev '' --omicverse
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "bin"))

#: Last commit whose PREPARE_INPUTS read the whole reference h5ad before subsampling.
BEFORE_REV = "bb931c8"


def write_atlas(path: Path, n_cells: int, seed: int = 0, chunk: int = 20_000) -> dict[str, float]:
    """Write an ``n_cells`` CSR h5ad of resampled Hao cells, ``chunk`` cells at a time."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import write_elem

    from realdata import load_hao

    hao = load_hao()
    src = sp.csr_matrix(hao.X)
    labels = hao.obs["celltype"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, hao.n_obs, n_cells)
    obs = pd.DataFrame({"celltype": pd.Categorical(labels[pick]),
                        "donor": pd.Categorical(rng.choice(["d1", "d2", "d3"], n_cells))},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=hao.var_names.astype(str))
    t0 = time.perf_counter()
    nnz = 0
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("layers", "obsm", "obsp", "uns", "varm", "varp"):
            write_elem(f, key, {})
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([n_cells, hao.n_vars])})
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                chunks=(1 << 18,))
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                   chunks=(1 << 18,))
        indptr = [np.zeros(1, dtype=np.int64)]
        for lo in range(0, n_cells, chunk):
            block = src[pick[lo:lo + chunk]].copy()
            depth = np.repeat(rng.uniform(0.7, 1.3, block.shape[0]), np.diff(block.indptr))
            block.data = rng.poisson(block.data * depth).astype(np.float32)
            block.eliminate_zeros()
            n = block.nnz
            data.resize((nnz + n,))
            indices.resize((nnz + n,))
            data[nnz:] = block.data
            indices[nnz:] = block.indices
            indptr.append(block.indptr[1:].astype(np.int64) + nnz)
            nnz += n
        g.create_dataset("indptr", data=np.concatenate(indptr))
    del ad
    return {"nnz": nnz, "write_s": round(time.perf_counter() - t0, 1),
            "file_mb": round(path.stat().st_size / 1e6, 1)}


def write_bulk(path: Path, seed: int = 1) -> None:
    """Four pseudo-bulk samples, each the summed counts of 300 random Hao cells."""
    import pandas as pd

    from realdata import load_hao

    hao = load_hao()
    rng = np.random.default_rng(seed)
    cols = {f"s{i}": np.asarray(hao.X[rng.integers(0, hao.n_obs, 300)].sum(axis=0)).ravel()
            for i in range(4)}
    df = pd.DataFrame(cols, index=pd.Index(hao.var_names.astype(str), name="gene")).astype(np.int64)
    df.to_csv(path, sep="\t")


def time_v(stderr: str) -> dict:
    """Peak RSS (MB, None if absent) and wall (s, NaN if absent) from ``/usr/bin/time -v``'s report."""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr)
    secs = sum(float(v) * 60 ** i for i, v in enumerate(reversed(wall.group(1).split(":")))) if wall else float("nan")
    return {"peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None, "wall_s": round(secs, 1)}


def bin_of_rev(rev: str, dest: Path) -> Path:
    """``bin/`` of git revision ``rev`` extracted under ``dest`` (``git archive``); its path."""
    arch = subprocess.run(["git", "-C", str(REPO), "archive", rev, "bin"], capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest / "bin"


def run_prepare(bin_dir: Path, atlas: Path, bulk: Path, outdir: Path, max_cells: int) -> dict:
    """Run ``bin_dir/prepare_inputs.py`` under /usr/bin/time -v; peak RSS (MB) and wall (s)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, str(bin_dir / "prepare_inputs.py"),
           "--bulk", str(bulk), "--reference", str(atlas), "--celltype_key", "celltype",
           "--max_single_cells", str(max_cells), "--bulk_units", "auto", "--seed", "42", "--outdir", str(outdir)]
    env = dict(os.environ, PYTHONPATH=str(bin_dir))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return time_v(proc.stderr)


def run_pipeline(atlas: Path, bulk: Path, launch: Path, epoch_num: int) -> dict:
    """The whole pipeline on ``atlas``; per stage (trace): tasks, summed task s, peak RSS (MB)."""
    from cohort import nextflow_env, nextflow_run

    res = nextflow_run(launch, ["--bulk", str(bulk), "--reference", str(atlas), "--celltype_key", "celltype",
                                "--epoch_num", str(epoch_num)], nextflow_env())
    trace, wall = res["trace"], res["wall_s"]
    stages = {}
    for stage, t in trace.groupby("stage", sort=False):
        stages[stage] = {"tasks": len(t), "task_s": round(float(t["realtime_s"].sum()), 1),
                         "peak_rss_mb": round(float(t["peak_rss_mb"].max()))}
    return {"wall_s": round(wall, 1), "stages": stages}


_OV_SETUP = """
import sys, anndata as ad, pandas as pd, omicverse as ov
atlas, bulk = sys.argv[1], sys.argv[2]
adata = ad.read_h5ad(atlas)
bulk = pd.read_csv(bulk, sep="\\t", index_col=0)
ov.bulk2single.Bulk2Single(bulk, adata, "celltype", max_single_cells=5000, gpu=-1)
print("omicverse set-up done")
"""


def run_omicverse_setup(atlas: Path, bulk: Path, cap_gb: float) -> dict:
    """omicverse's read + ``Bulk2Single`` set-up on ``atlas`` under an address-space cap."""
    cmd = ["prlimit", f"--as={int(cap_gb * 2**30)}", "/usr/bin/time", "-v", sys.executable, "-c",
           _OV_SETUP, str(atlas), str(bulk)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    ok = proc.returncode == 0 and "omicverse set-up done" in proc.stdout
    err = ""
    if not ok:
        lines = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "Killed" in ln]
        err = lines[-1][:200] if lines else f"exit {proc.returncode}"
    return {**time_v(proc.stderr), "ok": ok, "error": err, "cap_gb": cap_gb}


def same_output(a: Path, b: Path) -> bool:
    """Same cells, labels, genes and matrix in two reference.h5ad files."""
    import anndata as ad

    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    return (list(x.obs_names) == list(y.obs_names) and list(x.var_names) == list(y.var_names)
            and list(x.obs["celltype"]) == list(y.obs["celltype"])
            and all(np.array_equal(getattr(x.X, k), getattr(y.X, k))
                    for k in ("data", "indices", "indptr")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one 50k-cell atlas")
    p.add_argument("--cells", type=int, nargs="+", default=[50_000, 250_000])
    p.add_argument("--max_single_cells", type=int, default=5000)
    p.add_argument("--before_rev", default=BEFORE_REV,
                   help="git revision whose bin/ is the 'before' code ('' to skip it)")
    p.add_argument("--workdir", default=None, help="where atlases are written (default: a temp dir)")
    p.add_argument("--pipeline", action="store_true", help="also run the whole pipeline on each atlas")
    p.add_argument("--epoch_num", type=int, default=3, help="training epochs of the --pipeline runs")
    p.add_argument("--omicverse", action="store_true", help="also measure omicverse's set-up on each atlas")
    p.add_argument("--omicverse_cap_gb", type=float, default=20.0, help="address-space cap of that run")
    args = p.parse_args()
    sizes = [50_000] if args.quick else args.cells

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                         text=True).stdout.split(":")[-1].strip()
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f.startswith("avx")})
    print(f"# CPU: {cpu} ({os.cpu_count()} CPUs; {' '.join(flags)})", flush=True)
    with tempfile.TemporaryDirectory(prefix="b2s_scale_", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        bulk = tmp / "bulk.tsv"
        write_bulk(bulk)
        before_bin = bin_of_rev(args.before_rev, tmp / "before") if args.before_rev else None
        rows = []
        for n in sizes:
            atlas = tmp / f"atlas_{n}.h5ad"
            info = write_atlas(atlas, n)
            row = {"cells": n, **info}
            row["after"] = run_prepare(REPO / "bin", atlas, bulk, tmp / f"after_{n}",
                                       args.max_single_cells)
            if before_bin is not None:
                row["before"] = run_prepare(before_bin, atlas, bulk, tmp / f"before_{n}",
                                            args.max_single_cells)
                row["same_output"] = same_output(tmp / f"after_{n}" / "reference.h5ad",
                                                 tmp / f"before_{n}" / "reference.h5ad")
            if args.omicverse:
                row["omicverse"] = run_omicverse_setup(atlas, bulk, args.omicverse_cap_gb)
            if args.pipeline:
                row["pipeline"] = run_pipeline(atlas, bulk, tmp / f"pipeline_{n}", args.epoch_num)
                shutil.rmtree(tmp / f"pipeline_{n}" / "work", ignore_errors=True)
            atlas.unlink()
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| atlas cells | non-zeros | file (MB) | peak RSS before (MB) | peak RSS after (MB) | "
          "wall before (s) | wall after (s) | same reference.h5ad |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r.get("before", {})
        print(f"| {r['cells']:,} | {r['nnz']:,} | {r['file_mb']} | {b.get('peak_rss_mb', '-')} | "
              f"{r['after']['peak_rss_mb']} | {b.get('wall_s', '-')} | {r['after']['wall_s']} | "
              f"{r.get('same_output', '-')} |")
    ovs = [r for r in rows if "omicverse" in r]
    if ovs:
        print("\n| atlas cells | omicverse set-up: peak RSS (MB) | wall (s) | result |")
        print("|---|---|---|---|")
        for r in ovs:
            o = r["omicverse"]
            print(f"| {r['cells']:,} | {o['peak_rss_mb']} | {o['wall_s']} | "
                  f"{'ok' if o['ok'] else 'failed: ' + o['error']} (cap {o['cap_gb']:g} GB) |")
    piped = [r for r in rows if "pipeline" in r]
    if piped:
        stages = list(piped[0]["pipeline"]["stages"])
        print("\n| stage | " + " | ".join(f"{r['cells']:,} cells: tasks / task s / peak RSS MB" for r in piped)
              + " | peak RSS largest / smallest |")
        print("|---|" + "---|" * (len(piped) + 1))
        for st in stages:
            cells = [r["pipeline"]["stages"].get(st, {}) for r in piped]
            ratio = (cells[-1].get("peak_rss_mb", np.nan) / cells[0].get("peak_rss_mb", np.nan))
            print(f"| {st} | " + " | ".join(f"{c.get('tasks', '-')} / {c.get('task_s', '-')} / "
                                             f"{c.get('peak_rss_mb', '-')}" for c in cells) + f" | {ratio:.2f} |")
        print("| whole run, wall s | " + " | ".join(str(r["pipeline"]["wall_s"]) for r in piped) + " | |")


if __name__ == "__main__":
    main()

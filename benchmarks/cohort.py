#!/usr/bin/env python3
"""Scale benchmark, cohort side: per-group cost of GENERATE/FILTER/QC vs --groups_per_task.

A synthetic cohort of G bulk samples is resampled from the bundled bulk (``assets/test_data``:
each sample one of the six bundled profiles x a depth factor, Poisson noise); without a
samplesheet every sample is its own group, so G samples are G groups. The real pipeline runs
(``nextflow run``, local executor, plain parameters, the bundled reference) with the VAE weights
of one training run (``--vae_weights``: training does not depend on the cohort), once per
(G, --groups_per_task N). From the Nextflow trace of each run: tasks, summed task time
(realtime) and CPU time (realtime x %cpu) per stage, peak RSS per stage, and per group

* task time per group: the GENERATE+FILTER+QC task time of the run / G,
* marginal task time per group: the growth of that summed task time from the smallest to the
  largest G of one N, divided by the extra groups (what one more group costs),
* wall of the per-group stages: first GENERATE start to last QC end.

numba's disk cache is shared by every run (``B2S_CACHE_DIR``) and warmed by the training run.

    .venv/bin/python benchmarks/cohort.py --quick                       # 8 groups, N = 1 and 8
    .venv/bin/python benchmarks/cohort.py --groups 8 64 --per_task 1 8  # the full comparison
    .venv/bin/python benchmarks/cohort.py --groups 256 --per_task 8 --weights vae.pth
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "assets" / "test_data"
STAGES = ("GENERATE", "FILTER", "QC")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MEM = {"B": 1 / 2**20, "KB": 1 / 2**10, "MB": 1.0, "GB": 2**10, "TB": 2**20}


def write_cohort(path: Path, n_groups: int, seed: int = 0) -> None:
    """``n_groups`` bulk samples (genes x samples TSV), resampled from the bundled bulk counts."""
    base = pd.read_csv(TEST_DATA / "bulk_counts.tsv.gz", sep="\t", index_col=0)
    rng = np.random.default_rng(seed)
    pick = np.arange(n_groups) % base.shape[1]
    depth = rng.uniform(0.8, 1.2, n_groups)
    counts = rng.poisson(base.to_numpy(float)[:, pick] * depth)
    cols = [f"S{i + 1:04d}" for i in range(n_groups)]
    pd.DataFrame(counts, index=base.index, columns=cols).to_csv(path, sep="\t")


def _seconds(text: str) -> float:
    """Nextflow's duration text ('1m 3s', '850ms', '-') in seconds."""
    if not text or text == "-":
        return float("nan")
    return sum(float(v) * _UNITS[u] for v, u in re.findall(r"([\d.]+)\s*(ms|s|m|h|d)\b", text))


def _megabytes(text: str) -> float:
    if not text or text == "-":
        return float("nan")
    v, unit = text.split()
    return float(v) * _MEM[unit]


def read_trace(path: Path) -> pd.DataFrame:
    """The trace as a table: stage, realtime_s, cpu_s, peak_rss_mb, submit and end (epoch s)."""
    rows = []
    with open(path) as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            stage = r["name"].split(":")[-1].split(" ")[0]
            real = _seconds(r["realtime"])
            cpu = float(r["%cpu"].rstrip("%")) / 100 if r["%cpu"] not in ("-", "") else float("nan")
            rows.append({"stage": stage, "status": r["status"], "realtime_s": real, "cpu_s": real * cpu,
                         "peak_rss_mb": _megabytes(r["peak_rss"]), "duration_s": _seconds(r["duration"])})
    return pd.DataFrame(rows)


def run_pipeline(launch: Path, bulk: Path, weights: Path, per_task: int, env: dict[str, str],
                 config: Path | None = None) -> dict:
    """One `nextflow run` of the cohort (``config``: an extra ``-c`` file); its trace summary and wall."""
    args = ["--bulk", str(bulk), "--reference", str(TEST_DATA / "reference.h5ad"), "--celltype_key", "celltype",
            "--leiden_size", "10", "--vae_weights", str(weights), "--groups_per_task", str(per_task)]
    return nextflow_run(launch, args + (["-c", str(config)] if config else []), env)


def nextflow_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's `nextflow run`: this checkout's tools and venv, offline."""
    env = dict(os.environ, PATH=f"{REPO / 'tools'}:{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}", **extra)
    env.setdefault("NXF_HOME", str(REPO / ".nxf_home"))
    env.setdefault("NXF_OFFLINE", "true")
    return env


def nextflow_run(launch: Path, args: list[str], env: dict[str, str]) -> dict:
    """`nextflow run` of this checkout in a new folder ``launch`` (results in ``launch/results``):
    its wall seconds and trace (:func:`read_trace`); the end of its output on failure."""
    launch.mkdir(parents=True)
    cmd = ["nextflow", "run", str(REPO), "-ansi-log", "false", "--outdir", "results", *args,
           "-with-trace", "trace.txt"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=launch, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError((proc.stdout + proc.stderr)[-4000:])
    return {"wall_s": wall, "trace": read_trace(launch / "trace.txt")}


def summarise(n_groups: int, per_task: int, res: dict, config: str = "") -> dict:
    """Per-stage and per-group figures of one run."""
    t = res["trace"]
    row = {"groups": n_groups, "per_task": per_task, "config": config, "wall_s": round(res["wall_s"], 1)}
    per_group = t[t["stage"].isin(STAGES)]
    for stage in STAGES:
        s = t[t["stage"] == stage]
        row[f"{stage}_tasks"] = len(s)
        row[f"{stage}_task_s"] = round(float(s["realtime_s"].sum()), 1)
        row[f"{stage}_peak_rss_mb"] = round(float(s["peak_rss_mb"].max()))
    row["task_s"] = round(float(per_group["realtime_s"].sum()), 1)
    row["cpu_s"] = round(float(per_group["cpu_s"].sum()), 1)
    row["task_s_per_group"] = round(row["task_s"] / n_groups, 2)
    row["cpu_s_per_group"] = round(row["cpu_s"] / n_groups, 2)
    other = t[~t["stage"].isin(STAGES)]
    row["other_task_s"] = round(float(other["realtime_s"].sum()), 1)
    return row


def train_weights(root: Path, env: dict[str, str]) -> Path:
    """VAE weights of one `-profile test` run (it also warms numba's shared cache)."""
    nextflow_run(root / "train", ["-profile", "test"], env)
    return root / "train" / "results" / "train_vae" / "vae.pth"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 groups, --groups_per_task 1 and 8")
    p.add_argument("--groups", type=int, nargs="+", default=[8, 64])
    p.add_argument("--per_task", type=int, nargs="+", default=[1, 8])
    p.add_argument("--weights", type=Path, help="vae.pth of a -profile test run (default: train one)")
    p.add_argument("--workdir", default=None, help="where runs are launched (default: a temp dir)")
    p.add_argument("--json", type=Path, help="append each run's row to this JSON-lines file")
    p.add_argument("--config", type=Path, nargs="+", default=[None],
                   help="Nextflow config files, one run each ('none': no extra config), e.g. "
                        "benchmarks/per_group_2cpus.config against none")
    args = p.parse_args()
    sizes, per_task = ([8], [1, 8]) if args.quick else (args.groups, args.per_task)

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                         text=True).stdout.split(":")[-1].strip()
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f.startswith("avx")})
    print(f"# CPU: {cpu} ({os.cpu_count()} CPUs; {' '.join(flags)}); load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="b2s_cohort_", dir=args.workdir) as tmp:
        root = Path(tmp)
        env = nextflow_env(B2S_CACHE_DIR=str(root / "b2s_cache"))
        weights = args.weights.resolve() if args.weights else train_weights(root, env)
        rows = []
        for g in sizes:
            bulk = root / f"cohort_{g}.tsv"
            write_cohort(bulk, g)
            for n in per_task:
                for k, conf in enumerate(args.config):
                    conf = None if conf is None or str(conf) == "none" else conf.resolve()
                    res = run_pipeline(root / f"run_{g}_{n}_{k}", bulk, weights, n, env, conf)
                    row = summarise(g, n, res, conf.name if conf else "")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
    print("\n| groups | groups/task | config | tasks G/F/Q | task s G/F/Q | task s per group | CPU s per group | "
          "peak RSS MB G/F/Q | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['groups']} | {r['per_task']} | {r['config'] or '-'} | {r['GENERATE_tasks']}/{r['FILTER_tasks']}/{r['QC_tasks']} | "
              f"{r['GENERATE_task_s']}/{r['FILTER_task_s']}/{r['QC_task_s']} | {r['task_s_per_group']} | "
              f"{r['cpu_s_per_group']} | {r['GENERATE_peak_rss_mb']}/{r['FILTER_peak_rss_mb']}/"
              f"{r['QC_peak_rss_mb']} | {r['wall_s']} |")
    by_n: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        by_n.setdefault((r["per_task"], r["config"]), []).append(r)
    for (n, _), rs in sorted(by_n.items()):
        rs = sorted(rs, key=lambda r: r["groups"])
        if len(rs) > 1 and rs[-1]["groups"] > rs[0]["groups"]:
            lo, hi = rs[0], rs[-1]
            marg = (hi["task_s"] - lo["task_s"]) / (hi["groups"] - lo["groups"])
            print(f"groups/task {n}: marginal task time per group {lo['groups']} -> {hi['groups']} groups: "
                  f"{marg:.2f} s")
    if not sys.stdout.isatty():
        sys.stdout.flush()


if __name__ == "__main__":
    main()

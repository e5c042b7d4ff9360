#!/usr/bin/env python3
"""FILTER/QC per-task cost of numba's cache: one per task folder (before) vs one shared (now).

scanpy's numba kernels (``@njit(cache=True)``: ``sparse_mean_var_minor_axis``, ``clip_array``,
``rankdata``, ...) are compiled on first use and cached on disk in ``NUMBA_CACHE_DIR``. The
pipeline used to point that at each task's own folder, so every FILTER and QC task compiled them
again; now ``bin/b2s/cache.py`` shares one cache per work directory. This benchmark re-runs the
real FILTER and QC task commands (``.command.sh``) of a finished ``-profile test`` run, in
scratch folders holding the same staged inputs, one after another, alternating

* ``per-task``: an empty cache folder for each task (what every task paid before), and
* ``shared``:   one cache folder warmed by one untimed pass (what every task after the first
  pays now, in the same run and in later runs using the same work directory),

and reports wall and CPU seconds (user+sys of the task's processes) per stage, median over
``--repeats``, and the ratio shared / per-task. CPU seconds are the steadier figure on a busy
machine.

    nextflow run . -profile test --outdir /tmp/b2s_run/results   # launched in /tmp/b2s_run
    .venv/bin/python benchmarks/numba_cache.py --workdir /tmp/b2s_run/work --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("filter_cells.py", "qc.py")


def task_dirs(workdir: Path) -> dict[str, list[Path]]:
    """FILTER and QC task folders of a run, by stage script."""
    out: dict[str, list[Path]] = {s: [] for s in STAGES}
    for cmd in sorted(workdir.glob("*/*/.command.sh")):
        text = cmd.read_text()
        for stage in STAGES:
            if stage in text:
                out[stage].append(cmd.parent)
    return out


def run_task(task: Path, cache: Path) -> tuple[float, float]:
    """Run ``task``'s command in a scratch folder with its staged inputs; (wall, cpu) seconds."""
    with tempfile.TemporaryDirectory(prefix="b2s_numba_bench_") as scratch:
        for entry in task.iterdir():
            if entry.is_symlink():  # staged inputs are symlinks; outputs are regular files
                os.symlink(os.readlink(entry), Path(scratch) / entry.name)
        shutil.copy(task / ".command.sh", Path(scratch) / ".command.sh")
        env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), MPLCONFIGDIR=str(Path(scratch) / ".mpl"),
                   PATH=f"{REPO / 'bin'}:{os.environ.get('PATH', '')}", PYTHONNOUSERSITE="1",
                   OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", ".command.sh"], cwd=scratch, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"{task}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=Path, help="work folder of a finished -profile test run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tasks-per-stage", type=int, default=1, help="groups' tasks re-run per stage")
    args = p.parse_args()
    tasks = {s: d[:args.tasks_per_stage] for s, d in task_dirs(args.workdir).items()}
    if not all(tasks.values()):
        raise SystemExit(f"--workdir {args.workdir}: no FILTER/QC task folders found; pass a finished run's work folder")
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="b2s_numba_shared_") as shared_root:
        shared = Path(shared_root) / "numba"
        for stage, dirs in tasks.items():  # untimed warm-up of the shared cache
            run_task(dirs[0], shared)
        for rep in range(args.repeats):
            for stage, dirs in tasks.items():
                for task in dirs:
                    for mode in ("per-task", "shared"):
                        with tempfile.TemporaryDirectory(prefix="b2s_numba_cold_") as cold:
                            cache = Path(cold) / "numba" if mode == "per-task" else shared
                            wall, cpu = run_task(task, cache)
                        r = results.setdefault(f"{stage}:{mode}", {"wall": [], "cpu": []})
                        r["wall"].append(wall)
                        r["cpu"].append(cpu)
                        print(f"rep {rep} {stage:16s} {task.parent.name}/{task.name[:6]} {mode:8s} "
                              f"wall {wall:6.1f} s  cpu {cpu:6.1f} s", flush=True)
    summary = {}
    print(f"\n{'stage':16s} {'per-task wall':>14s} {'shared wall':>12s} {'ratio':>6s} "
          f"{'per-task cpu':>13s} {'shared cpu':>11s} {'ratio':>6s}")
    for stage in STAGES:
        a, b = results[f"{stage}:per-task"], results[f"{stage}:shared"]
        row = {k: {"per_task": statistics.median(a[k]), "shared": statistics.median(b[k])} for k in ("wall", "cpu")}
        for k in row:
            row[k]["ratio"] = row[k]["shared"] / row[k]["per_task"]
        summary[stage] = row
        print(f"{stage:16s} {row['wall']['per_task']:14.1f} {row['wall']['shared']:12.1f} {row['wall']['ratio']:6.2f} "
              f"{row['cpu']['per_task']:13.1f} {row['cpu']['shared']:11.1f} {row['cpu']['ratio']:6.2f}")
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    print(json.dumps({"numba_cache": summary, "repeats": args.repeats, "cpu": cpu_model,
                      "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()

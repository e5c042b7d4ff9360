#!/usr/bin/env python3
"""FILTER per-task time: the kNN connectivities of b2s.cluster.graph vs scanpy/umap's numba kernels.

Every FILTER task is a fresh Python process, so umap's numba kernels (``sc.pp.neighbors`` ->
``fuzzy_simplicial_set``, not cached on disk) were compiled in every task. This benchmark runs
the real stage script ``bin/filter_cells.py`` in fresh processes, alternating

* ``umap``:   the previous graph step (``sc.pp.neighbors(method='umap')`` then leiden), and
* ``native``: the current one (:func:`b2s.cluster.graph.connectivities`, then the same leiden call),

on the same inputs, and reports per-task wall time (min / median of repeats), the ratio, and
whether both give the same clusters and the same kept cells.

Inputs: generated-like cells = real cells resampled with noise (as tests/unit/test_filter.py):
``bundled`` = scanpy's pbmc68k_reduced (the bundled test data's source; 840 cells = one
``-profile test`` group), and, without ``--quick``, Hao PBMC (``benchmarks/realdata.py``,
log-normalised, 3,000 and 10,000 cells; 10,000 is a default-size group: 5,000 reference cells
x scale_size 2). numba's on-disk cache (``NUMBA_CACHE_DIR``, as the pipeline sets it) is warmed
by one untimed run of each variant first, so only what is not cached is paid per task.

    .venv/bin/python benchmarks/filter_startup.py --quick      # bundled data, 3 repeats
    .venv/bin/python benchmarks/filter_startup.py --repeats 3  # + Hao 3k and 10k cells
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bin"))


def _umap_leiden(pcs, seed):
    """The graph + Leiden step as FILTER ran it before b2s.cluster.graph (scanpy neighbors, umap)."""
    import warnings

    import anndata as ad
    import numpy as np
    import scanpy as sc

    from b2s.cluster.filter import N_NEIGHBORS

    g = ad.AnnData(X=np.zeros((pcs.shape[0], 1), dtype=np.float32))
    g.obsm["X_pca"] = pcs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(g, n_neighbors=min(N_NEIGHBORS, pcs.shape[0] - 1), use_rep="X_pca",
                        random_state=seed)
        sc.tl.leiden(g, flavor="leidenalg", random_state=seed, key_added="leiden")
    return g.obs["leiden"].astype(str).to_numpy()


def worker(variant: str, argv: list[str]) -> None:
    """Run bin/filter_cells.py's main() in this process, with the graph step of ``variant``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("filter_cells", REPO / "bin" / "filter_cells.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if variant == "umap":
        import b2s.cluster.filter

        b2s.cluster.filter._leiden = _umap_leiden
    script.main(argv)


def make_inputs(workdir: Path, quick: bool) -> dict[str, Path]:
    """Generated-like h5ad inputs: real cells resampled with multiplicative noise, seeded."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp

    def resample(x, labels, var_names, n, seed):
        rng = np.random.default_rng(seed)
        idx = rng.choice(x.shape[0], n)
        sub = sp.csr_matrix(x[idx], dtype=np.float32)
        sub.data = np.clip(sub.data + rng.normal(0, 0.1, sub.data.size), 0, None).astype(np.float32)
        obs = pd.DataFrame({"celltype": pd.Categorical(np.asarray(labels)[idx])},
                           index=[f"g{i}" for i in range(n)])
        return ad.AnnData(X=sub, obs=obs, var=pd.DataFrame(index=var_names))

    out = {}
    pb = sc.datasets.pbmc68k_reduced()
    a = resample(pb.raw.X, pb.obs["bulk_labels"].astype(str), pb.raw.var_names, 840, 1)
    out["bundled_840"] = workdir / "bundled_840.h5ad"
    a.write_h5ad(out["bundled_840"])
    if not quick:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from realdata import load_hao

        hao = load_hao()
        sc.pp.normalize_total(hao, target_sum=1e4)
        sc.pp.log1p(hao)
        for n in (3000, 10000):
            a = resample(hao.X, hao.obs["celltype"].astype(str), hao.var_names, n, 2)
            out[f"hao_{n}"] = workdir / f"hao_{n}.h5ad"
            a.write_h5ad(out[f"hao_{n}"])
    return out


def run_task(variant: str, src: Path, outdir: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one FILTER task (fresh process) of ``variant``.

    CPU time is reported beside wall time because the benchmark machine is shared: wall time
    grows with other users' load, CPU time much less.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--",
           "--input", str(src), "--leiden_size", "25", "--seed", "42", "--group", "G",
           "--engine", "native", "--outdir", str(outdir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def compare(a: Path, b: Path) -> dict[str, object]:
    """Do two FILTER outputs keep the same cells with the same clusters?"""
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    sx = json.loads(x.uns["b2s"])["summary"]
    sy = json.loads(y.uns["b2s"])["summary"]
    same_cells = list(x.obs_names) == list(y.obs_names)
    res: dict[str, object] = {"same_kept_cells": same_cells,
                              "kept": (x.n_obs, y.n_obs),
                              "clusters": (sx["n_clusters"], sy["n_clusters"])}
    if same_cells:
        res["identical_labels"] = bool((x.obs["leiden"].astype(str).to_numpy()
                                        == y.obs["leiden"].astype(str).to_numpy()).all())
        res["ari_kept"] = round(adjusted_rand_score(x.obs["leiden"], y.obs["leiden"]), 4)
    else:
        common = x.obs_names.intersection(y.obs_names)
        res["ari_common_kept"] = round(adjusted_rand_score(x.obs.loc[common, "leiden"],
                                                           y.obs.loc[common, "leiden"]), 4)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="bundled data only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", choices=["umap", "native"], help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.worker:
        worker(args.worker, [a for a in rest if a != "--"])
        return

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                         text=True).stdout.split(":")[-1].strip()
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f.startswith("avx")})
    print(f"# CPU: {cpu} ({os.cpu_count()} CPUs; {' '.join(flags)}); python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="b2s_filter_bench_") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(REPO / "bin"), MPLBACKEND="Agg",
                   NUMBA_CACHE_DIR=str(tmp / "numba_cache"), OMP_WAIT_POLICY="PASSIVE")
        inputs = make_inputs(tmp, args.quick)
        rows = []
        for name, src in inputs.items():
            for variant in ("umap", "native"):  # warm the on-disk numba cache (untimed)
                run_task(variant, src, tmp / f"{name}_{variant}", env)
            times: dict[str, list[float]] = {"umap": [], "native": []}
            cpus: dict[str, list[float]] = {"umap": [], "native": []}
            for r in range(args.repeats):
                order = ("umap", "native") if r % 2 == 0 else ("native", "umap")
                for variant in order:
                    wall, cpu_s = run_task(variant, src, tmp / f"{name}_{variant}", env)
                    times[variant].append(wall)
                    cpus[variant].append(cpu_s)
            agree = compare(tmp / f"{name}_umap" / "G.filtered.h5ad",
                            tmp / f"{name}_native" / "G.filtered.h5ad")
            row = {"data": name, **{f"{v}_{s}": round(f(times[v]), 2) for v in times
                                    for s, f in (("min", min), ("median", statistics.median))},
                   **{f"{v}_cpu_median": round(statistics.median(cpus[v]), 2) for v in cpus},
                   "ratio_median": round(statistics.median(times["native"])
                                         / statistics.median(times["umap"]), 3),
                   "cpu_ratio_median": round(statistics.median(cpus["native"])
                                             / statistics.median(cpus["umap"]), 3),
                   "agreement": agree}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| data | umap wall min / median (s) | native wall min / median (s) | native/umap wall (median) | CPU s umap / native (median) | native/umap CPU | same kept cells (umap / native) | clusters umap / native | agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a = r["agreement"]
        agree = (f"identical labels: {a['identical_labels']}" if a["same_kept_cells"]
                 else f"ARI on common kept cells {a['ari_common_kept']}")
        print(f"| {r['data']} | {r['umap_min']} / {r['umap_median']} | {r['native_min']} / "
              f"{r['native_median']} | {r['ratio_median']} | {r['umap_cpu_median']} / "
              f"{r['native_cpu_median']} | {r['cpu_ratio_median']} | {a['same_kept_cells']} "
              f"({a['kept'][0]} / {a['kept'][1]}) | {a['clusters'][0]} / {a['clusters'][1]} | {agree} |")


if __name__ == "__main__":
    main()

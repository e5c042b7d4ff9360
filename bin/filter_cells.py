#!/usr/bin/env python3
"""FILTER: drop generated cells in Leiden clusters smaller than --leiden_size.

Writes <group>.filtered.h5ad (kept cells, all genes, log-normalised X, obsm['X_pca'],
obs['leiden']) and <group>.filter_summary.json. Several groups (``--group a b --input
a.generated.h5ad b.generated.h5ad``, --groups_per_task of the pipeline) are filtered one after the
other in this one process, each exactly as in a run with that group alone.
"""

from __future__ import annotations

import argparse
import json
import os

from b2s.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of FILTER (docs/architecture.md)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="<group>.generated.h5ad from GENERATE (one per --group)")
    p.add_argument("--leiden_size", type=int, default=25,
                   help="drop Leiden clusters with fewer cells than this")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--group", required=True, nargs="+", help="bulk group name(s) (output file prefix), one per --input")
    p.add_argument("--engine", choices=["native", "omicverse"], default="native")
    p.add_argument("--outdir", default=".")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Filter each group's generated cells and write its filtered h5ad and summary JSON."""
    args = parse_args(argv)
    from b2s.errors import InputError, warning_group

    if args.leiden_size < 1:
        raise InputError(f"--leiden_size {args.leiden_size}: must be >= 1; use a positive "
                         "cluster size (default 25)")
    if len(args.input) != len(args.group):
        raise InputError(f"{len(args.input)} --input file(s) for {len(args.group)} --group name(s); "
                         "pass one <group>.generated.h5ad per group, in the same order")
    for path, g in zip(args.input, args.group):
        # the recorded params are those of a one-group run: outputs do not depend on batching
        with warning_group(g if len(args.group) > 1 else None):
            filter_group(argparse.Namespace(**{**vars(args), "input": path, "group": g}))


def filter_group(args: argparse.Namespace) -> None:
    """Filter one group's generated cells (``args.input``, ``args.group``) and write its outputs."""
    import b2s.io as io
    from b2s.cluster.filter import filter_summary, parse_uns_record
    from b2s.qc.metrics import read_cells

    out_h5ad = os.path.join(args.outdir, f"{args.group}.filtered.h5ad")
    out_json = os.path.join(args.outdir, f"{args.group}.filter_summary.json")
    io.guard_inputs([out_h5ad, out_json], [args.input])
    generated = read_cells(args.input, "--input", "GENERATE", need_celltype=False)
    print(f"[filter] {args.group}: read {generated.n_obs} cells x {generated.n_vars} genes "
          f"(engine {args.engine})", flush=True)
    if args.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: omicverse takes long to import

        filtered = omicverse_engine.filter_cells(generated, args.leiden_size, args.seed)
    else:
        from b2s.cluster.filter import filter_cells

        filtered = filter_cells(generated, args.leiden_size, args.seed)
    params = io.params_from_args(args)
    summary = filter_summary(generated, filtered)
    record = {"stage": "filter", "group": args.group, "params": params, "summary": summary}
    if "b2s" in generated.uns:
        record["input"] = parse_uns_record(generated.uns["b2s"])
    filtered.uns["b2s"] = json.dumps(record, default=str)
    io.write_h5ad(filtered, out_h5ad)
    io.write_json(out_json, {"group": args.group, **summary}, params=params)
    print(f"[filter] {args.group}: wrote {out_h5ad} ({filtered.n_obs}/{generated.n_obs} cells "
          f"kept) and {out_json}", flush=True)


if __name__ == "__main__":
    run_cli(main)

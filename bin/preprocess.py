#!/usr/bin/env python3
"""PREPROCESS: bulk group profiles (log10 DESeq2 for counts, log10 TPM for TPM/FPKM) and the log-normalised model input.

Writes model_input.h5ad, bulk_profiles.csv and preprocess_summary.json into --outdir
(see docs/architecture.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import b2s.preprocess as pp
from b2s.errors import run_cli
from b2s.io.artifacts import params_from_args, read_prepared, write_h5ad, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bulk", required=True, help="bulk_counts.tsv (genes x samples raw counts, first column gene)")
    p.add_argument("--groups", required=True, help="groups.csv (columns group,sample)")
    p.add_argument("--reference", required=True, help="reference.h5ad (raw counts, obs['celltype'])")
    p.add_argument("--outdir", default=".")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Normalise the bulk and the reference; write the model input and group profiles."""
    args = parse_args(argv)
    params = params_from_args(args)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    bulk, groups, reference = read_prepared(args.bulk, args.groups, args.reference)
    print(f"preprocessing: {bulk.shape[0]} bulk genes x {bulk.shape[1]} samples, "
          f"reference {reference.n_obs} cells x {reference.n_vars} genes", flush=True)
    profiles = pp.bulk_group_profiles(bulk, groups)
    units = bulk.attrs.get("units", "counts")
    sf = pp.size_factors(bulk) if units == "counts" else None
    model = pp.model_input(reference, bulk.index)
    profiles.to_csv(out / "bulk_profiles.csv")
    write_h5ad(model, out / "model_input.h5ad", params=params)
    write_json(out / "preprocess_summary.json", {
        "n_cells": int(model.n_obs),
        "n_genes_shared": int(model.n_vars),
        "n_bulk_genes": int(bulk.shape[0]),
        "n_reference_genes": int(reference.n_vars),
        "groups": list(profiles.columns),
        "bulk_units": units,
        "bulk_normalisation": "deseq2_median_of_ratios" if sf is not None else "scaled_per_sample_to_1e6",
        "size_factors": {k: round(float(v), 6) for k, v in sf.items()} if sf is not None else None,
        "target_sum": pp.TARGET_SUM,
    }, params=params)
    print(f"model input: {model.n_obs} cells x {model.n_vars} shared genes; "
          f"bulk profiles for {profiles.shape[1]} group(s)", flush=True)


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python3
"""ESTIMATE_FRACTIONS: cell-type fractions per bulk sample and group, and target cell numbers.

Writes fractions.csv, sample_fractions.csv, cell_targets.csv, fractions_barplot.png,
fractions_fit.csv (goodness of fit per sample) and fractions_summary.json into --outdir (see
docs/architecture.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import b2s.fractions.estimate as fr
from b2s.errors import InputError, run_cli
from b2s.fractions.fit import MAX_RESIDUAL, MIN_FIT_R, fit_warnings, goodness_of_fit
from b2s.fractions.markers import read_markers
from b2s.fractions.signature import CELLTYPE_KEY
from b2s.io.artifacts import params_from_args, read_prepared, write_json
from b2s.io.tables import warn
from b2s.plots import plot_composition_contrast, plot_fractions
from b2s.qc.composition import composition_contrast


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bulk", required=True, help="bulk_counts.tsv (genes x samples raw counts, first column gene)")
    p.add_argument("--groups", required=True, help="groups.csv (columns group,sample)")
    p.add_argument("--reference", required=True, help="reference.h5ad (raw counts, obs['celltype'])")
    p.add_argument("--method", default=None, choices=fr.METHODS,
                   help=f"fraction estimator (default {fr.DEFAULT_METHOD}; scaden with --engine omicverse, "
                        "which offers scaden and tape)")
    p.add_argument("--markers", default=None,
                   help="celltype,gene CSV of curated marker genes replacing automatic selection (native engine)")
    p.add_argument("--scale_size", type=float, default=2.0, help="multiplier of the estimated total cell number")
    p.add_argument("--cells_per_group", type=int, default=None,
                   help="cells generated per group, split by the fractions (replaces the estimated total x "
                        "--scale_size); unset: from library sizes (counts) or the reference's cell number (TPM/FPKM)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reference_group", default=None,
                   help="composition_contrast.csv: compare each group with this one (default: the other groups' mean)")
    p.add_argument("--engine", default="native", choices=("native", "omicverse"))
    p.add_argument("--outdir", default=".")
    args = p.parse_args(argv)
    if args.method is None:
        args.method = "scaden" if args.engine == "omicverse" else fr.DEFAULT_METHOD
    if args.markers and args.engine == "omicverse":
        raise InputError(f"--markers {args.markers}: curated markers work with --engine native only "
                         "(omicverse selects its own genes); drop --markers or use --engine native")
    if args.cells_per_group is not None and args.cells_per_group < 1:
        raise InputError(f"--cells_per_group {args.cells_per_group} must be >= 1; use e.g. 2000, or leave it unset")
    if args.scale_size <= 0:
        raise InputError(f"--scale_size {args.scale_size} must be > 0; use e.g. 2 (omicverse's default)")
    return args


def counting_noise(noise_library: dict | None, method: str, units: str) -> dict:
    """fractions_summary.json's record of how ``wls`` set each sample's counting noise: from the
    library size (counts), fitted from the residuals (TPM/FPKM), or not modelled (other methods)."""
    if noise_library:
        return {"rule": "fitted", "effective_library": {k: round(v, 1) for k, v in noise_library.items()}}
    return {"rule": "library_size" if method == "wls" and units == "counts" else "not_modelled"}


def main(argv: list[str] | None = None) -> None:
    """Estimate fractions, average per group, derive target cell numbers, write outputs."""
    args = parse_args(argv)
    params = params_from_args(args)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    bulk, groups, reference = read_prepared(args.bulk, args.groups, args.reference)
    kwargs = {}
    if args.markers:
        shared = sorted(set(map(str, bulk.index)) & set(map(str, reference.var_names)))
        types = sorted(set(reference.obs[CELLTYPE_KEY].astype(str)))
        kwargs["markers"] = read_markers(args.markers, types, shared)
        print(f"using {sum(map(len, kwargs['markers'].values()))} curated markers from {args.markers}", flush=True)
    print(f"estimating fractions: {bulk.shape[1]} samples, {reference.n_obs} reference cells, "
          f"method {args.method}, engine {args.engine}", flush=True)
    t0 = time.perf_counter()
    if args.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: importing omicverse takes tens of seconds

        sample_fr = omicverse_engine.estimate_sample_fractions(bulk, reference, args.method, args.seed)
    else:
        sample_fr = fr.estimate_sample_fractions(bulk, reference, method=args.method, seed=args.seed, **kwargs)
    seconds = time.perf_counter() - t0
    marker_genes = sample_fr.attrs.get("marker_genes")
    noise_library = sample_fr.attrs.get("noise_library")
    if noise_library:
        libs = sorted(noise_library.values())
        print(f"fractions: {bulk.attrs['units']} carries no library size, so the counting noise of each sample "
              f"was fitted from its residuals: effective library {libs[0]:.3g}-{libs[-1]:.3g} reads "
              f"(median {libs[len(libs) // 2]:.3g}; fractions_summary.json counting_noise)", flush=True)
    fit = goodness_of_fit(bulk, reference, sample_fr)
    sample_fr = sample_fr[sorted(sample_fr.columns)]
    sample_fr.index.name = "sample"
    group_fr = fr.group_fractions(sample_fr, groups)
    targets = fr.cell_targets(bulk, groups, reference, group_fr, scale_size=args.scale_size,
                              cells_per_group=args.cells_per_group)
    rule = fr.cell_number_rule(bulk, args.cells_per_group)
    print(f"cell numbers: rule {rule} ({fr.CELL_RULES[rule]}; bulk units {bulk.attrs['units']})", flush=True)

    sample_fr.to_csv(out / "sample_fractions.csv")
    group_fr.to_csv(out / "fractions.csv")
    targets.to_csv(out / "cell_targets.csv", index=False)
    fit.to_csv(out / "fractions_fit.csv")
    for line in fit_warnings(fit):
        warn(line)
    plot_fractions(group_fr, str(out / "fractions_barplot.png"),
                   title=f"Estimated cell-type fractions ({args.method}, {args.engine})")
    contrast = composition_contrast(sample_fr, groups, reference_group=args.reference_group, seed=args.seed)
    contrast.to_csv(out / "composition_contrast.csv", index=False, float_format="%.6g")
    if len(contrast):
        plot_composition_contrast(contrast, str(out / "composition_contrast.png"),
                                  title="Composition change between groups (95 % intervals, bootstrap over samples)")
        if contrast["se"].isna().all():
            print("composition change between groups: a group has one sample, so no intervals "
                  "(composition_contrast.csv has the changes only)", flush=True)
        flagged = contrast[contrast["excludes_0"]]
        print(f"composition change between groups: {len(flagged)} of {len(contrast)} (group, type) intervals "
              f"exclude 0" + (": " + ", ".join(f"{r.group} {r.celltype} {r.change:+.3f}" for r in flagged.itertuples())
                               if len(flagged) else ""), flush=True)
    totals = fr.total_cells(bulk, groups, reference, args.cells_per_group)
    write_json(out / "fractions_summary.json", {
        "method": args.method,
        "engine": args.engine,
        "seconds": round(seconds, 3),
        "n_samples": int(sample_fr.shape[0]),
        "cell_types": list(sample_fr.columns),
        "composition_contrast": {"versus": args.reference_group or "other groups",
                                 "n_excluding_0": int(contrast["excludes_0"].sum()) if len(contrast) else 0},
        "markers": {"source": args.markers or "automatic", "n_genes": len(marker_genes) if marker_genes else None},
        "goodness_of_fit": {
            "thresholds": {"min_fit_r": MIN_FIT_R, "max_residual": MAX_RESIDUAL},
            "samples": {str(s): {"fit_r": round(float(r.fit_r), 4), "residual": round(float(r.residual), 4),
                                 "explained": bool(r.explained)} for s, r in fit.iterrows()},
            "n_unexplained": int((~fit["explained"]).sum()),
        },
        "bulk_units": bulk.attrs["units"],
        "counting_noise": counting_noise(noise_library, args.method, bulk.attrs["units"]),
        "cell_number_rule": {"rule": rule, "description": fr.CELL_RULES[rule]},
        "groups": {
            g: {"n_samples": int((groups["group"] == g).sum()),
                "estimated_total_cells": round(totals[g], 3),
                "target_cells": int(targets.loc[targets["group"] == g, "n_cells"].sum())}
            for g in group_fr.index
        },
    }, params=params)
    print(f"fractions done in {seconds:.1f} s; targets: "
          + ", ".join(f"{g}={int(n)}" for g, n in targets.groupby("group", sort=False)["n_cells"].sum().items()),
          flush=True)


if __name__ == "__main__":
    run_cli(main)

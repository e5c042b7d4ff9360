#!/usr/bin/env python3
"""PREPARE_INPUTS: validate the bulk counts, groups and scRNA-seq reference; write standardised copies.

Outputs in --outdir: bulk_counts.tsv (genes x samples integer counts, first column `gene`; TPM/FPKM
as given, first column `gene:tpm`/`gene:fpkm`; unique symbols), groups.csv (`group,sample,name`:
group = file-name-safe slug, name = as given), reference.h5ad (raw counts CSR float32,
obs['celltype'] categorical, seeded subsample, unique genes) and prepare_summary.json.
Inputs are never modified.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import b2s.io as bio
import b2s.io.reference as refio
from b2s.errors import WARNINGS, InputError, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see docs/architecture.md, PREPARE_INPUTS)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bulk", required=True, help="genes x samples raw count table (TSV/CSV, optionally .gz)")
    p.add_argument("--reference", required=True, help="scRNA-seq reference .h5ad with raw counts")
    p.add_argument("--celltype_key", required=True, help="obs column of the reference holding cell types")
    p.add_argument("--gene_map", default=None, help="optional two-column gene ID -> symbol map for the bulk")
    p.add_argument("--samplesheet", default=None, help="CSV with columns group,sample")
    p.add_argument("--bulk_group", default=None,
                   help=f"comma-separated bulk samples forming ONE group (named '{bio.BULK_GROUP_NAME}')")
    p.add_argument("--bulk_units", default="auto", choices=bio.UNIT_CHOICES,
                   help="units of --bulk: counts, tpm, fpkm or auto (detected, one console line)")
    p.add_argument("--max_single_cells", type=int, default=5000, help="subsample the reference to this many cells")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--outdir", default=".")
    args = p.parse_args(argv)
    # Empty strings come from Nextflow when an optional parameter is unset.
    for key in ("gene_map", "samplesheet", "bulk_group"):
        if getattr(args, key) in ("", "null", "None"):
            setattr(args, key, None)
    if args.max_single_cells < 1:
        raise InputError(f"--max_single_cells {args.max_single_cells}: must be a positive number of cells")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the stage."""
    WARNINGS.clear()  # this run's warnings only (main may be called more than once in one process)
    args = parse_args(argv)
    params = bio.params_from_args(args)
    outdir = Path(args.outdir)
    outputs = {name: outdir / name for name in ("bulk_counts.tsv", "groups.csv", "reference.h5ad",
                                                 "prepare_summary.json")}
    bio.guard_inputs(outputs.values(), [args.bulk, args.reference, args.gene_map, args.samplesheet])

    # The reference first: its genes decide which gene column of the bulk is used.
    bio.log(f"reading reference {args.reference}")
    ref = refio.read_reference(args.reference, args.celltype_key, args.max_single_cells, args.seed)
    stats = ref.uns.pop("prepare")
    bio.log(f"reference: {ref.n_obs} cells x {ref.n_vars} genes, {len(stats['celltype_counts'])} cell types "
            f"(counts from {stats['counts_source']})")

    bio.log(f"reading bulk {args.bulk}")
    mapping = bio.read_gene_map(args.gene_map) if args.gene_map else None
    if mapping is not None:
        targets, target_name = mapping.index, f"--gene_map {args.gene_map} IDs"
    else:
        targets, target_name = ref.var_names, f"--reference {args.reference} genes"
    counts = bio.read_counts(args.bulk, units=args.bulk_units, targets=targets, target_name=target_name)
    decisions = list(counts.attrs.get("decisions", []))
    units = counts.attrs["units"]
    n_genes_input = counts.shape[0] + counts.attrs.get("duplicate_genes_dropped", 0)
    gene_map_stats = None
    if args.gene_map:
        counts = bio.apply_gene_map(counts, args.gene_map, mapping=mapping)
        gene_map_stats = counts.attrs.get("gene_map")
    bio.log(f"bulk: {counts.shape[0]} genes x {counts.shape[1]} samples ({units})")

    groups = bio.read_groups(counts, samplesheet=args.samplesheet, bulk_group=args.bulk_group)
    decisions += groups.attrs.get("decisions", [])
    unused = [s for s in counts.columns if s not in set(groups["sample"])]
    if unused:
        # Kept in bulk_counts.tsv: DESeq2 size factors use every sample, as in the seed.
        bio.log(f"note: {len(unused)} bulk samples are in no group ({bio.examples(unused)}); "
                "they are kept for normalisation only")
    n_groups = groups["group"].nunique()
    bio.log(f"groups: {n_groups} ({bio.examples(groups['name'].unique())})")

    shared = bio.check_shared_genes(counts.index, ref.var_names, f"--bulk {args.bulk}",
                                    f"--reference {args.reference}", bulk_samples=counts.columns,
                                    gene_map=args.gene_map)
    bio.log(f"shared genes: {len(shared)}")

    bio.write_counts(counts, outputs["bulk_counts.tsv"])
    bio.write_groups(groups, outputs["groups.csv"])
    bio.write_h5ad(ref, outputs["reference.h5ad"], params=params)
    summary = {
        "bulk": {
            "n_genes_input": int(n_genes_input),
            "n_genes": int(counts.shape[0]),
            "duplicate_genes_dropped": int(counts.attrs.get("duplicate_genes_dropped", 0)),
            "gene_map": gene_map_stats,
            "n_samples": int(counts.shape[1]),
            "samples": list(counts.columns),
            "samples_without_group": unused,
            "units": units,
            "table_shape": counts.attrs.get("table_shape"),
            "decisions": decisions,
            # None for TPM/FPKM: sums of normalised values are no library sizes
            "library_sizes": {s: int(v) for s, v in counts.sum(axis=0).items()} if units == "counts" else None,
        },
        "groups": {
            "n_groups": int(n_groups),
            "source": "samplesheet" if args.samplesheet else ("bulk_group" if args.bulk_group else "each_sample"),
            "members": {g: list(s) for g, s in groups.groupby("group", sort=False)["sample"]},
            # display name as given per group ID (the file-name-safe slug); renamed: only those that differ
            "names": dict(zip(groups["group"], groups["name"])),
            "renamed_for_files": groups.attrs.get("slugs", {}),
        },
        "reference": {
            "n_cells_before": stats["n_cells_input"],
            "n_cells_after": int(ref.n_obs),
            "n_genes": int(ref.n_vars),
            "counts_source": stats["counts_source"],
            "n_cells_unlabelled_dropped": stats["n_cells_unlabelled_dropped"],
            "duplicate_genes_renamed": stats["duplicate_genes_renamed"],
            "duplicate_cells_renamed": stats["duplicate_cells_renamed"],
            "celltype_counts_before": stats["celltype_counts_input"],
            "celltype_counts": stats["celltype_counts"],
            "n_cells_zero_counts_dropped": stats["n_cells_zero_counts"],
        },
        "warnings": list(WARNINGS),  # every WARNING line of this stage, in order
        "n_shared_genes": len(shared),
        **bio.provenance(params, "PREPARE_INPUTS"),
    }
    bio.write_json(outputs["prepare_summary.json"], summary)
    bio.log(f"wrote {', '.join(str(p) for p in outputs.values())}")


if __name__ == "__main__":
    run_cli(main)

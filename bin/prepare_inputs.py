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

from b2s.errors import run_cli
from b2s.io import BULK_GROUP_NAME, UNIT_CHOICES
from b2s.io.prepare import PrepareOptions, run_prepare


def build_parser() -> argparse.ArgumentParser:
    """Command line (see docs/architecture.md, PREPARE_INPUTS); what the pipeline always passes is required."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bulk", required=True, help="genes x samples raw count table (TSV/CSV, optionally .gz)")
    p.add_argument("--reference", required=True, help="scRNA-seq reference .h5ad with raw counts")
    p.add_argument("--celltype_key", required=True, help="obs column of the reference holding cell types")
    p.add_argument("--gene_map", default=None, help="optional two-column gene ID -> symbol map for the bulk")
    p.add_argument("--samplesheet", default=None, help="CSV with columns group,sample")
    p.add_argument("--bulk_group", default=None,
                   help=f"comma-separated bulk samples forming ONE group (named '{BULK_GROUP_NAME}')")
    p.add_argument("--bulk_units", required=True, choices=UNIT_CHOICES,
                   help="units of --bulk: counts, tpm, fpkm or auto (detected, one console line)")
    p.add_argument("--max_single_cells", type=int, required=True, help="subsample the reference to this many cells")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (checked by b2s.io.prepare.resolve_options)."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the stage (b2s.io.prepare)."""
    run_prepare(PrepareOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)

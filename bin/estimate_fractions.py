#!/usr/bin/env python3
"""ESTIMATE_FRACTIONS: cell-type fractions per bulk sample and group, and target cell numbers.

Writes fractions.csv, sample_fractions.csv, cell_targets.csv, fractions_barplot.png,
fractions_fit.csv (goodness of fit per sample) and fractions_summary.json into --outdir (see
docs/architecture.md).
"""

from __future__ import annotations

import argparse

from b2s.errors import run_cli
from b2s.fractions.estimate import DEFAULT_METHOD, METHODS
from b2s.fractions.stage import FractionsOptions, run_fractions


def build_parser() -> argparse.ArgumentParser:
    """Command line (docs/architecture.md); what the pipeline always passes is required."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bulk", required=True, help="bulk_counts.tsv (genes x samples raw counts, first column gene)")
    p.add_argument("--groups", required=True, help="groups.csv (columns group,sample)")
    p.add_argument("--reference", required=True, help="reference.h5ad (raw counts, obs['celltype'])")
    p.add_argument("--method", default=None, choices=METHODS,
                   help=f"fraction estimator (default {DEFAULT_METHOD}; scaden with --engine omicverse, "
                        "which offers scaden and tape)")
    p.add_argument("--markers", default=None,
                   help="celltype,gene CSV of curated marker genes replacing automatic selection (native engine)")
    p.add_argument("--scale_size", type=float, required=True, help="multiplier of the estimated total cell number")
    p.add_argument("--cells_per_group", type=int, default=None,
                   help="cells generated per group, split by the fractions (replaces the estimated total x "
                        "--scale_size); unset: from library sizes (counts) or the reference's cell number (TPM/FPKM)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--reference_group", default=None,
                   help="composition_contrast.csv: compare each group with this one (default: the other groups' mean)")
    p.add_argument("--engine", required=True, choices=("native", "omicverse"))
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (checked and completed by b2s.fractions.stage.resolve_options)."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Estimate fractions, average per group, derive target cell numbers, write outputs (b2s.fractions.stage)."""
    run_fractions(FractionsOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)

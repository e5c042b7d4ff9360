#!/usr/bin/env python3
"""FILTER: drop generated cells in Leiden clusters smaller than --leiden_size.

Writes <group>.filtered.h5ad (kept cells, all genes, log-normalised X, obsm['X_pca'],
obs['leiden']) and <group>.filter_summary.json. Several groups (``--group a b --input
a.generated.h5ad b.generated.h5ad``, --groups_per_task of the pipeline) are filtered one after the
other in this one process, each exactly as in a run with that group alone.
"""

from __future__ import annotations

import argparse

from b2s.cluster.stage import FilterOptions, run_filter
from b2s.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    """Command line of FILTER (docs/architecture.md); what the pipeline always passes is required."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="<group>.generated.h5ad from GENERATE (one per --group)")
    p.add_argument("--leiden_size", type=int, required=True,
                   help="drop Leiden clusters with fewer cells than this")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--group", required=True, nargs="+", help="bulk group name(s) (output file prefix), one per --input")
    p.add_argument("--engine", choices=["native", "omicverse"], required=True)
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Filter each group's generated cells and write its filtered h5ad and summary JSON (b2s.cluster.stage)."""
    run_filter(FilterOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)

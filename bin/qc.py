#!/usr/bin/env python3
"""QC: compare one group's generated/filtered cells with the reference and the cell targets.

Writes <group>.cellprop.png/.csv (reference vs target vs generated vs filtered proportions),
<group>.correlation.png/.csv (marker correlation; also <group>.correlation_matrix.csv),
<group>.mde.png (joint MDE of reference and filtered cells) and <group>.metrics.json; with --bulk and
--groups also the QC against the group's bulk (b2s.qc.bulk): <group>.bulk_qc.csv (scores of the
generated, filtered and composition-only pseudo-bulks), <group>.bulk_residuals.csv (genes with the
largest residuals) and <group>.bulk_scatter.png.
Several groups (``--group a b --generated ... --filtered ...``, --groups_per_task of the pipeline)
are assessed one after the other in this one process: the reference, its wilcoxon markers and the
kNN classifier fit on it are computed once, and each group's outputs are exactly those of a run
with that group alone.
"""

from __future__ import annotations

import argparse

from b2s.errors import run_cli
from b2s.qc.stage import BULK_TOP_GENES, MDE_MAX_CELLS, QcOptions, run_qc


def build_parser() -> argparse.ArgumentParser:
    """Command line of QC (docs/architecture.md); what the pipeline always passes is required."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", required=True, nargs="+", help="<group>.generated.h5ad from GENERATE (one per --group)")
    p.add_argument("--filtered", required=True, nargs="+", help="<group>.filtered.h5ad from FILTER (one per --group)")
    p.add_argument("--reference", required=True, help="model_input.h5ad from PREPROCESS")
    p.add_argument("--targets", required=True, help="cell_targets.csv from ESTIMATE_FRACTIONS")
    p.add_argument("--group", required=True, nargs="+", help="bulk group name(s) (output file prefix)")
    p.add_argument("--top_markers", type=int, required=True,
                   help="wilcoxon markers per reference cell type for the correlation")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--mde_max_cells", type=int, default=MDE_MAX_CELLS,
                   help="cells per source (reference, filtered) drawn for the MDE plot")
    p.add_argument("--bulk", required=True, help="bulk_counts.tsv from PREPARE_INPUTS (QC against the bulk)")
    p.add_argument("--groups", required=True, help="groups.csv from PREPARE_INPUTS (QC against the bulk)")
    p.add_argument("--bulk_top_genes", type=int, default=BULK_TOP_GENES,
                   help="genes with the largest generated-vs-bulk residuals in <group>.bulk_residuals.csv")
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the QC of each ``--group`` and write its plots, tables and metrics (b2s.qc.stage)."""
    run_qc(QcOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)

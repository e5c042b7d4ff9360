#!/usr/bin/env python3
"""PREPROCESS: bulk group profiles (log10 DESeq2 for counts, log10 TPM for TPM/FPKM) and the log-normalised model input.

Writes model_input.h5ad, bulk_profiles.csv and preprocess_summary.json into --outdir
(see docs/architecture.md).
"""

from __future__ import annotations

import argparse

from b2s.errors import run_cli
from b2s.preprocess import PreprocessOptions, run_preprocess


def build_parser() -> argparse.ArgumentParser:
    """Command line (docs/architecture.md); what the pipeline always passes is required."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bulk", required=True, help="bulk_counts.tsv (genes x samples raw counts, first column gene)")
    p.add_argument("--groups", required=True, help="groups.csv (columns group,sample)")
    p.add_argument("--reference", required=True, help="reference.h5ad (raw counts, obs['celltype'])")
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Normalise the bulk and the reference; write the model input and group profiles (b2s.preprocess)."""
    run_preprocess(PreprocessOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)

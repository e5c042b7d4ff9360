#!/usr/bin/env python3
"""REPORT: one self-contained HTML page (bulk2single_report.html) summarising a run, the same
results as MultiQC custom content (multiqc/*_mqc.tsv|yaml) and the parameters the run used
(pipeline_info/params.json, and params_decided.json: each value a stage decided, with the one
given; b2s.report.run_params).

--inputs is a folder holding the stage outputs (fractions, training, per-group FILTER and QC
files); missing optional files are reported in the page, not as errors.
"""

from __future__ import annotations

import argparse

from b2s.errors import run_cli
from b2s.report.build import ReportOptions, run_report


def build_parser() -> argparse.ArgumentParser:
    """Command line of REPORT (docs/architecture.md)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", required=True, help="folder with all stage outputs")
    p.add_argument("--params", required=True,
                   help="params.json of the workflow: the params as given (and the values the workflow decided)")
    p.add_argument("--versions", required=True, help="collected versions.yml")
    p.add_argument("--params_out", required=True, help="where to write the parameters the run used")
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Write the used parameters, the report and the MultiQC content (b2s.report.build)."""
    run_report(ReportOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python3
"""REPORT: one self-contained HTML page (bulk2single_report.html) summarising a run, the same
results as MultiQC custom content (multiqc/*_mqc.tsv|yaml) and the parameters the run used
(pipeline_info/params.json: each value a stage decided, with the one given; b2s.report.run_params).

--inputs is a folder holding the stage outputs (fractions, training, per-group FILTER and QC
files); missing optional files are reported in the page, not as errors.
"""

from __future__ import annotations

import argparse

from b2s.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of REPORT (docs/architecture.md)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", required=True, help="folder with all stage outputs")
    p.add_argument("--params", default=None,
                   help="params.json of the workflow: the params as given (and the values the workflow decided)")
    p.add_argument("--versions", default=None, help="collected versions.yml")
    p.add_argument("--params_out", default=None,
                   help="where to write the parameters the run used (default <outdir>/pipeline_info/params.json)")
    p.add_argument("--outdir", default=".")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Write the report, the MultiQC content and the used parameters into ``--outdir``."""
    args = parse_args(argv)
    from b2s.report.build import make_report

    make_report(args.inputs, args.outdir, args.params, args.versions, args.params_out)


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python3
"""REPORT: one self-contained HTML page (bulk2single_report.html) summarising a run, and the
same results as MultiQC custom content (multiqc/*_mqc.tsv|yaml, b2s.report.multiqc).

--inputs is a folder holding the stage outputs (fractions, training, per-group FILTER and QC
files); missing optional files are reported in the page, not as errors.
"""

from __future__ import annotations

import argparse
import json
import os

from b2s.errors import InputError, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of REPORT (docs/architecture.md)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", required=True, help="folder with all stage outputs")
    p.add_argument("--params", default=None, help="params.json of the run (shown in the header)")
    p.add_argument("--versions", default=None, help="collected versions.yml")
    p.add_argument("--outdir", default=".")
    return p.parse_args(argv)


def read_params(path: str | None) -> dict:
    """The run parameters from ``--params`` (a JSON object), or {} without the option."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise InputError(f"--params {path} does not exist; pass the params.json written by the "
                         "pipeline or omit --params")
    try:
        data = json.loads(open(path, encoding="utf-8").read() or "{}")
    except ValueError as err:
        raise InputError(f"--params {path} is not valid JSON ({err.msg} at line {err.lineno}); "
                         "pass the params.json written by the pipeline") from None
    if not isinstance(data, dict):
        raise InputError(f"--params {path} must hold a JSON object (found {type(data).__name__}); "
                         "pass the params.json written by the pipeline")
    return data.get("params", data) if isinstance(data.get("params"), dict) else data


def main(argv: list[str] | None = None) -> None:
    """Build ``bulk2single_report.html`` in ``--outdir``."""
    args = parse_args(argv)
    from b2s.report.build import build_report

    if not os.path.isdir(args.inputs):
        raise InputError(f"--inputs {args.inputs} is not a folder; pass the folder holding the "
                         "stage outputs")
    if args.versions and not os.path.isfile(args.versions):
        raise InputError(f"--versions {args.versions} does not exist; pass the collected "
                         "versions.yml or omit --versions")
    params = read_params(args.params)
    out = os.path.join(args.outdir, "bulk2single_report.html")
    build_report(args.inputs, out, params, args.versions)
    print(f"[report] wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)", flush=True)
    from b2s.report.multiqc import write_multiqc

    mqc = write_multiqc(args.inputs, os.path.join(args.outdir, "multiqc"), params)
    print(f"[report] MultiQC custom content: {', '.join(os.path.basename(p) for p in mqc)}", flush=True)


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python3
"""Validate the pipeline's parameters (and samplesheet) against nextflow_schema.json.

Run on the head node before any task starts (``bin/run_guard.py start`` calls
:func:`b2s.head.params.validate_run` directly; ``--print-help`` is the pipeline's ``--help``).
Prints one ``ERROR: ...`` line per problem (exit 2) and ``WARN: ...`` lines for unknown parameters;
exit 3 when ``jsonschema`` is missing, so the caller can defer validation.

    validate_params.py --schema nextflow_schema.json --params-json params.json [--executor local]
    validate_params.py --schema nextflow_schema.json --print-help
"""

from __future__ import annotations

import argparse
import sys

from b2s.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schema", required=True, help="nextflow_schema.json of the pipeline")
    p.add_argument("--params-json", help="JSON object of the run's params (as Nextflow holds them)")
    p.add_argument("--print-help", action="store_true", help="print the parameter help from the schema and exit")
    p.add_argument("--no-samplesheet", action="store_true", help="do not open --samplesheet")
    p.add_argument("--executor", default=None,
                   help="the run's process executor (e.g. local, slurm): also run the head-node checks of "
                        "files, folders and the device (b2s.head.preflight)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Validate, print one line per problem, exit 2 on errors."""
    args = parse_args(argv)
    from b2s.head.params import validate_cli

    status = validate_cli(args.schema, args.params_json, print_help=args.print_help, executor=args.executor,
                          check_samplesheet=not args.no_samplesheet)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python3
"""Validate the pipeline's parameters (and samplesheet) against nextflow_schema.json.

Run on the head node before any task starts (``bin/run_guard.py start`` calls :func:`validate`;
``--print-help`` is the pipeline's ``--help``). Prints one ``ERROR: ...`` line per problem
(exit 2) and ``WARN: ...`` lines for unknown parameters; exit 3 when ``jsonschema`` is missing,
so the caller can defer validation.

    validate_params.py --schema nextflow_schema.json --params-json params.json [--executor local]
    validate_params.py --schema nextflow_schema.json --print-help
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from b2s.errors import InputError, run_cli

EXIT_NO_JSONSCHEMA = 3


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
    import b2s.head.schema as bschema

    schema_path = Path(args.schema)
    try:
        schema = bschema.load_schema(schema_path)
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--schema {schema_path}: cannot be read ({err}); pass the pipeline's nextflow_schema.json")
    if args.print_help:
        print(bschema.help_text(schema), end="")
        return
    if not args.params_json:
        raise InputError("--params-json is missing; pass the JSON file of the run's params")
    try:
        params = json.loads(Path(args.params_json).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--params-json {args.params_json}: cannot be read ({err}); write the params as a JSON object")
    if not isinstance(params, dict):
        raise InputError(f"--params-json {args.params_json}: not a JSON object; write the params as a JSON object")
    try:
        import jsonschema  # noqa: F401  (only to tell the caller that validation is impossible here)
    except ImportError:
        print("jsonschema is not installed for this python3: parameters not validated",
              file=sys.stderr)
        sys.exit(EXIT_NO_JSONSCHEMA)

    res = validate(params, schema, schema_path, executor=args.executor, check_samplesheet=not args.no_samplesheet)
    for line in res.warnings:
        print(f"WARN: {line}", file=sys.stderr)
    for line in res.errors:
        print(f"ERROR: {line}", file=sys.stderr)
    if res.errors:
        sys.exit(2)


def validate(params: dict, schema: dict, schema_path: Path, executor: str | None = None,
             check_samplesheet: bool = True):
    """The schema and head-node checks of ``params`` (``b2s.head.params.validate_params``), and that a
    ``--vae_weights`` sidecar fits the settings: a result with ``errors`` and ``warnings`` lines.
    Needs jsonschema."""
    import b2s.head.params as bp

    res = bp.validate_params(params, schema, schema_dir=schema_path.resolve().parent,
                             check_samplesheet=check_samplesheet, executor=executor)
    # --vae_weights: its sidecar must fit the settings (b2s.model.weights, stdlib only)
    if params.get("vae_weights") and Path(str(params["vae_weights"])).is_file():
        from b2s.model.weights import check_weights

        try:
            hidden = params.get("hidden_size")
            check_weights(str(params["vae_weights"]), None, hidden if isinstance(hidden, int) else None,
                          warn_fn=res.warnings.append)
        except InputError as err:
            res.errors.append(str(err))
    return res


if __name__ == "__main__":
    run_cli(main)

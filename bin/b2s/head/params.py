"""Pipeline parameters: validation against ``nextflow_schema.json`` and the ``--help`` text.

Runs on the Nextflow head node (``bin/validate_params.py``, and :func:`b2s.head.guard.start`) before any task starts, so it imports only the standard library and ``jsonschema``
(no numpy/pandas: the head node may have a bare ``python3``).

Every problem becomes ONE line, e.g.
``ERROR: --epoch_num -5: must be >= 1 (see nextflow run . --help)``.
Unknown parameters (typos such as ``--epochs``) are warnings with a close-match suggestion,
as Nextflow itself would silently ignore them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b2s.errors import InputError
from b2s.head.inputs import validate_markers_file, validate_reference_group, validate_samplesheet
from b2s.head.schema import (
    FLOAT_RE,
    INT_RE,
    PRIORITY,
    SEE_HELP,
    collect_errors,
    error_text,
    format_value,
    help_text,
    is_remote,
    load_schema,
    make_validator,
    schema_properties,
    suggest,
)

#: validate_params.py's exit status when jsonschema is missing, so the caller can defer validation.
EXIT_NO_JSONSCHEMA = 3


@dataclass
class ValidationResult:
    """Outcome of a validation: one-line ``errors`` (fatal) and ``warnings``."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings do not fail a run)."""
        return not self.errors


def coerce_params(params: Mapping[str, Any], props: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Drop unset (null) parameters and fix types that only the transport changed.

    YAML params files give ``1e-4`` as a string and Nextflow gives ``--bulk_group 1`` as an
    integer; such values are converted when the conversion is exact. Anything else is left for
    the schema to reject (``--epoch_num ten`` stays a string and fails).
    """
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        typ = props.get(name, {}).get("type")
        if isinstance(value, str):
            s = value.strip()
            if typ == "integer" and INT_RE.match(s):
                value = int(s)
            elif typ == "number" and FLOAT_RE.match(s):
                value = float(s)
            elif typ == "boolean" and s.lower() in ("true", "false"):
                value = s.lower() == "true"
        elif typ == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = format_value(value)
        out[name] = value
    return out


def unknown_param_warnings(params: Iterable[str], known: Iterable[str]) -> list[str]:
    """Warnings for parameters the schema does not know, with a close-match suggestion.

    Nextflow stores ``--epoch-num`` as both ``epoch-num`` and ``epochNum``; the variants of one
    typed name are reported once.
    """
    known = list(known)
    known_set = set(known)
    by_norm = {re.sub(r"[-_]", "", k).lower(): k for k in known}
    seen: set[str] = set()
    out: list[str] = []
    for name in params:
        if name in known_set:
            continue
        norm = re.sub(r"[-_]", "", name).lower()
        if norm in seen:
            continue
        seen.add(norm)
        hit = by_norm.get(norm) or suggest(name, known)
        tip = f"; did you mean --{hit}?" if hit else "; it is ignored"
        out.append(f"--{name} is not a parameter of this pipeline{tip} {SEE_HELP}")
    return out


def validate_params(params: Mapping[str, Any], schema: Mapping[str, Any],
                    schema_dir: str | Path | None = None, check_samplesheet: bool = True,
                    executor: str | None = None) -> ValidationResult:
    """Validate a params map (as Nextflow holds it) against the pipeline schema.

    Returns one-line errors/warnings (without the ``ERROR:``/``WARN:`` prefix). ``--help`` skips
    everything (the required inputs are not needed to print help). When ``check_samplesheet``
    and ``params['samplesheet']`` is a local file, its rows are validated against the schema
    named by the property's ``schema`` key, relative to ``schema_dir`` (the pipeline folder).
    With ``executor`` (the run's process executor, e.g. ``local``), the head-node checks of
    :mod:`b2s.head.preflight` (readable inputs, writable --outdir/--checkpoint_dir, --device cuda)
    follow for every parameter the schema accepted.
    """
    res = ValidationResult()
    if params.get("help") in (True, "true"):
        return res
    props = schema_properties(schema)
    res.warnings.extend(unknown_param_warnings(params, props))
    values = coerce_params({k: v for k, v in params.items() if k in props}, props)

    errors: dict[str, str] = {}
    # One line per parameter: its most telling problem (a wrong type before a missing file).
    leaves = sorted(collect_errors(make_validator(schema), values),
                    key=lambda e: PRIORITY.get(e.validator, len(PRIORITY)))
    for err in leaves:
        if err.validator == "required":
            for name in err.validator_value:
                if name not in values and name not in errors:
                    desc = props.get(name, {}).get("description", "")
                    errors[name] = f"--{name}: required but not given ({desc.rstrip('.')}) {SEE_HELP}"
            continue
        name = str(err.path[0]) if err.path else ""
        if name in errors:
            continue
        shown = f"--{name} {format_value(err.instance)}" if name else "parameters"
        errors[name] = f"{shown}: {error_text(err, props.get(name, {}))} {SEE_HELP}"
    order = {n: i for i, n in enumerate(props)}
    res.errors.extend(errors[k] for k in sorted(errors, key=lambda n: order.get(n, len(order))))
    if executor is not None:
        import b2s.head.preflight as preflight

        pre_errors, pre_warnings = preflight.check(values, executor=executor, skip=set(errors))
        res.errors.extend(pre_errors)
        res.warnings.extend(pre_warnings)

    sheet = values.get("samplesheet")
    if (check_samplesheet and "samplesheet" not in errors and isinstance(sheet, str)
            and not is_remote(sheet) and props.get("samplesheet", {}).get("schema")):
        base = Path(schema_dir) if schema_dir is not None else Path(".")
        sheet_schema = load_schema(base / props["samplesheet"]["schema"])
        res.errors.extend(validate_samplesheet(sheet, sheet_schema))
    if values.get("samplesheet") and values.get("bulk_group"):
        res.errors.append("--samplesheet and --bulk_group were both given: pass only one "
                          f"(the samplesheet can hold many groups) {SEE_HELP}")
    if values.get("reference_group") and "reference_group" not in errors:
        res.errors.extend(validate_reference_group(values, check_samplesheet and "samplesheet" not in errors))
    if values.get("engine") == "omicverse" and values.get("bulk_shift", "none") not in ("none", "auto"):
        res.warnings.append(f"--bulk_shift {values['bulk_shift']} is ignored with --engine omicverse (its generation "
                            "never reads the bulk: the cells carry composition only); use --engine native for it")
    if values.get("engine") == "omicverse" and values.get("fraction_method") in ("nnls", "wls"):
        res.errors.append(f"--fraction_method {values['fraction_method']} is not part of omicverse: with --engine "
                          f"omicverse use scaden (its default, also what an unset --fraction_method gives) or tape {SEE_HELP}")
    markers = values.get("markers")
    if markers and "markers" not in errors:
        if values.get("engine") == "omicverse":
            res.errors.append(f"--markers {markers}: curated markers work with --engine native only (omicverse "
                              f"selects its own genes); drop --markers or use --engine native {SEE_HELP}")
        elif isinstance(markers, str) and not is_remote(markers) and Path(markers).is_file():
            res.errors.extend(validate_markers_file(markers))
    return res


def validate_run(params: Mapping[str, Any], schema: Mapping[str, Any], schema_path: str | Path,
                 executor: str | None = None, check_samplesheet: bool = True) -> ValidationResult:
    """:func:`validate_params` (``schema_dir``: the schema's folder), then that a ``--vae_weights``
    sidecar fits the settings (b2s.model.weights). Needs jsonschema."""
    res = validate_params(params, schema, schema_dir=Path(schema_path).resolve().parent,
                          check_samplesheet=check_samplesheet, executor=executor)
    if params.get("vae_weights") and Path(str(params["vae_weights"])).is_file():
        from b2s.model.weights import check_weights

        hidden = params.get("hidden_size")
        try:
            check_weights(str(params["vae_weights"]), None, hidden if isinstance(hidden, int) else None,
                          warn_fn=res.warnings.append)
        except InputError as err:
            res.errors.append(str(err))
    return res


def validate_cli(schema_path: str | Path, params_json: str | None, print_help: bool = False,
                 executor: str | None = None, check_samplesheet: bool = True) -> int:
    """bin/validate_params.py: the help text, or one ``ERROR:`` line per problem and ``WARN:`` lines
    on stderr; the exit status (0, 2 on errors, :data:`EXIT_NO_JSONSCHEMA` without jsonschema)."""
    schema_path = Path(schema_path)
    try:
        schema = load_schema(schema_path)
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--schema {schema_path}: cannot be read ({err}); pass the pipeline's nextflow_schema.json")
    if print_help:
        print(help_text(schema), end="")
        return 0
    if not params_json:
        raise InputError("--params-json is missing; pass the JSON file of the run's params")
    try:
        params = json.loads(Path(params_json).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--params-json {params_json}: cannot be read ({err}); write the params as a JSON object")
    if not isinstance(params, dict):
        raise InputError(f"--params-json {params_json}: not a JSON object; write the params as a JSON object")
    try:
        import jsonschema  # noqa: F401  (only to tell the caller that validation is impossible here)
    except ImportError:
        print("jsonschema is not installed for this python3: parameters not validated", file=sys.stderr)
        return EXIT_NO_JSONSCHEMA
    res = validate_run(params, schema, schema_path, executor=executor, check_samplesheet=check_samplesheet)
    for line in res.warnings:
        print(f"WARN: {line}", file=sys.stderr)
    for line in res.errors:
        print(f"ERROR: {line}", file=sys.stderr)
    return 2 if res.errors else 0

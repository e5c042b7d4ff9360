"""Pipeline parameters: validation against ``nextflow_schema.json`` and the ``--help`` text.

Runs on the Nextflow head node (``bin/validate_params.py``, called by ``bin/run_guard.py
start``) before any task starts, so it imports only the standard library and ``jsonschema``
(no numpy/pandas: the head node may have a bare ``python3``).

Every problem becomes ONE line, e.g.
``ERROR: --epoch_num -5: must be >= 1 (see nextflow run . --help)``.
Unknown parameters (typos such as ``--epochs``) are warnings with a close-match suggestion,
as Nextflow itself would silently ignore them.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEE_HELP = "(see nextflow run . --help)"
# Paths with a scheme (s3://, gs://, az://, https://, ...) are staged by Nextflow: not checked here.
_REMOTE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
}
# Which problem of one parameter to report first (sorted() is stable for the rest).
_PRIORITY = {k: i for i, k in enumerate(
    ["required", "type", "enum", "pattern", "format", "minimum", "exclusiveMinimum", "maximum",
     "exclusiveMaximum", "minLength", "maxLength", "exists"])}
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class ValidationResult:
    """Outcome of a validation: one-line ``errors`` (fatal) and ``warnings``."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings do not fail a run)."""
        return not self.errors


# --------------------------------------------------------------------------------------------
# schema access
# --------------------------------------------------------------------------------------------
def load_schema(path: str | Path) -> dict[str, Any]:
    """Read a JSON schema file."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def schema_groups(schema: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The parameter groups (``$defs`` entries) in ``allOf`` order, plus top-level properties.

    Returns ``[(group_key, group_schema), ...]``; top-level ``properties`` (if any) come last
    under the key ``""``.
    """
    defs = schema.get("$defs", schema.get("definitions", {}))
    order = [ref["$ref"].rsplit("/", 1)[-1] for ref in schema.get("allOf", []) if "$ref" in ref]
    order += [k for k in defs if k not in order]
    groups = [(k, defs[k]) for k in order if k in defs]
    if schema.get("properties"):
        groups.append(("", {"title": "Other parameters", "properties": schema["properties"],
                            "required": schema.get("required", [])}))
    return groups


def schema_properties(schema: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every parameter's property schema, flattened over the groups, in schema order."""
    props: dict[str, dict[str, Any]] = {}
    for _, grp in schema_groups(schema):
        props.update(grp.get("properties", {}))
    return props


def schema_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``{param: default}`` for every parameter (``None`` where the schema gives no default)."""
    return {k: p.get("default") for k, p in schema_properties(schema).items()}


def required_params(schema: Mapping[str, Any]) -> list[str]:
    """Names required by any group."""
    return [n for _, grp in schema_groups(schema) for n in grp.get("required", [])]


# --------------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A parameter value as a user typed it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _num(x: Any) -> str:
    return format_value(int(x)) if isinstance(x, float) and x.is_integer() else format_value(x)


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    """Closest match of ``word`` among ``choices`` (case-insensitive), or None."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.6)
    return lower[hit[0]] if hit else None


def _is_remote(path: str) -> bool:
    return bool(_REMOTE_RE.match(path))


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _exists_keyword(validator: Any, wanted: Any, instance: Any, schema: Mapping[str, Any]):
    """``exists: true`` (nf-schema's keyword): a local file or folder must exist."""
    from jsonschema import ValidationError

    if not wanted or not isinstance(instance, str) or _is_remote(instance):
        return
    p = Path(instance)
    if not p.exists():
        yield ValidationError("file not found; check the path (relative paths start at the launch folder)")
    elif schema.get("format") == "file-path" and p.is_dir():
        yield ValidationError("is a folder, not a file; give the file inside it")
    elif schema.get("format") == "directory-path" and not p.is_dir():
        yield ValidationError("is not a folder")


def _unique_entries_keyword(validator: Any, columns: Any, instance: Any, schema: Mapping[str, Any]):
    """``uniqueEntries: [col, ...]`` (nf-schema's keyword): no two rows share these values."""
    from jsonschema import ValidationError

    if not isinstance(instance, list):
        return
    seen: dict[tuple, int] = {}
    for i, row in enumerate(instance):
        if not isinstance(row, Mapping):
            continue
        key = tuple(row.get(c) for c in columns)
        if key in seen:
            shown = ", ".join(f"{c} {format_value(v)!r}" for c, v in zip(columns, key))
            yield ValidationError(f"{shown} listed in data rows {seen[key] + 1} and {i + 1}; "
                                  f"list each {'/'.join(columns)} once", path=[i])
        else:
            seen[key] = i


def make_validator(schema: Mapping[str, Any]) -> Any:
    """A Draft 2020-12 validator that also knows nf-schema's ``exists`` and ``uniqueEntries``."""
    from jsonschema import Draft202012Validator, validators

    cls = validators.extend(Draft202012Validator, {"exists": _exists_keyword,
                                                   "uniqueEntries": _unique_entries_keyword})
    return cls(schema)


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
            if typ == "integer" and _INT_RE.match(s):
                value = int(s)
            elif typ == "number" and _FLOAT_RE.match(s):
                value = float(s)
            elif typ == "boolean" and s.lower() in ("true", "false"):
                value = s.lower() == "true"
        elif typ == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = format_value(value)
        out[name] = value
    return out


def _error_text(err: Any, prop: Mapping[str, Any]) -> str:
    """The problem part of one error line (after ``--name value: ``)."""
    kind, want = err.validator, err.validator_value
    if kind == "type":
        types = want if isinstance(want, list) else [want]
        return "must be " + " or ".join(_TYPE_WORDS.get(t, t) for t in types)
    if kind == "enum":
        text = "must be one of " + ", ".join(format_value(v) for v in want)
        hit = _suggest(str(err.instance), [str(v) for v in want])
        return text + (f"; did you mean {hit}?" if hit else "")
    if kind == "minimum":
        return f"must be >= {_num(want)}"
    if kind == "exclusiveMinimum":
        return f"must be > {_num(want)}"
    if kind == "maximum":
        return f"must be <= {_num(want)}"
    if kind == "exclusiveMaximum":
        return f"must be < {_num(want)}"
    if (kind == "pattern" and isinstance(err.instance, str) and re.search(r"\s", err.instance)
            and prop.get("format") in ("file-path", "directory-path")):
        # Task commands pass staged file names unquoted: a space would split the name.
        return ("the path contains a space, which the pipeline's task commands cannot pass; rename the "
                "file or folder, or link it to a path without spaces (ln -s 'my file' my_file)")
    if kind in ("pattern", "format", "minLength", "maxLength") and prop.get("errorMessage"):
        return str(prop["errorMessage"])
    if kind == "pattern":
        return f"must match the pattern {want}"
    return err.message


def _collect_errors(validator: Any, instance: Any) -> list[Any]:
    """Leaf errors (``allOf``/``$ref`` wrappers are unpacked into their causes)."""
    leaves: list[Any] = []
    stack = list(validator.iter_errors(instance))
    while stack:
        err = stack.pop(0)
        if err.context and err.validator in ("allOf", "anyOf", "oneOf", "$ref"):
            stack.extend(err.context)
        else:
            leaves.append(err)
    return leaves


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
        hit = by_norm.get(norm) or _suggest(name, known)
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
    leaves = sorted(_collect_errors(make_validator(schema), values),
                    key=lambda e: _PRIORITY.get(e.validator, len(_PRIORITY)))
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
        errors[name] = f"{shown}: {_error_text(err, props.get(name, {}))} {SEE_HELP}"
    order = {n: i for i, n in enumerate(props)}
    res.errors.extend(errors[k] for k in sorted(errors, key=lambda n: order.get(n, len(order))))
    if executor is not None:
        import b2s.head.preflight as preflight

        pre_errors, pre_warnings = preflight.check(values, executor=executor, skip=set(errors))
        res.errors.extend(pre_errors)
        res.warnings.extend(pre_warnings)

    sheet = values.get("samplesheet")
    if (check_samplesheet and "samplesheet" not in errors and isinstance(sheet, str)
            and not _is_remote(sheet) and props.get("samplesheet", {}).get("schema")):
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
        elif isinstance(markers, str) and not _is_remote(markers) and Path(markers).is_file():
            res.errors.extend(validate_markers_file(markers))
    return res


def validate_reference_group(values: Mapping[str, Any], read_sheet: bool = True) -> list[str]:
    """``--reference_group`` names a bulk group: one of the samplesheet's (as shown there or as its file
    name, :func:`b2s.groupnames.group_id`); with ``--bulk_group`` there is a single group to compare
    with nothing. Without either, every bulk sample is its own group and GENERATE checks the name."""
    from b2s.groupnames import group_id, group_slug

    ref = str(values["reference_group"])
    if values.get("bulk_group"):
        return [f"--reference_group {ref!r}: with --bulk_group there is one bulk group, nothing to compare with; "
                f"give a --samplesheet with >= 2 groups, or drop --reference_group {SEE_HELP}"]
    sheet = values.get("samplesheet")
    if not (read_sheet and isinstance(sheet, str) and not _is_remote(sheet) and Path(sheet).is_file()):
        return []
    try:
        names = list(dict.fromkeys(r.get("group", "") for r in read_samplesheet(sheet)))
    except (OSError, UnicodeDecodeError, csv.Error, EOFError):
        return []  # validate_samplesheet reports it
    slugs = {group_slug(n) for n in names}
    if not names or ref in names or group_id(ref, slugs) in slugs:
        return []
    return [f"--reference_group {ref!r}: not a group of --samplesheet {sheet} (groups: {', '.join(names)}); "
            f"pass one of them, or leave it unset to compare each group with the cohort {SEE_HELP}"]


def validate_markers_file(path: str | Path) -> list[str]:
    """Format checks of a ``--markers`` file before any task runs (columns celltype,gene, at least
    one row, no empty cell). Cell types and genes are checked against the data in ESTIMATE_FRACTIONS."""
    what = f"--markers {path}"
    fix = "give a CSV with header 'celltype,gene' and one row per marker gene"
    try:
        keys, rows = read_table(path)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as err:
        return [f"{what}: cannot be read ({err}); {fix} {SEE_HELP}"]
    if not keys:
        return [f"{what}: the file is empty; {fix} {SEE_HELP}"]
    missing = [c for c in ("celltype", "gene") if c not in keys]
    if missing:
        return [f"{what}: missing column(s) {', '.join(missing)} (found: {', '.join(k for k in keys if k) or 'none'}); "
                f"{fix} {SEE_HELP}"]
    if not rows:
        return [f"{what}: no marker rows below the header; {fix} {SEE_HELP}"]
    blank = [i + 2 for i, r in enumerate(rows) if not r.get("celltype") or not r.get("gene")]
    if blank:
        return [f"{what}: line(s) {', '.join(map(str, blank[:5]))} have an empty celltype or gene; fill or remove them "
                f"{SEE_HELP}"]
    return []


# --------------------------------------------------------------------------------------------
# samplesheet
# --------------------------------------------------------------------------------------------
def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header keys (lower-case, stripped) and rows of a CSV/TSV (optionally .gz) as dicts.

    Values are stripped; blank lines are skipped. Tab-separated when the header has a tab and
    no comma (as ``b2s.io.tables`` reads it).
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    header = text.split("\n", 1)[0]
    delim = "\t" if "\t" in header and "," not in header else ","
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    rows = [r for r in reader if any(c.strip() for c in r)]
    if not rows:
        return [], []
    keys = [k.strip().lower() for k in rows[0]]
    return keys, [{k: (r[i].strip() if i < len(r) else "") for i, k in enumerate(keys) if k} for r in rows[1:]]


def read_samplesheet(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV/TSV samplesheet (optionally .gz) as dicts with lower-case, stripped keys
    (see :func:`read_table`)."""
    return read_table(path)[1]


def validate_samplesheet(path: str | Path, sheet_schema: Mapping[str, Any]) -> list[str]:
    """One-line errors for a samplesheet checked against ``assets/schema_samplesheet.json``."""
    what = f"--samplesheet {path}"
    try:
        rows = read_samplesheet(path)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as err:
        return [f"{what}: cannot be read ({err}); provide a CSV with columns group,sample {SEE_HELP}"]
    item_props = sheet_schema.get("items", {}).get("properties", {})
    if rows:
        missing = [c for c in sheet_schema.get("items", {}).get("required", []) if c not in rows[0]]
        if missing:
            return [f"{what}: missing column(s) {', '.join(missing)}; the header must be "
                    f"'{','.join(item_props) or 'group,sample'}' {SEE_HELP}"]
    errors: list[str] = []
    for err in _collect_errors(make_validator(sheet_schema), rows):
        if not err.path:
            problem = ("no rows; list one 'group,sample' row per bulk sample" if err.validator == "minItems"
                       else err.message)
            errors.append(f"{what}: {problem} {SEE_HELP}")
            continue
        row = int(err.path[0]) + 1
        col = str(err.path[1]) if len(err.path) > 1 else None
        if err.validator == "uniqueEntries":
            errors.append(f"{what}: {err.message} {SEE_HELP}")
        elif col:
            problem = _error_text(err, item_props.get(col, {}))
            errors.append(f"{what} data row {row}, {col} {format_value(err.instance)!r}: {problem} {SEE_HELP}")
        else:
            errors.append(f"{what} data row {row}: {err.message} {SEE_HELP}")
    return errors


# --------------------------------------------------------------------------------------------
# help
# --------------------------------------------------------------------------------------------
def help_text(schema: Mapping[str, Any], command: str = "nextflow run nf-bulk2single/nf-bulk2single") -> str:
    """Every parameter grouped as in the schema, with type, default, choices and description.

    ``nextflow run . --help`` prints this text (``bin/validate_params.py --print-help``, called by
    ``PIPELINE_INITIALISATION`` in ``subworkflows/local/utils_bulk2single_pipeline``): one source.
    """
    required = set(required_params(schema))
    lines = [schema.get("title", "Parameters"), "", "Usage:",
             f"  {command} -profile docker,gpu --bulk counts.tsv.gz --reference ref.h5ad --outdir results", ""]
    for _, grp in schema_groups(schema):
        lines.append(f"{grp.get('title', 'Parameters')}:")
        if grp.get("description"):
            lines.append(f"  {grp['description']}")
        for name, prop in grp.get("properties", {}).items():
            lines.append("  " + _help_line(name, prop, name in required))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _help_line(name: str, prop: Mapping[str, Any], required: bool) -> str:
    extra = []
    if "enum" in prop:
        extra.append("one of " + ", ".join(format_value(v) for v in prop["enum"]))
    if required:
        extra.append("required")
    elif "default" in prop:
        extra.append(f"default: {format_value(prop['default'])}")
    else:
        extra.append("default: none")
    typ = prop.get("type", "string")
    return f"--{name:<18} [{typ}] {prop.get('description', '')} [{'; '.join(extra)}]"

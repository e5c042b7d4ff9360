"""The parameter schema (nextflow_schema.json): its groups, properties and defaults, the --help text, and the validator with the pipeline's own keywords and one-line error texts."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
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
PRIORITY = {k: i for i, k in enumerate(
    ["required", "type", "enum", "pattern", "format", "minimum", "exclusiveMinimum", "maximum",
     "exclusiveMaximum", "minLength", "maxLength", "exists"])}


INT_RE = re.compile(r"^[+-]?\d+$")


FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


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


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """Closest match of ``word`` among ``choices`` (case-insensitive), or None."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.6)
    return lower[hit[0]] if hit else None


def is_remote(path: str) -> bool:
    return bool(_REMOTE_RE.match(path))


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _exists_keyword(validator: Any, wanted: Any, instance: Any, schema: Mapping[str, Any]):
    """``exists: true`` (nf-schema's keyword): a local file or folder must exist."""
    from jsonschema import ValidationError

    if not wanted or not isinstance(instance, str) or is_remote(instance):
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


def error_text(err: Any, prop: Mapping[str, Any]) -> str:
    """The problem part of one error line (after ``--name value: ``)."""
    kind, want = err.validator, err.validator_value
    if kind == "type":
        types = want if isinstance(want, list) else [want]
        return "must be " + " or ".join(_TYPE_WORDS.get(t, t) for t in types)
    if kind == "enum":
        text = "must be one of " + ", ".join(format_value(v) for v in want)
        hit = suggest(str(err.instance), [str(v) for v in want])
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


def collect_errors(validator: Any, instance: Any) -> list[Any]:
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

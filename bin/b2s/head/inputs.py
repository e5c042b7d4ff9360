"""Checks of the files a run is given: the samplesheet, the markers file, the reference group."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from b2s._constants import CELLTYPE, GENE
from b2s.head.schema import SEE_HELP, collect_errors, error_text, format_value, is_remote, make_validator


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
    if not (read_sheet and isinstance(sheet, str) and not is_remote(sheet) and Path(sheet).is_file()):
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
    missing = [c for c in (CELLTYPE, GENE) if c not in keys]
    if missing:
        return [f"{what}: missing column(s) {', '.join(missing)} (found: {', '.join(k for k in keys if k) or 'none'}); "
                f"{fix} {SEE_HELP}"]
    if not rows:
        return [f"{what}: no marker rows below the header; {fix} {SEE_HELP}"]
    blank = [i + 2 for i, r in enumerate(rows) if not r.get(CELLTYPE) or not r.get(GENE)]
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
    for err in collect_errors(make_validator(sheet_schema), rows):
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
            problem = error_text(err, item_props.get(col, {}))
            errors.append(f"{what} data row {row}, {col} {format_value(err.instance)!r}: {problem} {SEE_HELP}")
        else:
            errors.append(f"{what} data row {row}: {err.message} {SEE_HELP}")
    return errors

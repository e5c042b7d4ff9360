"""Bulk groups: the samplesheet (or one group of every sample) read, checked and written."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from b2s._constants import GROUP, SAMPLE
from b2s.errors import InputError
from b2s.files import atomic_write
from b2s.groupnames import group_slug
from b2s.io.bulk import decide
from b2s.io.tables import (
    BULK_GROUP_NAME,
    check_exists,
    compression_of,
    examples,
    read_first_line,
    sniff_sep,
)


def _slugs(names: Iterable[str], what: str) -> dict[str, str]:
    """``{display name: slug}``; InputError naming both groups when two slugs collide (also when
    they differ only in letter case: one file on case-insensitive file systems)."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in dict.fromkeys(names):
        slug = group_slug(name)
        other = seen.get(slug.lower())
        if other is not None:
            raise InputError(f"{what}: groups {other!r} and {name!r} both become the file name {slug!r}; rename "
                             "one of them so they differ in letters or digits")
        seen[slug.lower()] = name
        out[name] = slug
    return out


def _missing_samples(wanted: list[str], counts: pd.DataFrame, what: str) -> None:
    have = set(counts.columns)
    missing = [s for s in wanted if s not in have]
    in_rows = [s for s in missing if s in set(counts.index)]
    if in_rows:
        raise InputError(f"--bulk: sample(s) {examples(in_rows)} are row names, not columns, of the bulk matrix: "
                         "it looks transposed (samples x genes); transpose it to genes x samples "
                         "(first column gene IDs, one column per sample)")
    if missing:
        raise InputError(f"{what}: sample(s) {examples(missing)} not found in the bulk matrix columns "
                         f"(available: {examples(counts.columns, 8)}); use the bulk matrix's column names")


def read_groups(counts: pd.DataFrame, samplesheet: str | os.PathLike | None = None,
                bulk_group: str | None = None) -> pd.DataFrame:
    """The bulk groups as a DataFrame with columns ``group,sample,name`` (str; ``group`` is the
    file-name-safe ID, ``name`` the name as given).

    * ``samplesheet``: CSV/TSV with columns ``group`` and ``sample`` (extra columns ignored);
      each sample at most once; any group name (``Day 0``, ``IFN-b/6h``): column ``name`` keeps
      it as given, column ``group`` holds its file-name-safe slug (:func:`group_slug`), used by
      every stage as the group's ID; two names with one slug are an error.
    * ``bulk_group`` ``"a,b,c"``: one group named :data:`BULK_GROUP_NAME` (``bulk_group``)
      holding those samples (as the seed's ``bulk_group`` list).
    * neither: every bulk column is its own group (name = sample name, ID its slug made unique).

    Every sample must be a column of ``counts``.
    """
    if samplesheet is not None and bulk_group:
        raise InputError("--samplesheet and --bulk_group were both given; pass only one "
                         "(the samplesheet can hold many groups)")
    if samplesheet is not None:
        what = f"--samplesheet {samplesheet}"
        p = check_exists(samplesheet, "--samplesheet")
        first = read_first_line(p, "--samplesheet")
        try:
            sheet = pd.read_csv(p, sep=sniff_sep(p, first), dtype=str, keep_default_na=False,
                                encoding="utf-8-sig", compression=compression_of(p))
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise InputError(f"{what}: cannot be parsed ({str(err).strip().splitlines()[-1]}); "
                             "provide a CSV with columns group,sample") from None
        sheet.columns = [str(c).strip().lower() for c in sheet.columns]
        need = [c for c in (GROUP, SAMPLE) if c not in sheet.columns]
        if need:
            raise InputError(f"{what}: missing column(s) {', '.join(need)} (found: {examples(sheet.columns)}); "
                             "the header must be 'group,sample'")
        groups = sheet[[GROUP, SAMPLE]].apply(lambda s: s.str.strip())
        if groups.empty:
            raise InputError(f"{what}: no rows; list one 'group,sample' row per bulk sample")
        empty = groups.index[(groups == "").any(axis=1)]
        if len(empty):
            raise InputError(f"{what}: empty group or sample in data row {int(empty[0]) + 1}; fill in both columns")
        dup = groups[SAMPLE][groups[SAMPLE].duplicated()].unique()
        if len(dup):
            raise InputError(f"{what}: sample(s) {examples(dup)} listed more than once; "
                             "list each sample in exactly one group")
        _missing_samples(groups[SAMPLE].tolist(), counts, what)
        slugs = _slugs(groups[GROUP], what)
        groups = pd.DataFrame({GROUP: groups[GROUP].map(slugs), SAMPLE: groups[SAMPLE],
                               "name": groups["group"]})
        renamed = {n: s for n, s in slugs.items() if n != s}
        if renamed:
            decide(groups, "group_slugs", renamed,
                   f"{what}: group names kept as given for display; in file names "
                   + ", ".join(f"{n!r} -> {s!r}" for n, s in renamed.items()))
        groups.attrs["slugs"] = renamed
    elif bulk_group:
        what = f"--bulk_group '{bulk_group}'"
        samples = [s.strip() for s in str(bulk_group).split(",") if s.strip()]
        if not samples:
            raise InputError(f"{what}: no sample names; give comma-separated bulk column names")
        dup = sorted({s for s in samples if samples.count(s) > 1})
        if dup:
            raise InputError(f"{what}: sample(s) {examples(dup)} listed more than once; list each sample once")
        _missing_samples(samples, counts, what)
        groups = pd.DataFrame({GROUP: BULK_GROUP_NAME, SAMPLE: samples, "name": BULK_GROUP_NAME})
    else:
        names, seen = [], set()
        for s in counts.columns:
            base = name = group_slug(s)
            k = 1
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            seen.add(name)
            names.append(name)
        groups = pd.DataFrame({GROUP: names, SAMPLE: list(counts.columns), "name": list(counts.columns)})
    attrs = dict(groups.attrs)
    out = groups.reset_index(drop=True).astype(str)
    out.attrs = attrs
    return out


def write_groups(groups: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``group,sample,name`` CSV (atomically): ``group`` is the file-name-safe slug every stage
    uses as the group's ID, ``name`` the display name as given."""
    cols = [GROUP, SAMPLE, "name"] if "name" in groups.columns else [GROUP, SAMPLE]
    atomic_write(Path(path), lambda tmp: groups[cols].to_csv(tmp, index=False, lineterminator="\n"))

"""Bulk count tables: read any of the supported layouts and units, write the prepared table."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from b2s._constants import GENE
from b2s.errors import InputError
from b2s.files import atomic_write
from b2s.io.tables import (
    ID_HEADERS,
    INTEGRAL_TOL,
    NORMALISED_TOL,
    NORMALISED_TOTAL,
    SYMBOL_HEADERS,
    check_exists,
    compression_of,
    examples,
    log,
    open_text,
    read_first_line,
    sniff_sep,
    warn,
)


def drop_duplicate_genes(counts: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep, per duplicated gene, the row with the largest total count (ties: first), at the
    position where the gene first appears.

    Returns (deduplicated frame, number of rows dropped).
    """
    dup = counts.index.duplicated(keep=False)
    if not dup.any():
        return counts, 0
    totals = counts.sum(axis=1).to_numpy()
    order = pd.DataFrame({"gene": counts.index, "total": totals, "pos": np.arange(len(counts))})
    # Stable sort by total descending keeps the first row among equal totals.
    best = order.sort_values(["total", "pos"], ascending=[False, True], kind="stable").drop_duplicates("gene")
    # Each gene stays where it first appeared.
    first = order.groupby("gene", sort=False)["pos"].min()
    keep = best.assign(first=first.reindex(best["gene"]).to_numpy()).sort_values("first")["pos"].to_numpy()
    return counts.iloc[keep], len(counts) - keep.size


#: Units the bulk table can be given in (``--bulk_units``); ``auto`` detects them (:func:`detect_units`).
BULK_UNITS = ("counts", "tpm", "fpkm")


UNIT_CHOICES = BULK_UNITS + ("auto",)


#: Header of the gene column of PREPARE_INPUTS' bulk_counts.tsv per unit: the file says its units.
UNIT_HEADERS = {"counts": GENE, "tpm": "gene:tpm", "fpkm": "gene:fpkm"}


#: Annotation columns (lower case) of featureCounts output and nf-core/rnaseq's merged tables: never samples.
ANNOTATION_HEADERS = ("chr", "start", "end", "strand", "length", "effective_length", "transcript_id(s)",
                      "transcript_id", "transcript_ids", "gene_biotype", "gene_type", "biotype", "description")


_VERSION_SUFFIX = re.compile(r"\.\d+$")


_FEATURECOUNTS_COLUMNS = ("geneid", "chr", "start", "end", "strand", "length")


#: Aligner / sorter suffixes of BAM file names (featureCounts names sample columns by BAM path).
_BAM_SUFFIX = re.compile(r"(\.(bam|sam|cram))$", re.IGNORECASE)


_BAM_TAIL = re.compile(r"([._](sorted|markdup|markdups|dedup|dedupped|filtered|unique|sortedByCoord|mkdup)"
                       r"|Aligned\.sortedByCoord\.out|Aligned\.out|Aligned\.toTranscriptome\.out)+$",
                       re.IGNORECASE)


def decide(counts_or_attrs: pd.DataFrame | dict, key: str, value: Any, line: str) -> None:
    """One automatic decision of the reader: one console line, recorded under ``attrs['decisions']``
    (PREPARE_INPUTS copies them into prepare_summary.json)."""
    attrs = counts_or_attrs.attrs if isinstance(counts_or_attrs, pd.DataFrame) else counts_or_attrs
    attrs.setdefault("decisions", []).append({"decision": key, "value": value, "message": line})
    log(line)


def _leading_comments(path: Path) -> tuple[list[str], int, str]:
    """The ``#`` lines before the header (featureCounts writes ``# Program:featureCounts ...``),
    the number of raw lines before the header, and the header line."""
    out, n = [], 0
    with open_text(path) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                return out, n, line.rstrip("\r\n")
            if line.strip():
                out.append(line.rstrip("\r\n"))
            n += 1
    return out, n, ""


def _mostly_text(col: pd.Series) -> bool:
    """True when most non-empty values of a column are not numbers (a gene-name or annotation column)."""
    if pd.api.types.is_numeric_dtype(col):
        return False
    v = col.dropna()
    return bool(len(v)) and float(pd.to_numeric(v, errors="coerce").isna().mean()) > 0.5


def sample_names_from_paths(names: list[str]) -> list[str]:
    """Sample names for columns named by alignment file paths (``/data/s1.sorted.bam`` -> ``s1``).

    The folder, the ``.bam``/``.sam``/``.cram`` extension and aligner suffixes (``.sorted``,
    ``Aligned.sortedByCoord.out``, ``.markdup``, ...) are dropped. Names are returned unchanged
    when the cleaned ones would not be unique and non-empty.
    """
    base = [_BAM_SUFFIX.sub("", n.replace("\\", "/").rsplit("/", 1)[-1]) for n in names]
    base = [_BAM_TAIL.sub("", b).rstrip("._-") or b for b in base]
    if len(set(base)) == len(base) and all(base):
        return base
    return list(names)


def _table_shape(comments: list[str], fields_lower: list[str], n_annotation: int) -> str:
    """A name for the table's layout, for messages and prepare_summary.json."""
    if any("featurecounts" in c.lower() for c in comments) or tuple(fields_lower[:6]) == _FEATURECOUNTS_COLUMNS:
        return "featureCounts"
    if fields_lower[:2] == ["gene_id", "gene_name"]:
        return "nf-core/rnaseq merged (gene_id, gene_name)"
    if fields_lower[:2] == ["gene_id", "transcript_id(s)"]:
        return "RSEM merged (gene_id, transcript_id(s))"
    if n_annotation:
        return f"gene table with {n_annotation + 1} annotation columns"
    return "genes x samples"


def choose_gene_column(counts: pd.DataFrame, targets: Iterable[str] | None, target_name: str,
                       what: str) -> pd.DataFrame:
    """Index ``counts`` by the gene column (of ``attrs['gene_columns']``) that matches ``targets`` best.

    ``targets`` are the names the bulk genes must match (the reference's var_names, or the
    ``--gene_map`` IDs); an Ensembl version suffix (``.5``) is dropped from a column when that
    matches more. Without ``targets`` the first column is used. The choice is one console line
    and a decision in ``attrs``.
    """
    columns: dict[str, list[str]] = counts.attrs.get("gene_columns") or {}
    if not columns:
        return counts
    first = next(iter(columns))
    tset = {str(t) for t in targets} if targets is not None else None
    best, best_hits, hits = first, -1, {}
    options: dict[str, list[str]] = {}
    for name, values in columns.items():
        unversioned = [_VERSION_SUFFIX.sub("", v) for v in values]
        for label, vals in ((name, values), (f"{name} (version suffix dropped)", unversioned)):
            if label != name and vals == values:
                continue
            options[label] = vals
            hits[label] = sum(v in tset for v in vals) if tset is not None else 0
            if hits[label] > best_hits:
                best, best_hits = label, hits[label]
    if tset is None:
        best = first
    out = counts.copy()
    # a gene without a name (salmon writes '' where the annotation has none) keeps its first-column ID
    chosen = [v if v else f for v, f in zip(options[best], columns[first])]
    out.index = pd.Index(chosen, name=GENE)
    out.attrs = {k: v for k, v in counts.attrs.items() if k != "gene_columns"}
    if len(columns) > 1 or best != first:
        scores = ", ".join(f"{k}: {v}" for k, v in hits.items())
        line = (f"{what}: gene column '{best}' used ({best_hits} of {len(out)} genes match {target_name}; {scores})"
                if tset is not None else f"{what}: gene column '{best}' used (first of {', '.join(columns)})")
        decide(out, "gene_column", best, line)
    return out


def detect_units(values: np.ndarray, path: Path, shape: str) -> tuple[str, str]:
    """``(units, reason)`` for ``--bulk_units auto``.

    Every sample summing to 1e6 (within :data:`NORMALISED_TOL`) -> ``tpm``; all values integral
    -> ``counts``; otherwise the file name (``tpm``; ``fpkm``/``rpkm``; ``count``) or an
    nf-core/RSEM merged layout (expected counts) decides, and other non-integer tables are
    ``fpkm`` (normalised expression: processed like TPM, which it equals once scaled per sample).

    TPM/FPKM are kept as given, never turned back into pseudo-counts: with a simulated gene-length
    bias, fractions from TPM of full-length-like libraries are much closer to the truth than
    those from their counts, and TPM and counts of unbiased samples give nearly the same
    fractions (benchmarks/README.md, "Bulk units").
    """
    totals = values.sum(axis=0)
    name = path.name.lower()
    if totals.size and np.all(np.abs(totals - NORMALISED_TOTAL) <= NORMALISED_TOL * NORMALISED_TOTAL):
        return "tpm", f"every sample sums to about 1e6 (e.g. {totals[0]:.0f})"
    frac = np.abs(values - np.rint(values)) > INTEGRAL_TOL
    if not frac.any():
        return "counts", "all values are integers"
    share = f"{frac.mean():.0%} of values are not integers"
    if "tpm" in name:
        return "tpm", f"{share} and the file name says TPM"
    if "fpkm" in name or "rpkm" in name:
        return "fpkm", f"{share} and the file name says FPKM/RPKM"
    if "count" in name or shape.startswith(("nf-core", "RSEM", "featureCounts")):
        return "counts", (f"{share} in a {shape} table named '{path.name}': expected counts "
                          "(salmon/RSEM), rounded")
    return "fpkm", (f"{share} and samples do not sum to 1e6 (e.g. {totals[0]:.4g}): normalised expression, "
                    "treated like FPKM (pass --bulk_units counts if these are expected counts)")


def read_counts(path: str | os.PathLike, what: str = "--bulk", units: str = "auto",
                targets: Iterable[str] | None = None, target_name: str = "--reference") -> pd.DataFrame:
    """Read a genes x samples bulk table as upstream tools write it (TSV/CSV, optionally gzipped).

    Layouts: a gene column then samples; nf-core/rnaseq's merged tables (``gene_id``,
    ``gene_name`` or ``transcript_id(s)``, then samples); featureCounts output as written (its
    ``#`` comment line, ``Geneid, Chr, Start, End, Strand, Length``, samples named by BAM paths,
    which are turned into sample names). Leading annotation columns are dropped; of the gene
    columns, the one matching ``targets`` best is used (:func:`choose_gene_column`).

    ``units``: ``counts``, ``tpm``, ``fpkm`` or ``auto`` (:func:`detect_units`). Counts with
    fractional values (salmon/RSEM expected counts) are rounded; TPM/FPKM stay as given.

    Validates: readable, non-empty, at least one sample column, unique non-empty sample
    names, gene IDs present, numeric, no NaN, non-negative, no all-zero sample. Duplicate gene
    rows are collapsed (:func:`drop_duplicate_genes`). Every automatic decision is one console
    line and an entry of ``attrs['decisions']``; ``attrs['units']`` and ``attrs['table_shape']``
    say what was read.

    Returns a DataFrame (int64 for counts, float64 otherwise), index ``gene`` (str), columns =
    sample names (str).
    """
    if units not in UNIT_CHOICES:
        raise InputError(f"--bulk_units '{units}' is unknown; use one of {', '.join(UNIT_CHOICES)}")
    p = check_exists(path, what)
    header = read_first_line(p, what)
    comments, skip = [], 0
    if header.startswith("#"):
        comments, skip, header = _leading_comments(p)
        if not header:
            raise InputError(f"{what} {path}: only '#' comment lines, no table; provide a genes x samples table")
    sep = sniff_sep(p, header)
    try:
        head = pd.read_csv(p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False,
                           compression=compression_of(p), encoding="utf-8-sig", skiprows=skip)
        df = pd.read_csv(p, sep=sep, header=0, index_col=0, dtype={0: str}, compression=compression_of(p),
                         encoding="utf-8-sig", skip_blank_lines=True, skiprows=skip)
    except (EOFError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"{what} {path}: cannot be read, the file looks truncated or corrupted ({err}); "
                         "re-create or re-download it") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {path}: the file is empty; provide a genes x samples count table") from None
    except pd.errors.ParserError as err:
        msg = str(err).strip().splitlines()[-1]
        raise InputError(f"{what} {path}: malformed table ({msg}); every row needs one gene ID and one value "
                         "per sample, separated by tabs or commas") from None

    fields = [str(v).strip() for v in head.iloc[0].tolist()]
    # R's write.table omits the gene column's name: then the header has one field fewer.
    names = fields if len(fields) == df.shape[1] else fields[1:]
    if len(names) != df.shape[1]:
        raise InputError(f"{what} {path}: the header has {len(fields)} fields but rows have {df.shape[1] + 1}; "
                         "give the header one name per column")
    if not names:
        raise InputError(f"{what} {path}: no sample columns found (delimiter "
                         f"{'tab' if sep == chr(9) else 'comma'}); the table needs a gene column followed by "
                         "one column per sample")
    if any(n == "" for n in names):
        raise InputError(f"{what} {path}: a sample column has an empty name in the header; "
                         "give every sample column a name")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise InputError(f"{what} {path}: duplicate sample names {examples(dups)}; make sample names unique")
    df.columns = names
    if (fields and fields[0] == "" and df.shape[1] >= 2
            and np.array_equal(df.index.astype(str).to_numpy(), np.arange(len(df)).astype(str))
            and not pd.api.types.is_numeric_dtype(df.iloc[:, 0])):
        # pandas' to_csv() wrote its row index (0, 1, 2, ...) before the gene column
        log(f"{what} {path}: first column is a row index (0, 1, 2, ...) as pandas' to_csv() writes it; "
            f"genes taken from column '{df.columns[0]}'")
        df = df.set_index(df.columns[0])
    if df.shape[0] == 0:
        raise InputError(f"{what} {path}: header only, no gene rows; provide a genes x samples count table")

    genes = pd.Series(df.index, dtype=object).map(lambda v: v if pd.isna(v) else str(v))
    if genes.isna().any() or (genes.str.strip() == "").any():
        row = int(np.flatnonzero(genes.isna().to_numpy() | (genes.fillna("").str.strip() == "").to_numpy())[0])
        raise InputError(f"{what} {path}: gene ID missing in data row {row + 1}; the first column must hold a "
                         "gene ID on every row")
    gene_name = str(df.index.name) if df.index.name is not None and str(df.index.name).strip() else GENE
    df.index = pd.Index(genes.str.strip().to_numpy(), name=GENE)

    # Leading annotation columns (featureCounts' Chr..Length, nf-core's gene_name / transcript_id(s)).
    gene_headers = set(SYMBOL_HEADERS) | set(ID_HEADERS)
    n_ann = 0
    for col in df.columns:
        low = col.lower()
        if low in ANNOTATION_HEADERS or low in gene_headers or _mostly_text(df[col]):
            n_ann += 1
        else:
            break
    shape = _table_shape(comments, [gene_name.lower()] + [c.lower() for c in df.columns], n_ann)
    attrs: dict[str, Any] = {"table_shape": shape}
    gene_columns = {gene_name: list(df.index)}
    for col in df.columns[:n_ann]:
        if col.lower() in gene_headers or (col.lower() not in ANNOTATION_HEADERS and _mostly_text(df[col])):
            gene_columns[col] = df[col].fillna("").astype(str).str.strip().tolist()
    if n_ann:
        decide(attrs, "table_shape", shape,
               f"{what} {path}: {shape} table; annotation column(s) {examples(df.columns[:n_ann], 8)} are not samples")
        df = df.iloc[:, n_ann:]
        if df.shape[1] == 0:
            raise InputError(f"{what} {path}: {shape} table without sample columns (columns: "
                             f"{examples(names, 8)}); the samples' columns must follow the gene annotation columns")
    text_cols = [c for c in df.columns if _mostly_text(df[c])]
    if text_cols:
        raise InputError(f"{what} {path}: column(s) {examples(text_cols)} hold text, not numbers, after the sample "
                         f"column(s) {examples([c for c in df.columns if c not in text_cols], 3)}; put gene ID/name "
                         "columns first, then one numeric column per sample")
    if any(_BAM_SUFFIX.search(c) or "/" in c for c in df.columns):
        renamed = sample_names_from_paths(list(df.columns))
        if renamed != list(df.columns):
            pairs = [f"'{a}' -> '{b}'" for a, b in zip(df.columns, renamed) if a != b]
            decide(attrs, "sample_names", dict(zip(df.columns, renamed)),
                   f"{what} {path}: sample columns named by alignment files; renamed {len(pairs)}: "
                   f"{examples(pairs, 3)}")
            df.columns = renamed

    # Non-numeric cells: pandas leaves such columns as object dtype.
    for col in df.columns[df.dtypes.map(lambda d: not pd.api.types.is_numeric_dtype(d)).to_numpy()]:
        coerced = pd.to_numeric(df[col], errors="coerce")
        bad = coerced.isna() & df[col].notna()
        if bad.any():
            gene = df.index[np.flatnonzero(bad.to_numpy())[0]]
            raise InputError(f"{what} {path}: non-numeric value {df[col][bad].iloc[0]!r} (gene {gene}, sample "
                             f"{col}); the table must hold numbers only, with gene IDs in the first column")
        df[col] = coerced
    values = df.to_numpy(dtype=np.float64)

    nan = np.isnan(values)
    if nan.any():
        r, c = np.argwhere(nan)[0]
        raise InputError(f"{what} {path}: {int(nan.sum())} missing/NaN values (first: gene {df.index[r]}, sample "
                         f"{df.columns[c]}); the file may be truncated, fill or remove them (counts must be complete)")
    if not np.isfinite(values).all():
        raise InputError(f"{what} {path}: infinite values; provide raw counts or TPM/FPKM")
    neg = values < 0
    if neg.any():
        r, c = np.argwhere(neg)[0]
        raise InputError(f"{what} {path}: {int(neg.sum())} negative values (first: {values[r, c]:g} at gene "
                         f"{df.index[r]}, sample {df.columns[c]}); provide raw counts or TPM/FPKM, not log-ratios "
                         "or batch-corrected values")
    zero = df.columns[(values.sum(axis=0) == 0)]
    if len(zero):
        raise InputError(f"{what} {path}: sample(s) {examples(zero)} have no counts at all; remove them")

    totals = values.sum(axis=0)
    if units == "auto":
        units, why = detect_units(values, p, shape)
        decide(attrs, "units", units, f"{what} {path}: units {units} ({why}; set --bulk_units to override)")
    elif units == "counts" and np.all(np.abs(totals - NORMALISED_TOTAL) <= NORMALISED_TOL * NORMALISED_TOTAL):
        raise InputError(f"{what} {path}: every sample sums to about 1e6 (e.g. {totals[0]:.0f}), as TPM/CPM do, "
                         "but --bulk_units counts was given: these look like normalised values, not raw counts; "
                         "pass --bulk_units tpm (or auto), or provide the raw read counts")
    if units == "counts":
        frac = np.abs(values - np.rint(values)) > INTEGRAL_TOL
        if frac.any():
            r, c = np.argwhere(frac)[0]
            decide(attrs, "rounded", int(frac.sum()),
                   f"{what} {path}: {int(frac.sum())} non-integer counts rounded to the nearest integer (first: "
                   f"{values[r, c]:g} at gene {df.index[r]}, sample {df.columns[c]}; salmon/RSEM expected counts)")
        counts = pd.DataFrame(np.rint(values).astype(np.int64), index=df.index, columns=df.columns)
    else:
        counts = pd.DataFrame(values, index=df.index, columns=df.columns)
    attrs["units"] = units
    attrs["gene_columns"] = gene_columns
    counts.attrs = attrs
    counts = choose_gene_column(counts, targets, target_name, f"{what} {path}")

    counts, n_dup = drop_duplicate_genes(counts)
    if n_dup:
        warn(f"{what} {path}: {n_dup} duplicate gene rows dropped (kept the row with the largest total count)")
    counts.attrs["duplicate_genes_dropped"] = n_dup
    return counts


def write_counts(counts: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write genes x samples values as TSV (atomically); the first column's name says the units
    (:data:`UNIT_HEADERS`: ``gene`` for counts, ``gene:tpm``, ``gene:fpkm``; from ``attrs['units']``)."""
    out = counts.copy()
    out.index.name = UNIT_HEADERS[counts.attrs.get("units", "counts")]
    atomic_write(Path(path), lambda tmp: out.to_csv(tmp, sep="\t", lineterminator="\n"))

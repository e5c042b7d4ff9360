"""Reading and validating the pipeline's inputs; output and provenance helpers used by every stage.

Inputs (PREPARE_INPUTS):

* bulk: genes x samples TSV/CSV (optionally ``.gz``) of counts, TPM or FPKM
  (:func:`read_counts`);
* an optional gene ID -> symbol map (:func:`apply_gene_map`, like omicverse's
  ``ov.bulk.Matrix_ID_mapping``);
* the bulk groups: a samplesheet ``group,sample``, a ``--bulk_group a,b,c`` list, or neither
  (:func:`read_groups`);
* the scRNA-seq reference h5ad with raw counts and a cell-type column
  (:func:`b2s.io.reference.read_reference`, which reads only the cells it keeps).

Every problem a user can fix raises :class:`~b2s.errors.InputError` with ONE line naming the
file or parameter, the problem and the fix. Decisions (documented here because they change data):

* Duplicate gene rows (in the bulk, or several IDs mapped to one symbol): the row with the
  largest total count is kept (ties: the first), as omicverse's ``data_drop_duplicates_index``
  does; the original gene order is kept otherwise.
* Gene map: IDs missing from the map (or mapped to an empty symbol) are dropped (they could
  never match reference genes); Ensembl-style version suffixes (``ENSG..1.5``) are ignored
  when the exact ID is not in the map.
* Units (``--bulk_units``, :func:`detect_units`): counts stay integers (fractional salmon/RSEM
  expected counts are rounded, with a log line); TPM/FPKM are kept as given and marked in
  bulk_counts.tsv's header (:data:`UNIT_HEADERS`) for the later stages.
* Tables as upstream tools write them (nf-core/rnaseq merged tables, featureCounts output with
  its comment line and annotation columns, BAM-path sample names) are read without edits; the
  gene column that matches the reference best is used (:func:`choose_gene_column`).
* Group names are kept as given for display; files use their slug (:func:`group_slug`).

Every such decision is one console line and an entry of ``attrs['decisions']``.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import re
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from b2s.errors import InputError
from b2s.errors import warn as _warn
from b2s.io.groupnames import group_id, group_slug  # noqa: F401  (re-exported: b2s.io.groupnames.group_id)

#: Values within this distance of an integer count as integral (float32 storage, "12.0").
INTEGRAL_TOL = 1e-3
#: Library size of TPM/CPM data: a bulk whose every sample sums to within NORMALISED_TOL of it
#: is normalised data made to look like counts (raw libraries never agree to 1 %).
NORMALISED_TOTAL = 1e6
NORMALISED_TOL = 0.01
#: Fewer shared bulk/reference genes than this gives a warning.
MIN_SHARED_GENES = 50
#: Group name used when ``--bulk_group a,b,c`` defines one group.
BULK_GROUP_NAME = "bulk_group"
CELLTYPE_KEY = "celltype"
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*\d+)\.\d+$")
_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*[GTP]\d{6,}(\.\d+)?$")


# --------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    """Progress line on stdout (flushed, so Nextflow's .command.log shows it live)."""
    print(msg, flush=True)


def warn(msg: str) -> None:
    """Warning line on stderr (``WARNING: ...``, :func:`b2s.errors.warn`)."""
    _warn(msg)


def examples(values: Iterable[Any], n: int = 5) -> str:
    """Up to ``n`` values joined for a message, with an ellipsis when there are more."""
    vals = [str(v) for v in values]
    text = ", ".join(vals[:n])
    return text + (", ..." if len(vals) > n else "")


# --------------------------------------------------------------------------------------------
# bulk counts
# --------------------------------------------------------------------------------------------
def _open_text(path: Path):
    """Open a text file, transparently gunzipping ``.gz`` (also detected by magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


def _compression(path: Path) -> str | None:
    """``"gzip"`` when the file starts with the gzip magic bytes, whatever its name; else None.

    pandas infers compression from the file name only, so a gzip file named ``.tsv`` (or a
    plain file named ``.gz``) would otherwise fail with a misleading decoding error.
    """
    with open(path, "rb") as fh:
        return "gzip" if fh.read(2) == b"\x1f\x8b" else None


def _first_line(path: Path, what: str) -> str:
    """First non-empty line of a (possibly gzipped) text file; InputError when there is none."""
    try:
        with _open_text(path) as fh:
            for line in fh:
                if line.strip():
                    return line.rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{what} {path}: cannot be read ({err}); provide an uncorrupted text (or .gz) file") from None
    raise InputError(f"{what} {path}: the file is empty; provide a non-empty table")


def _sniff_sep(path: Path, first_line: str) -> str:
    """Column delimiter: tab or comma from the header line, else from the file extension."""
    if "\t" in first_line:
        return "\t"
    if "," in first_line:
        return ","
    name = path.name.lower().removesuffix(".gz")
    return "," if name.endswith(".csv") else "\t"


def check_exists(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {path}: file not found; check the path")
    if p.is_dir():
        raise InputError(f"{what} {path}: is a directory, not a file; give the file path")
    return p


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
UNIT_HEADERS = {"counts": "gene", "tpm": "gene:tpm", "fpkm": "gene:fpkm"}
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
    with _open_text(path) as fh:
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
    out.index = pd.Index(chosen, name="gene")
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
    header = _first_line(p, what)
    comments, skip = [], 0
    if header.startswith("#"):
        comments, skip, header = _leading_comments(p)
        if not header:
            raise InputError(f"{what} {path}: only '#' comment lines, no table; provide a genes x samples table")
    sep = _sniff_sep(p, header)
    try:
        head = pd.read_csv(p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False,
                           compression=_compression(p), encoding="utf-8-sig", skiprows=skip)
        df = pd.read_csv(p, sep=sep, header=0, index_col=0, dtype={0: str}, compression=_compression(p),
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
    gene_name = str(df.index.name) if df.index.name is not None and str(df.index.name).strip() else "gene"
    df.index = pd.Index(genes.str.strip().to_numpy(), name="gene")

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
    _atomic_write(Path(path), lambda tmp: out.to_csv(tmp, sep="\t", lineterminator="\n"))


# --------------------------------------------------------------------------------------------
# gene map
# --------------------------------------------------------------------------------------------
#: Header names of a gene-symbol column (lower case; BioMart, GENCODE, 10x and omicverse spellings).
SYMBOL_HEADERS = ("symbol", "gene_symbol", "gene symbol", "gene name", "gene_name", "genename",
                  "hgnc symbol", "hgnc_symbol", "mgi symbol", "mgi_symbol", "external_gene_name", "name")
#: Header names of a gene-ID column (lower case).
ID_HEADERS = ("gene_id", "gene id", "geneid", "gene stable id", "ensembl_gene_id", "ensembl gene id", "id",
              "gene", "ensembl", "gene stable id version", "transcript stable id", "ensembl_id")
_ID_LIKE = re.compile(r"^(ENS[A-Z]*[GTP]\d+(\.\d+)?|[A-Z]{1,3}\d{5,}(\.\d+)?|\d+)$")


def _id_like_fraction(values: pd.Series) -> float:
    """Share of non-empty values that look like gene IDs (Ensembl, accession-style or numeric), not symbols."""
    v = values.dropna().astype(str).str.strip()
    v = v[v != ""]
    return float(v.str.match(_ID_LIKE).mean()) if len(v) else 1.0


def read_gene_map(path: str | os.PathLike, what: str = "--gene_map") -> pd.Series:
    """Read a gene ID -> symbol map (TSV/CSV, optionally gzipped; header optional).

    The first column holds the IDs. The symbol column is the one whose header names a symbol
    (``symbol``, ``Gene name`` as BioMart writes it, ...); without such a header, the first
    other column whose values do not look like IDs (so a BioMart export with ``Gene stable ID
    version`` or ``Transcript stable ID`` second uses the name column, not the versioned IDs).
    The column used is logged. Empty symbols are dropped; for repeated IDs the first wins.
    Returns a Series indexed by ID.
    """
    p = check_exists(path, what)
    first = _first_line(p, what)
    sep = _sniff_sep(p, first)
    fields = [f.strip().strip('"').lower() for f in first.split(sep)]
    if len(fields) < 2:
        raise InputError(f"{what} {path}: needs two columns (gene ID, symbol) separated by a tab or comma; "
                         f"first line is {first[:60]!r}")
    has_header = any(f in SYMBOL_HEADERS or f in ID_HEADERS for f in fields) or fields[0] == ""
    try:
        table = pd.read_csv(p, sep=sep, header=0 if has_header else None, dtype=str, keep_default_na=True,
                            compression=_compression(p), encoding="utf-8-sig")
    except (EOFError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"{what} {path}: cannot be parsed ({str(err).strip().splitlines()[-1]}); "
                         "provide a two-column ID<TAB>symbol table") from None
    if has_header and fields[0] == "" and table.shape[1] > 2:  # pandas to_csv() row index first
        table, fields = table.iloc[:, 1:], fields[1:]
    named = [i for i, f in enumerate(fields) if i > 0 and f in SYMBOL_HEADERS] if has_header else []
    if named:
        sym_col = named[0]
    elif table.shape[1] == 2:
        sym_col = 1
    else:
        candidates = [i for i in range(1, table.shape[1]) if _id_like_fraction(table.iloc[:, i]) < 0.5]
        if not candidates:
            raise InputError(f"{what} {path}: no column holds gene symbols (every column after the first looks like "
                             "IDs); provide ID<TAB>symbol with the symbol column named 'symbol'")
        sym_col = candidates[0]
    if table.shape[1] > 2:
        label = repr(table.columns[sym_col]) if has_header else f"number {sym_col + 1}"
        log(f"{what} {path}: {table.shape[1]} columns; IDs from the first, symbols from column {label}")
    ids = table.iloc[:, 0].astype("string").str.strip()
    sym = table.iloc[:, sym_col].astype("string").str.strip()
    ok = ids.notna() & sym.notna() & (ids != "") & (sym != "")
    mapping = pd.Series(sym[ok].to_numpy(dtype=str), index=ids[ok].to_numpy(dtype=str))
    n_conflict = int(mapping.index.duplicated().sum())
    if n_conflict:
        # BioMart lists a gene once per transcript: repeats with the same symbol are no conflict
        dup = mapping[mapping.index.duplicated(keep=False)]
        n_conflict = int((dup.groupby(level=0).nunique() > 1).sum())
        if n_conflict:
            warn(f"{what} {path}: {n_conflict} gene IDs have several symbols; the first symbol of each is used")
        mapping = mapping[~mapping.index.duplicated(keep="first")]
    if mapping.empty:
        raise InputError(f"{what} {path}: no ID/symbol pairs found; provide a two-column ID<TAB>symbol table")
    return mapping


def _strip_version(ids: Iterable[str]) -> list[str]:
    return [_ENSEMBL_VERSION.sub(r"\1", i) for i in ids]


def apply_gene_map(counts: pd.DataFrame, map_path: str | os.PathLike, bulk_name: str = "--bulk",
                   mapping: pd.Series | None = None) -> pd.DataFrame:
    """Rename bulk genes from IDs to symbols with the map at ``map_path``.

    Unmapped IDs are dropped; several IDs with the same symbol are collapsed to the row with
    the largest total count (as for duplicate genes). Version suffixes of Ensembl-style IDs are
    ignored when the exact ID is not in the map. Stats go to ``result.attrs['gene_map']``.
    ``mapping``: the map already read (:func:`read_gene_map`), to read it once.
    """
    mapping = read_gene_map(map_path) if mapping is None else mapping
    ids = counts.index.to_numpy(dtype=str)
    symbols = mapping.reindex(ids)
    missing = symbols.isna().to_numpy()
    if missing.any():
        unversioned = pd.Series(mapping.to_numpy(), index=_strip_version(mapping.index))
        unversioned = unversioned[~unversioned.index.duplicated(keep="first")]
        retry = unversioned.reindex(_strip_version(ids[missing]))
        symbols.iloc[np.flatnonzero(missing)] = retry.to_numpy()
        missing = symbols.isna().to_numpy()
    n_mapped = int((~missing).sum())
    if n_mapped == 0:
        hint = "check that its first column holds the IDs used in the bulk matrix"
        if np.isin(ids, mapping.to_numpy()).any():
            hint = "the bulk IDs appear in its SECOND column: swap the columns (ID first, symbol second)"
        raise InputError(f"--gene_map {map_path}: none of the {len(ids)} gene IDs of {bulk_name} (e.g. "
                         f"{examples(ids, 3)}) are in the map (IDs e.g. {examples(mapping.index, 3)}); {hint}")
    mapped = counts.iloc[np.flatnonzero(~missing)].copy()
    mapped.index = pd.Index(symbols.to_numpy()[~missing].astype(str), name="gene")
    mapped, n_collapsed = drop_duplicate_genes(mapped)
    log(f"gene map {map_path}: {n_mapped} of {len(ids)} genes mapped, {int(missing.sum())} unmapped dropped, "
        f"{n_collapsed} rows collapsed onto duplicate symbols")
    if missing.sum() > 0.5 * len(ids):
        warn(f"--gene_map {map_path}: {int(missing.sum())} of {len(ids)} bulk gene IDs are not in the map "
             f"(e.g. {examples(ids[missing], 3)}); check the map matches the bulk annotation")
    mapped.attrs = dict(counts.attrs)
    mapped.attrs["gene_map"] = {"n_ids": len(ids), "n_mapped": n_mapped, "n_unmapped": int(missing.sum()),
                                "n_collapsed": n_collapsed}
    return mapped


# --------------------------------------------------------------------------------------------
# groups
# --------------------------------------------------------------------------------------------
# group_slug / group_id live in b2s.io.groupnames (standard library only, for the head-node checks)


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
        first = _first_line(p, "--samplesheet")
        try:
            sheet = pd.read_csv(p, sep=_sniff_sep(p, first), dtype=str, keep_default_na=False,
                                encoding="utf-8-sig", compression=_compression(p))
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise InputError(f"{what}: cannot be parsed ({str(err).strip().splitlines()[-1]}); "
                             "provide a CSV with columns group,sample") from None
        sheet.columns = [str(c).strip().lower() for c in sheet.columns]
        need = [c for c in ("group", "sample") if c not in sheet.columns]
        if need:
            raise InputError(f"{what}: missing column(s) {', '.join(need)} (found: {examples(sheet.columns)}); "
                             "the header must be 'group,sample'")
        groups = sheet[["group", "sample"]].apply(lambda s: s.str.strip())
        if groups.empty:
            raise InputError(f"{what}: no rows; list one 'group,sample' row per bulk sample")
        empty = groups.index[(groups == "").any(axis=1)]
        if len(empty):
            raise InputError(f"{what}: empty group or sample in data row {int(empty[0]) + 1}; fill in both columns")
        dup = groups["sample"][groups["sample"].duplicated()].unique()
        if len(dup):
            raise InputError(f"{what}: sample(s) {examples(dup)} listed more than once; "
                             "list each sample in exactly one group")
        _missing_samples(groups["sample"].tolist(), counts, what)
        slugs = _slugs(groups["group"], what)
        groups = pd.DataFrame({"group": groups["group"].map(slugs), "sample": groups["sample"],
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
        groups = pd.DataFrame({"group": BULK_GROUP_NAME, "sample": samples, "name": BULK_GROUP_NAME})
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
        groups = pd.DataFrame({"group": names, "sample": list(counts.columns), "name": list(counts.columns)})
    attrs = dict(groups.attrs)
    out = groups.reset_index(drop=True).astype(str)
    out.attrs = attrs
    return out


def write_groups(groups: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``group,sample,name`` CSV (atomically): ``group`` is the file-name-safe slug every stage
    uses as the group's ID, ``name`` the display name as given."""
    cols = ["group", "sample", "name"] if "name" in groups.columns else ["group", "sample"]
    _atomic_write(Path(path), lambda tmp: groups[cols].to_csv(tmp, index=False, lineterminator="\n"))


# --------------------------------------------------------------------------------------------
# shared genes
# --------------------------------------------------------------------------------------------
def _ensembl_fraction(names: list[str]) -> float:
    return float(np.mean([bool(_ENSEMBL_ID.match(n)) for n in names])) if names else 0.0


def check_shared_genes(bulk_genes: Iterable[str], ref_genes: Iterable[str], bulk_name: str = "--bulk",
                       ref_name: str = "--reference", min_shared: int = MIN_SHARED_GENES,
                       bulk_samples: Iterable[str] | None = None, gene_map: str | None = None) -> list[str]:
    """Genes present in both (in bulk order); InputError when none, warning when fewer than ``min_shared``.

    The error's advice follows the cause: a transposed bulk (its sample names are reference
    genes), Ensembl IDs on one side and symbols on the other (saying which side to translate:
    ``--gene_map`` translates only the bulk), letter case, version suffixes.
    """
    bulk_list = [str(g) for g in bulk_genes]
    ref_set = {str(g) for g in ref_genes}
    shared = [g for g in bulk_list if g in ref_set]
    if not shared:
        ref_sample = sorted(ref_set)[:200]
        bulk_ids, ref_ids = _ensembl_fraction(bulk_list[:200]) > 0.5, _ensembl_fraction(ref_sample) > 0.5
        samples = [str(c) for c in (bulk_samples if bulk_samples is not None else [])]
        hint = "pass --gene_map ID<TAB>symbol to translate the bulk gene IDs"
        upper = {g.upper() for g in ref_set}
        if samples and sum(c in ref_set for c in samples) >= max(1, len(samples) // 2):
            hint = ("the bulk's column names are reference genes: the matrix looks transposed (samples x genes); "
                    "transpose it to genes x samples")
        elif ref_ids and not bulk_ids:
            hint = ("the reference is keyed by Ensembl IDs and the bulk by symbols "
                    + ("(--gene_map translated the bulk to symbols) " if gene_map else "")
                    + "and --gene_map translates only the bulk: set the reference's var_names to symbols (e.g. "
                    "adata.var_names = adata.var['gene_symbols']) or give a bulk keyed by the same Ensembl IDs"
                    + (" without --gene_map" if gene_map else ""))
        elif bulk_ids and not ref_ids and gene_map:
            hint = (f"--gene_map {gene_map} left the bulk keyed by IDs; check that its symbol column holds gene "
                    "symbols as in the reference")
        elif any(g.upper() in upper for g in bulk_list):
            hint = "names differ only in letter case (species? e.g. human TP53 vs mouse Trp53); use matching annotation"
        elif {_ENSEMBL_VERSION.sub(r"\1", g) for g in bulk_list} & {_ENSEMBL_VERSION.sub(r"\1", g) for g in ref_set}:
            hint = "IDs differ only by version suffix (.N); strip the versions or pass --gene_map"
        elif gene_map:
            hint = (f"the bulk was translated with --gene_map {gene_map}; check that the map's symbols use the "
                    "reference's gene naming")
        raise InputError(f"no genes shared between {bulk_name} and {ref_name} (bulk genes look like "
                         f"{examples(bulk_list, 3)}; reference genes like {examples(sorted(ref_set)[:3], 3)}); {hint}")
    if len(shared) < min_shared:
        warn(f"only {len(shared)} genes shared between {bulk_name} and {ref_name} (fewer than {min_shared}); "
             "fractions and generated cells will be unreliable, check gene annotation or --gene_map")
    return shared


# --------------------------------------------------------------------------------------------
# outputs and provenance (used by every stage)
# --------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    """JSON encoder for numpy scalars/arrays, paths and sets."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` then rename onto ``path``.

    The rename replaces a symlink at ``path`` instead of writing through it, so a staged input
    with the same name as an output (Nextflow work dirs) is never modified.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_prepared(bulk_path: str | os.PathLike, groups_path: str | os.PathLike,
                  reference_path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, ad.AnnData]:
    """Read the files PREPARE_INPUTS wrote (already validated): bulk (``attrs['units']`` from its
    header, :data:`UNIT_HEADERS`), groups, reference."""
    bulk = pd.read_csv(bulk_path, sep="\t", index_col=0)
    units = {v: k for k, v in UNIT_HEADERS.items()}.get(str(bulk.index.name), "counts")
    bulk.index = bulk.index.astype(str)
    bulk.columns = bulk.columns.astype(str)
    groups = pd.read_csv(groups_path, dtype=str)
    if not {"group", "sample"} <= set(groups.columns):
        raise InputError(f"--groups {groups_path}: needs columns group,sample (found: {', '.join(groups.columns)}); "
                         "use the groups.csv written by PREPARE_INPUTS")
    bulk.attrs["units"] = units
    return bulk, groups, ad.read_h5ad(reference_path)


def params_from_args(args: Any) -> dict[str, Any]:
    """An argparse Namespace (or mapping) as a JSON-ready params dict."""
    items = vars(args).items() if not isinstance(args, Mapping) else args.items()
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in items}


def write_json(path: str | os.PathLike, obj: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
    """Write ``obj`` as pretty JSON (atomically); ``params`` is stored under ``"params"``.

    Raises ValueError when neither ``obj`` nor ``params`` supplies ``"params"`` (the contract
    requires every JSON output to record its parameters).
    """
    data = dict(obj)
    if params is not None:
        data["params"] = dict(params)
    if "params" not in data:
        raise ValueError(f"{path}: JSON outputs must carry a 'params' object")
    text = json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n"
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def package_versions(
    packages: Iterable[str] = ("numpy", "pandas", "scipy", "anndata", "scanpy", "torch"),
) -> dict[str, str]:
    """Installed versions of ``packages`` from distribution metadata (no imports)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def provenance(params: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """Provenance block for outputs: stage, params, b2s and package versions (no timestamps,
    so identical runs give identical files)."""
    import b2s

    return {"stage": stage, "b2s_version": b2s.__version__, "versions": package_versions(),
            "params": dict(params)}


def set_uns_params(adata: ad.AnnData, params: Mapping[str, Any]) -> ad.AnnData:
    """Store ``params`` as a JSON string in ``adata.uns['b2s']`` (h5ad-safe); returns ``adata``."""
    adata.uns["b2s"] = json.dumps(dict(params), sort_keys=True, default=_json_default)
    return adata


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike, params: Mapping[str, Any] | None = None,
               compression: str | None = "gzip") -> None:
    """Write ``adata`` atomically (never through a symlinked input); sets ``uns['b2s']`` if ``params``."""
    if params is not None:
        set_uns_params(adata, params)
    if "b2s" not in adata.uns:
        raise ValueError(f"{path}: h5ad outputs must carry uns['b2s'] (pass params)")
    _atomic_write(Path(path), lambda tmp: adata.write_h5ad(tmp, compression=compression))


def guard_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None]) -> None:
    """InputError when an output would replace an input file itself (not a symlink to it).

    Nextflow stages inputs as symlinks, which atomic writes replace safely; a real file at the
    output path that IS an input means ``--outdir`` points at the input folder.
    """
    real_inputs = [Path(i) for i in inputs if i]
    for out in outputs:
        o = Path(out)
        if not o.exists() or o.is_symlink():
            continue
        for i in real_inputs:
            if i.exists() and os.path.samefile(o, i):
                raise InputError(f"--outdir {o.parent}: writing {o.name} would overwrite the input {i}; "
                                 "choose another --outdir")

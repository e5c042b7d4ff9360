"""Reading and validating the pipeline's inputs; output and provenance helpers used by every stage.

Inputs (PREPARE_INPUTS):

* bulk counts: genes x samples TSV/CSV (optionally ``.gz``), first column gene IDs
  (:func:`read_counts`);
* an optional gene ID -> symbol map (:func:`apply_gene_map`, like omicverse's
  ``ov.bulk.Matrix_ID_mapping``);
* the bulk groups: a samplesheet ``group,sample``, a ``--bulk_group a,b,c`` list, or neither
  (:func:`read_groups`);
* the scRNA-seq reference h5ad with raw counts and a cell-type column (:func:`read_reference`).

Every problem a user can fix raises :class:`~b2s.errors.InputError` with ONE line naming the
file or parameter, the problem and the fix. Decisions (documented here because they change data):

* Duplicate gene rows (in the bulk, or several IDs mapped to one symbol): the row with the
  largest total count is kept (ties: the first), as omicverse's ``data_drop_duplicates_index``
  does; the original gene order is kept otherwise.
* Gene map: IDs missing from the map (or mapped to an empty symbol) are dropped (they could
  never match reference genes); Ensembl-style version suffixes (``ENSG..1.5``) are ignored
  when the exact ID is not in the map.
* Counts must be non-negative integers (``12.0`` is accepted). Non-integer values such as
  RSEM expected counts or TPM are rejected with a hint, rather than silently rounded.
* Reference counts are taken from ``layers['counts']``, else ``.raw``, else ``X``: the first
  that holds non-negative integers. Cells with no cell-type label are dropped with a warning;
  cell types with fewer than ``min_cells`` (2) labelled cells are an error (a type needs at
  least two cells for markers and generation). Duplicate cell names are made unique (note).
* Subsampling to ``max_single_cells`` is uniform at random with ``numpy.random.default_rng(seed)``
  except that each type keeps at least ``min_cells`` cells, so no type vanishes by chance.
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
import scipy.sparse as sp

from b2s.errors import InputError
from b2s.errors import warn as _warn

#: Values within this distance of an integer count as integral (float32 storage, "12.0").
INTEGRAL_TOL = 1e-3
#: Library size of TPM/CPM data: a bulk whose every sample sums to within NORMALISED_TOL of it
#: is normalised data made to look like counts (raw libraries never agree to 1 %).
NORMALISED_TOTAL = 1e6
NORMALISED_TOL = 0.01
#: Reference cells whose totals all lie within 5 % of their median are normalised (normalize_total
#: then rounded spreads by ~1 % on 765 genes; raw cell libraries vary several-fold).
NORMALISED_CELL_TOL = 0.05
#: Fewer shared bulk/reference genes than this gives a warning.
MIN_SHARED_GENES = 50
#: Group name used when ``--bulk_group a,b,c`` defines one group.
BULK_GROUP_NAME = "bulk_group"
#: Group names become file names and Nextflow meta ids.
GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
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


def _check_exists(path: str | os.PathLike, what: str) -> Path:
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


def read_counts(path: str | os.PathLike, what: str = "--bulk") -> pd.DataFrame:
    """Read a genes x samples count table (TSV/CSV, optionally gzipped; first column gene IDs).

    Validates: readable, non-empty, at least one sample column, unique non-empty sample
    names, gene IDs present, numeric, no NaN, non-negative, integral (``12.0`` accepted), no
    all-zero sample. Duplicate gene rows are collapsed (:func:`drop_duplicate_genes`).

    Returns an int64 DataFrame, index ``gene`` (str), columns = sample names (str).
    """
    p = _check_exists(path, what)
    header = _first_line(p, what)
    sep = _sniff_sep(p, header)
    try:
        head = pd.read_csv(p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False,
                           compression=_compression(p), encoding="utf-8-sig")
        df = pd.read_csv(p, sep=sep, header=0, index_col=0, dtype={0: str}, compression=_compression(p),
                         encoding="utf-8-sig", skip_blank_lines=True)
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
    df.index = pd.Index(genes.str.strip().to_numpy(), name="gene")

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
        raise InputError(f"{what} {path}: infinite values; provide raw integer counts")
    neg = values < 0
    if neg.any():
        r, c = np.argwhere(neg)[0]
        raise InputError(f"{what} {path}: {int(neg.sum())} negative values (first: {values[r, c]:g} at gene "
                         f"{df.index[r]}, sample {df.columns[c]}); provide raw counts, not log-ratios or "
                         "batch-corrected values")
    frac = np.abs(values - np.rint(values)) > INTEGRAL_TOL
    if frac.any():
        r, c = np.argwhere(frac)[0]
        raise InputError(f"{what} {path}: {int(frac.sum())} non-integer values (first: {values[r, c]:g} at gene "
                         f"{df.index[r]}, sample {df.columns[c]}); provide raw integer counts (not TPM/FPKM/"
                         "normalised values; round RSEM/salmon expected counts first)")
    counts = pd.DataFrame(np.rint(values).astype(np.int64), index=df.index, columns=df.columns)

    zero = counts.columns[(counts.sum(axis=0) == 0).to_numpy()]
    if len(zero):
        raise InputError(f"{what} {path}: sample(s) {examples(zero)} have no counts at all; remove them")
    totals = counts.sum(axis=0).to_numpy(dtype=np.float64)
    if np.all(np.abs(totals - NORMALISED_TOTAL) <= NORMALISED_TOL * NORMALISED_TOTAL):
        raise InputError(f"{what} {path}: every sample sums to about 1e6 (e.g. {totals[0]:.0f}), as TPM/CPM do: "
                         "these look like normalised values rounded to integers, not raw counts; provide the raw "
                         "read counts (e.g. featureCounts/STAR/salmon NumReads)")

    counts, n_dup = drop_duplicate_genes(counts)
    if n_dup:
        warn(f"{what} {path}: {n_dup} duplicate gene rows dropped (kept the row with the largest total count)")
    counts.attrs["duplicate_genes_dropped"] = n_dup
    return counts


def write_counts(counts: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write genes x samples counts as TSV with first column ``gene`` (atomically)."""
    out = counts.copy()
    out.index.name = "gene"
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
    p = _check_exists(path, what)
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


def apply_gene_map(counts: pd.DataFrame, map_path: str | os.PathLike, bulk_name: str = "--bulk") -> pd.DataFrame:
    """Rename bulk genes from IDs to symbols with the map at ``map_path``.

    Unmapped IDs are dropped; several IDs with the same symbol are collapsed to the row with
    the largest total count (as for duplicate genes). Version suffixes of Ensembl-style IDs are
    ignored when the exact ID is not in the map. Stats go to ``result.attrs['gene_map']``.
    """
    mapping = read_gene_map(map_path)
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
def _check_group_names(names: Iterable[str], what: str) -> None:
    bad = sorted({n for n in names if not GROUP_NAME_RE.match(n)})
    if bad:
        raise InputError(f"{what}: group name(s) {examples([repr(b) for b in bad])} are not usable as file names; "
                         "use letters, digits, '.', '_' or '-' (starting with a letter or digit)")


def _sanitise(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return clean or "sample"


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
    """The bulk groups as a DataFrame with columns ``group,sample`` (str).

    * ``samplesheet``: CSV/TSV with columns ``group`` and ``sample`` (extra columns ignored);
      each sample at most once; group names must be file-name safe.
    * ``bulk_group`` ``"a,b,c"``: one group named :data:`BULK_GROUP_NAME` (``bulk_group``)
      holding those samples (as the seed's ``bulk_group`` list).
    * neither: every bulk column is its own group (group name = sample name made file-name safe).

    Every sample must be a column of ``counts``.
    """
    if samplesheet is not None and bulk_group:
        raise InputError("--samplesheet and --bulk_group were both given; pass only one "
                         "(the samplesheet can hold many groups)")
    if samplesheet is not None:
        what = f"--samplesheet {samplesheet}"
        p = _check_exists(samplesheet, "--samplesheet")
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
        _check_group_names(groups["group"], what)
        _missing_samples(groups["sample"].tolist(), counts, what)
    elif bulk_group:
        what = f"--bulk_group '{bulk_group}'"
        samples = [s.strip() for s in str(bulk_group).split(",") if s.strip()]
        if not samples:
            raise InputError(f"{what}: no sample names; give comma-separated bulk column names")
        dup = sorted({s for s in samples if samples.count(s) > 1})
        if dup:
            raise InputError(f"{what}: sample(s) {examples(dup)} listed more than once; list each sample once")
        _missing_samples(samples, counts, what)
        groups = pd.DataFrame({"group": BULK_GROUP_NAME, "sample": samples})
    else:
        names, seen = [], set()
        for s in counts.columns:
            base = name = _sanitise(s)
            k = 1
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            seen.add(name)
            names.append(name)
        groups = pd.DataFrame({"group": names, "sample": list(counts.columns)})
    return groups.reset_index(drop=True).astype(str)


def write_groups(groups: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``group,sample`` CSV (atomically)."""
    _atomic_write(Path(path), lambda tmp: groups[["group", "sample"]].to_csv(tmp, index=False, lineterminator="\n"))


# --------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------
def _count_problem(x) -> str | None:
    """Why matrix ``x`` is not raw counts (None if it is): NaN, negative or non-integer values."""
    data = x.data if sp.issparse(x) else np.asarray(x)
    data = np.asarray(data, dtype=np.float64).ravel()
    if data.size == 0:
        return None
    if np.isnan(data).any():
        return f"{int(np.isnan(data).sum())} NaN values"
    if (data < 0).any():
        return f"negative values (min {data.min():g})"
    off = np.abs(data - np.rint(data)) > INTEGRAL_TOL
    if off.any():
        return f"non-integer values (e.g. {data[np.flatnonzero(off)[0]]:g}), it looks normalised/log-transformed"
    return None


def subsample_indices(labels: np.ndarray, max_cells: int, seed: int, min_cells: int = 2) -> np.ndarray:
    """Sorted indices of at most ``max_cells`` cells chosen at random with ``default_rng(seed)``.

    Each label keeps ``min(min_cells, its size)`` cells so no type disappears by chance; the
    remaining places are filled uniformly from the other cells. All cells when ``n <= max_cells``.
    """
    n = labels.size
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(labels, sort=True)
    order = rng.permutation(n)
    # First `min_cells` cells of each label in the random order are reserved.
    rank = pd.Series(codes[order]).groupby(codes[order]).cumcount().to_numpy()
    reserved = order[rank < min_cells]
    if reserved.size > max_cells:
        raise InputError(f"--max_single_cells {max_cells}: too small to keep {min_cells} cells of each of the "
                         f"{uniques.size} cell types; raise it to at least {reserved.size}")
    rest = order[rank >= min_cells]
    chosen = np.concatenate([reserved, rest[: max_cells - reserved.size]])
    return np.sort(chosen)


#: Largest run of matrix entries (or dense rows x genes) read from the h5ad at once.
_READ_BLOCK = 1 << 23
#: Gaps between selected CSR rows shorter than this (in entries) are read through, not seeked.
_READ_GAP = 1 << 16
#: Cell names read at once when only the subsample's names are kept.
_NAME_BLOCK = 1 << 16


class _Unsupported(Exception):
    """An h5ad layout the partial reader does not know; the whole file is read instead."""


def _h5_index_elem(group):
    """The index element of an anndata dataframe group (obs/var), not read."""
    if not hasattr(group, "attrs") or "_index" not in group.attrs or not hasattr(group, "keys"):
        raise _Unsupported("dataframe without '_index'")
    return group[group.attrs["_index"]]


def _h5_index(group) -> pd.Index:
    """The index of an anndata dataframe group (obs/var) without reading its columns."""
    from anndata.io import read_elem

    return pd.Index(np.asarray(read_elem(_h5_index_elem(group))).astype(str))


def _h5_index_rows(elem, rows: np.ndarray) -> pd.Index:
    """Entries ``rows`` (sorted) of an index element: a string dataset is read in blocks of
    ``_NAME_BLOCK`` names keeping only the selected ones, so an atlas's million cell names are
    never held as Python strings; other encodings are read whole."""
    import h5py
    from anndata.io import read_elem

    if not (isinstance(elem, h5py.Dataset) and elem.ndim == 1 and h5py.check_string_dtype(elem.dtype)):
        return pd.Index(np.asarray(read_elem(elem)).astype(str)[rows])
    strings = elem.asstr()
    parts = []
    bounds = np.searchsorted(rows, np.arange(0, elem.shape[0] + _NAME_BLOCK, _NAME_BLOCK))
    for b, lo in enumerate(range(0, elem.shape[0], _NAME_BLOCK)):
        sel = rows[bounds[b]:bounds[b + 1]]
        if sel.size:
            parts.append(np.asarray(strings[lo:min(lo + _NAME_BLOCK, elem.shape[0])], dtype=object)[sel - lo])
    names = np.concatenate(parts) if parts else np.zeros(0, dtype=object)
    return pd.Index(names.astype(str))


def _csr_rows(elem, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (sorted, unique) of an on-disk CSR matrix, reading only their entries."""
    indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
    data_ds, ind_ds = elem["data"], elem["indices"]
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    out_data = np.empty(int(lengths.sum()), dtype=np.float32)
    out_ind = np.empty(out_data.size, dtype=np.int64)
    # Spans of selected rows close enough to read in one go (bounded size).
    first = 0
    pos = 0
    n = len(rows)
    while first < n:
        last = first
        while (last + 1 < n and starts[last + 1] - ends[last] <= _READ_GAP
               and ends[last + 1] - starts[first] <= _READ_BLOCK):
            last += 1
        lo, hi = int(starts[first]), int(ends[last])
        if hi > lo:
            lens = lengths[first:last + 1]
            total = int(lens.sum())
            # positions of the selected rows' entries inside the span just read
            take = (np.repeat(starts[first:last + 1] - lo - np.cumsum(lens) + lens, lens)
                    + np.arange(total))
            out_data[pos:pos + total] = np.asarray(data_ds[lo:hi])[take]
            out_ind[pos:pos + total] = np.asarray(ind_ds[lo:hi])[take]
            pos += total
        first = last + 1
    new_indptr = np.concatenate([[0], np.cumsum(lengths)])
    shape = (len(rows), int(elem.attrs["shape"][1]))
    return sp.csr_matrix((out_data, out_ind, new_indptr), shape=shape)


def _csc_rows(elem, rows: np.ndarray, n_obs: int) -> sp.csr_matrix:
    """Rows ``rows`` of an on-disk CSC matrix: one streaming pass over the entries in blocks.

    CSC stores cells inside columns, so every entry is scanned once, but only the selected
    cells' entries are kept: memory is set by the subsample and the block size.
    """
    indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
    n_cols = indptr.size - 1
    where = np.full(n_obs, -1, dtype=np.int64)
    where[rows] = np.arange(rows.size)
    keep_r, keep_c, keep_v = [], [], []
    nnz = int(indptr[-1])
    for lo in range(0, nnz, _READ_BLOCK):
        hi = min(lo + _READ_BLOCK, nnz)
        r = where[np.asarray(elem["indices"][lo:hi], dtype=np.int64)]
        sel = np.flatnonzero(r >= 0)
        if sel.size:
            keep_r.append(r[sel])
            keep_c.append(np.searchsorted(indptr, lo + sel, side="right") - 1)
            keep_v.append(np.asarray(elem["data"][lo:hi])[sel].astype(np.float32))
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.empty(0, dt))
    coo = sp.coo_matrix((cat(keep_v, np.float32), (cat(keep_r, np.int64), cat(keep_c, np.int64))),
                        shape=(rows.size, n_cols))
    return coo.tocsr()


def _dense_rows(ds, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` of an on-disk dense matrix, read in bounded row blocks, kept sparse."""
    per = max(1, _READ_BLOCK // max(1, ds.shape[1]))
    parts = [sp.csr_matrix(np.asarray(ds[rows[i:i + per]], dtype=np.float32))
             for i in range(0, rows.size, per)]
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, ds.shape[1]),
                                                                       dtype=np.float32)


def _h5_matrix_reader(elem, n_obs: int):
    """A function ``rows -> CSR float32`` reading only those rows of an h5ad matrix element."""
    import h5py

    if isinstance(elem, h5py.Dataset):
        if elem.ndim != 2:
            raise _Unsupported(f"{elem.ndim}-d dataset")
        return lambda rows: _dense_rows(elem, rows)
    enc = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    if enc in ("csr_matrix", "csr"):
        return lambda rows: _csr_rows(elem, rows)
    if enc in ("csc_matrix", "csc"):
        return lambda rows: _csc_rows(elem, rows, n_obs)
    raise _Unsupported(f"matrix encoding '{enc}'")


class _H5Reference:
    """The parts of a reference h5ad the pipeline uses, read on demand with h5py.

    Labels and names are read first; matrix rows only for the chosen cells (CSR: only their
    entries; CSC: one streaming pass; dense: their rows). Unknown layouts raise _Unsupported.
    """

    def __init__(self, f) -> None:
        import h5py

        if not isinstance(f.get("obs"), h5py.Group) or not isinstance(f.get("var"), h5py.Group):
            raise _Unsupported("obs/var are not anndata dataframes")
        self.f = f
        self._obs_index = _h5_index_elem(f["obs"])
        if not isinstance(self._obs_index, h5py.Dataset) or self._obs_index.ndim != 1:
            raise _Unsupported("obs index is not a 1-d dataset")
        self.var_names = _h5_index(f["var"])
        self.n_obs, self.n_vars = int(self._obs_index.shape[0]), len(self.var_names)
        order = f["obs"].attrs.get("column-order", [])
        self.columns = [str(c) for c in np.atleast_1d(order)] if len(order) else []
        # Matrix layouts are checked now (attributes only), so an unknown one falls back early.
        self._candidates = []
        if "layers" in f and "counts" in f["layers"]:
            self._candidates.append(("layers['counts']",
                                     _h5_matrix_reader(f["layers"]["counts"], self.n_obs),
                                     self.var_names))
        if "raw" in f and "X" in f["raw"]:
            raw_var = _h5_index(f["raw"]["var"]) if "var" in f["raw"] else self.var_names
            self._candidates.append((".raw.X", _h5_matrix_reader(f["raw"]["X"], self.n_obs),
                                     raw_var))
        self._candidates.append(("X", _h5_matrix_reader(f["X"], self.n_obs) if "X" in f else None,
                                 self.var_names))

    def labels(self, key: str) -> pd.Series:
        from anndata.io import read_elem

        return pd.Series(read_elem(self.f["obs"][key]))

    def obs_names_at(self, rows: np.ndarray) -> pd.Index:
        """Names of the cells ``rows`` (sorted), read for those cells only."""
        return _h5_index_rows(self._obs_index, rows)

    def candidates(self) -> list[tuple[str, Any, Any]]:
        return self._candidates


class _MemoryReference:
    """The same interface over an AnnData read whole (layouts the partial reader cannot read)."""

    def __init__(self, adata: ad.AnnData) -> None:
        self.adata = adata
        self.var_names = adata.var_names
        self.n_obs, self.n_vars = adata.n_obs, adata.n_vars
        self.columns = list(adata.obs.columns)

    def labels(self, key: str) -> pd.Series:
        return self.adata.obs[key].reset_index(drop=True)

    def obs_names_at(self, rows: np.ndarray) -> pd.Index:
        return pd.Index(np.asarray(self.adata.obs_names)[rows].astype(str))

    def candidates(self) -> list[tuple[str, Any, Any]]:
        a, out = self.adata, []
        if "counts" in a.layers:
            out.append(("layers['counts']", lambda rows, m=a.layers["counts"]: m[rows], a.var_names))
        if a.raw is not None:
            out.append((".raw.X", lambda rows, m=a.raw.X: m[rows], a.raw.var_names))
        out.append(("X", None if a.X is None else (lambda rows, m=a.X: m[rows]), a.var_names))
        return out


def _cannot_read(what: str, err: Exception) -> InputError:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return InputError(f"{what}: cannot be read as h5ad ({msg[:150]}); provide an AnnData .h5ad file "
                      "(e.g. written by adata.write_h5ad)")


def read_reference(path: str | os.PathLike, celltype_key: str, max_single_cells: int | None = None,
                   seed: int = 0, min_cells: int = 2) -> ad.AnnData:
    """Read, validate, standardise and subsample the scRNA-seq reference, reading only what is used.

    The cell names and ``obs[celltype_key]`` are read first; the seeded subsample is chosen from
    the labels (:func:`subsample_indices`); then only those cells' rows of the counts matrix are
    read from disk (CSR: their entries only; CSC: one streaming pass in blocks; dense: their rows),
    so peak memory is set by the subsample, not the atlas. Layouts the partial reader does not
    know (e.g. h5ad files from anndata < 0.7) are read whole, with a log line.

    Returns an AnnData with X = raw counts (CSR float32), ``obs['celltype']`` categorical
    (sorted categories, no other obs columns), unique var/obs names. Statistics go to
    ``result.uns['prepare']`` (a dict; callers replace it before writing).
    """
    import h5py

    p = _check_exists(path, "--reference")
    what = f"--reference {path}"
    try:
        f = h5py.File(p, "r", rdcc_nbytes=64 << 20)
    except Exception as err:  # h5py raises OSError and others for non-HDF5/truncated files
        raise _cannot_read(what, err) from None
    with f:
        try:
            src: _H5Reference | _MemoryReference = _H5Reference(f)
        except _Unsupported as why:
            log(f"reference: layout not readable in part ({why}); reading the whole file "
                "(re-save it with a current anndata to read only the subsample)")
            try:
                src = _MemoryReference(ad.read_h5ad(p))
            except Exception as err:  # anndata raises many types for corrupt or non-h5ad files
                raise _cannot_read(what, err) from None
        except Exception as err:
            raise _cannot_read(what, err) from None
        return _select_reference(src, what, path, celltype_key, max_single_cells, seed, min_cells)


def label_codes(labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Cell-type labels as ``(codes, names)``: ``names[codes[i]]`` is cell i's label as a stripped
    string, code -1 where it has none (missing, empty, 'nan', 'none', 'na', any case).

    A categorical column (how atlases store labels) is cleaned through its categories, so its
    labels are never expanded to one Python string per cell; two categories equal once stripped
    share one name.
    """
    cat = labels if isinstance(labels.dtype, pd.CategoricalDtype) else labels.astype("category")
    cats = pd.Series(cat.cat.categories).astype("string").str.strip()
    bad = (cats.isna() | (cats == "") | cats.str.lower().isin(["nan", "none", "na"])).to_numpy(dtype=bool)
    of_cat = np.full(len(cats), -1, dtype=np.int64)
    good, names = pd.factorize(cats[~bad].to_numpy(dtype=object))
    of_cat[~bad] = good
    raw = cat.cat.codes.to_numpy()
    codes = np.where(raw >= 0, of_cat[np.maximum(raw, 0)], -1)
    return codes, np.asarray(names, dtype=object)


def _select_reference(src: _H5Reference | _MemoryReference, what: str, path: Any, celltype_key: str,
                      max_single_cells: int | None = None, seed: int = 0, min_cells: int = 2
                      ) -> ad.AnnData:
    """Labels -> validated, seeded subsample -> its raw counts (see :func:`read_reference`)."""
    if src.n_obs == 0 or src.n_vars == 0:
        raise InputError(f"{what}: empty ({src.n_obs} cells x {src.n_vars} genes); provide a populated reference")
    if celltype_key not in src.columns:
        raise InputError(f"--celltype_key '{celltype_key}' is not a column of {path} obs (found: "
                         f"{examples(src.columns, 12) or 'no columns'}); "
                         "set --celltype_key to the cell-type column")
    stats: dict[str, Any] = {"n_cells_input": int(src.n_obs), "n_genes_input": int(src.n_vars)}

    codes, names = label_codes(src.labels(celltype_key))
    unlabelled = codes < 0
    if unlabelled.all():
        raise InputError(f"--celltype_key '{celltype_key}': every cell of {path} has an empty label; "
                         "choose the column that holds cell types")
    if unlabelled.any():
        warn(f"{what}: {int(unlabelled.sum())} cells without a label in obs['{celltype_key}'] are dropped")
    stats["n_cells_unlabelled_dropped"] = int(unlabelled.sum())
    keep = np.flatnonzero(~unlabelled)
    kept_codes = codes[keep]

    counts = np.bincount(kept_codes, minlength=len(names))
    sizes = pd.Series(counts, index=pd.Index(names, dtype=object))
    sizes = sizes[sizes > 0].sort_values(ascending=False, kind="stable")
    small = sizes[sizes < min_cells]
    if len(small):
        listed = examples([f"{k!r} ({v})" for k, v in small.items()])
        raise InputError(f"{what}: cell type(s) with fewer than {min_cells} cells in obs['{celltype_key}']: {listed}; "
                         "remove those cells or merge them into another type")
    if len(sizes) == 1:
        raise InputError(f"{what}: obs['{celltype_key}'] has a single cell type ({sizes.index[0]!r}), so every "
                         "fraction would be 1.0; choose the column that holds cell types (--celltype_key) or a "
                         "reference with at least two types")
    stats["celltype_counts_input"] = {str(k): int(v) for k, v in sizes.sort_index().items()}

    sub = keep
    if max_single_cells is not None and keep.size > max_single_cells:
        # codes group cells exactly as their label strings do: the same cells are chosen
        sub = keep[subsample_indices(kept_codes, max_single_cells, seed, min_cells)]
        log(f"reference: randomly selected {sub.size} of {keep.size} cells (seed {seed})")
    final_labels = names[codes[sub]].astype(str)

    # Raw counts: layers['counts'], then .raw, then X (the first holding non-negative integers).
    problems = []
    for source, read_rows, var_names in src.candidates():
        if read_rows is None:
            problems.append(f"{source} is empty")
            continue
        x = read_rows(sub)
        x = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else sp.csr_matrix(x).astype(np.float32)
        problem = _count_problem(x)
        if problem is None:
            break
        problems.append(f"{source} has {problem}")
    else:
        raise InputError(f"{what}: no raw counts found ({'; '.join(problems)}); the reference needs raw integer "
                         "counts in X, layers['counts'] or .raw")
    x.sum_duplicates()
    x.eliminate_zeros()
    if problems:
        log(f"reference: using raw counts from {source} ({'; '.join(problems)})")
    stats["counts_source"] = source

    obs_names = src.obs_names_at(sub)
    out = ad.AnnData(
        X=x,
        obs=pd.DataFrame({CELLTYPE_KEY: pd.Categorical(final_labels, categories=sorted(set(final_labels)))},
                         index=obs_names),
        var=pd.DataFrame(index=pd.Index(np.asarray(var_names, dtype=str))),
    )
    n_dup_genes = int(out.var_names.duplicated().sum())
    if n_dup_genes:
        out.var_names_make_unique()
        warn(f"{what}: {n_dup_genes} duplicate gene names made unique (suffix -1, -2, ...)")
    n_dup_cells = int(out.obs_names.duplicated().sum())
    if n_dup_cells:
        out.obs_names_make_unique()
        warn(f"{what}: {n_dup_cells} duplicate cell names made unique (suffix -1, -2, ...)")
    totals = np.asarray(x.sum(axis=1)).ravel()
    zero_cells = totals == 0
    if zero_cells.all():
        raise InputError(f"{what}: every selected cell has zero counts in {source}; provide a reference with counts")
    nz = totals[~zero_cells]
    if nz.size >= 10 and np.abs(nz - np.median(nz)).max() <= NORMALISED_CELL_TOL * np.median(nz):
        raise InputError(f"{what}: every cell of {source} sums to about {np.median(nz):.0f}: normalised values "
                         "(e.g. normalize_total) rounded to integers, not raw counts; provide raw UMI/read counts "
                         "in X, layers['counts'] or .raw")
    if zero_cells.any():
        n_zero = int(zero_cells.sum())
        out = out[~zero_cells].copy()
        by_type = out.obs[CELLTYPE_KEY].value_counts()
        gone = by_type[by_type < min_cells]
        if len(gone):
            raise InputError(f"{what}: after dropping {n_zero} cells with zero counts, cell type(s) "
                             f"{examples([f'{k!r} ({v})' for k, v in gone.items()])} have fewer than {min_cells} "
                             "cells; remove those cells or merge the type into another")
        out.obs[CELLTYPE_KEY] = out.obs[CELLTYPE_KEY].cat.remove_unused_categories()
        warn(f"{what}: {n_zero} of {zero_cells.size} selected cells have zero counts in {source} and were dropped")
    stats.update({
        "n_cells": int(out.n_obs), "n_genes": int(out.n_vars), "duplicate_genes_renamed": n_dup_genes,
        "duplicate_cells_renamed": n_dup_cells, "n_cells_zero_counts": int(zero_cells.sum()),
        "celltype_counts": {str(k): int(v) for k, v in out.obs[CELLTYPE_KEY].value_counts().sort_index().items()},
    })
    out.uns["prepare"] = stats
    return out


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
    """Read the files PREPARE_INPUTS wrote (already validated): bulk counts, groups, reference."""
    bulk = pd.read_csv(bulk_path, sep="\t", index_col=0)
    bulk.index = bulk.index.astype(str)
    bulk.columns = bulk.columns.astype(str)
    groups = pd.read_csv(groups_path, dtype=str)
    if not {"group", "sample"} <= set(groups.columns):
        raise InputError(f"--groups {groups_path}: needs columns group,sample (found: {', '.join(groups.columns)}); "
                         "use the groups.csv written by PREPARE_INPUTS")
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

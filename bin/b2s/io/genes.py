"""Gene names: the --gene_map translation and the bulk/reference shared-gene check."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from b2s._constants import GENE
from b2s.errors import InputError
from b2s.io.bulk import drop_duplicate_genes
from b2s.io.tables import (
    ENSEMBL_ID,
    ENSEMBL_VERSION,
    ID_HEADERS,
    MIN_SHARED_GENES,
    SYMBOL_HEADERS,
    check_exists,
    compression_of,
    examples,
    log,
    read_first_line,
    sniff_sep,
    warn,
)

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
    first = read_first_line(p, what)
    sep = sniff_sep(p, first)
    fields = [f.strip().strip('"').lower() for f in first.split(sep)]
    if len(fields) < 2:
        raise InputError(f"{what} {path}: needs two columns (gene ID, symbol) separated by a tab or comma; "
                         f"first line is {first[:60]!r}")
    has_header = any(f in SYMBOL_HEADERS or f in ID_HEADERS for f in fields) or fields[0] == ""
    try:
        table = pd.read_csv(p, sep=sep, header=0 if has_header else None, dtype=str, keep_default_na=True,
                            compression=compression_of(p), encoding="utf-8-sig")
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
    return [ENSEMBL_VERSION.sub(r"\1", i) for i in ids]


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
    mapped.index = pd.Index(symbols.to_numpy()[~missing].astype(str), name=GENE)
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
# shared genes
# --------------------------------------------------------------------------------------------
def _ensembl_fraction(names: list[str]) -> float:
    return float(np.mean([bool(ENSEMBL_ID.match(n)) for n in names])) if names else 0.0


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
        elif {ENSEMBL_VERSION.sub(r"\1", g) for g in bulk_list} & {ENSEMBL_VERSION.sub(r"\1", g) for g in ref_set}:
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

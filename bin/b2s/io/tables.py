"""What the io modules share: constants, console messages, reading text tables."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from b2s.errors import InputError
from b2s.errors import warn as _warn

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
ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*\d+)\.\d+$")
ENSEMBL_ID = re.compile(r"^ENS[A-Z]*[GTP]\d{6,}(\.\d+)?$")


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
# text files
# --------------------------------------------------------------------------------------------
def open_text(path: Path):
    """Open a text file, transparently gunzipping ``.gz`` (also detected by magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


def compression_of(path: Path) -> str | None:
    """``"gzip"`` when the file starts with the gzip magic bytes, whatever its name; else None.

    pandas infers compression from the file name only, so a gzip file named ``.tsv`` (or a
    plain file named ``.gz``) would otherwise fail with a misleading decoding error.
    """
    with open(path, "rb") as fh:
        return "gzip" if fh.read(2) == b"\x1f\x8b" else None


def read_first_line(path: Path, what: str) -> str:
    """First non-empty line of a (possibly gzipped) text file; InputError when there is none."""
    try:
        with open_text(path) as fh:
            for line in fh:
                if line.strip():
                    return line.rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{what} {path}: cannot be read ({err}); provide an uncorrupted text (or .gz) file") from None
    raise InputError(f"{what} {path}: the file is empty; provide a non-empty table")


def sniff_sep(path: Path, first_line: str) -> str:
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


#: Header names of a gene-symbol column (lower case; BioMart, GENCODE, 10x and omicverse spellings).
SYMBOL_HEADERS = ("symbol", "gene_symbol", "gene symbol", "gene name", "gene_name", "genename",
                  "hgnc symbol", "hgnc_symbol", "mgi symbol", "mgi_symbol", "external_gene_name", "name")
#: Header names of a gene-ID column (lower case).
ID_HEADERS = ("gene_id", "gene id", "geneid", "gene stable id", "ensembl_gene_id", "ensembl gene id", "id",
              "gene", "ensembl", "gene stable id version", "transcript stable id", "ensembl_id")

"""Catalogue of bad inputs (issue 12): each case is ONE line of ``CASES``.

A case breaks a copy of the bundled test inputs (assets/test_data) in one way, runs the cheapest
stage that shows the behaviour in-process (PREPARE_INPUTS' ``main`` or FILTER's function, never
Nextflow) and checks what the user is told:

* ``"ERROR: <fragment>"``: the stage stops with one line (an InputError) containing the fragment;
  nothing is written to the outdir;
* ``"WARNING: <fragment>"``: the stage succeeds and prints a ``WARNING:`` line containing it
  (and PREPARE_INPUTS records it in prepare_summary.json's ``warnings``);
* ``"OK"``: the stage succeeds (the input is valid; it used to fail with the wrong diagnosis).

An optional last element checks prepare_summary.json. To add a bad input: write a one-line
breaker (``bulk``/``ref``/``write_map``/... below) and add one row.

Cases that need a trained model live beside their stage's tests: a stale checkpoint
(tests/unit/test_train.py::test_stale_checkpoint_never_changes_the_result) and weights whose
genes are in another order, other genes or sizes, or without a sidecar (tests/unit/test_weights.py).
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from b2s.errors import InputError
from tests.helpers import load_script, pipeline_args

TEST_DATA = Path(__file__).resolve().parents[2] / "assets" / "test_data"


@dataclass
class Run:
    """The inputs of one run (copies in a temporary folder) and the extra command-line arguments."""

    dir: Path
    bulk: Path
    reference: Path
    samplesheet: Path | None
    gene_map: Path | None = None
    args: list[str] = field(default_factory=list)

    def argv(self, outdir: Path) -> list[str]:
        argv = pipeline_args("PREPARE_INPUTS") + ["--bulk", str(self.bulk), "--reference", str(self.reference), "--celltype_key", "celltype",
                "--seed", "1", "--outdir", str(outdir)]
        argv += ["--samplesheet", str(self.samplesheet)] if self.samplesheet else []
        argv += ["--gene_map", str(self.gene_map)] if self.gene_map else []
        return argv + self.args


# ---------------------------------------------------------------------------------- breakers
def read_bulk(path: Path = TEST_DATA / "bulk_counts.tsv.gz") -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", index_col=0)


def bulk(f: Callable[[pd.DataFrame], pd.DataFrame], name: str = "bulk.tsv", **to_csv) -> Callable[[Run], None]:
    """Breaker: the bulk matrix transformed by ``f`` and written as ``name`` (TSV unless ``sep`` is given)."""
    def apply(run: Run) -> None:
        run.bulk = run.dir / name
        f(read_bulk()).to_csv(run.bulk, **{"sep": "\t", **to_csv})
    return apply


def ref(f: Callable[[ad.AnnData], None]) -> Callable[[Run], None]:
    """Breaker: the reference modified in place by ``f``."""
    def apply(run: Run) -> None:
        a = ad.read_h5ad(TEST_DATA / "reference.h5ad")
        f(a)
        run.reference = run.dir / "ref.h5ad"
        a.write_h5ad(run.reference)
    return apply


def copy_bulk_as(name: str, gzip_it: bool | None = None) -> Callable[[Run], None]:
    """Breaker: the bundled (gzipped) bulk under another name; ``gzip_it=False`` writes it uncompressed."""
    def apply(run: Run) -> None:
        run.bulk = run.dir / name
        if gzip_it is False:
            with gzip.open(TEST_DATA / "bulk_counts.tsv.gz", "rb") as src:
                run.bulk.write_bytes(src.read())
        else:
            shutil.copy(TEST_DATA / "bulk_counts.tsv.gz", run.bulk)
    return apply


def write_map(header: str, row: Callable[[str, str], str]) -> Callable[[Run], None]:
    """Breaker: the bulk keyed by IDs plus a gene map written line by line (``row(id, symbol)``)."""
    def apply(run: Run) -> None:
        run.bulk = TEST_DATA / "bulk_counts_ids.tsv.gz"
        pairs = pd.read_csv(TEST_DATA / "gene_map.tsv", sep="\t")
        run.gene_map = run.dir / "map.tsv"
        run.gene_map.write_text(header + "\n" + "".join(row(i, s) + "\n" for i, s in zip(pairs.gene_id, pairs.symbol)))
    return apply


def units(value: str) -> Callable[[Run], None]:
    """Breaker: ``--bulk_units value``."""
    def apply(run: Run) -> None:
        run.args += ["--bulk_units", value]
    return apply


def no_samplesheet(run: Run) -> None:
    run.samplesheet = None


def both(*breakers: Callable[[Run], None]) -> Callable[[Run], None]:
    def apply(run: Run) -> None:
        for b in breakers:
            b(run)
    return apply


def _to_tpm(df: pd.DataFrame) -> pd.DataFrame:
    return (df / df.sum() * 1e6).round().astype(int)


def _zero_cells(a: ad.AnnData, n: int = 30) -> None:
    X = a.X.tolil()
    X[np.arange(0, 14 * n, 14)[:n]] = 0  # spread over the types
    a.X = sp.csr_matrix(X)


def _normalise(a: ad.AnnData) -> None:
    lib = np.asarray(a.X.sum(axis=1)).ravel()
    a.X = sp.csr_matrix(np.rint(sp.diags(1e4 / lib) @ a.X.toarray()))


def _ensembl_reference(a: ad.AnnData) -> None:
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]


# ------------------------------------------------------------------------------------ catalogue
CASES = [
    # name                          how the inputs are broken                                   what the user is told
    ("gzip_named_tsv",              copy_bulk_as("bulk.tsv"),                                   "OK"),
    ("plain_text_named_gz",         copy_bulk_as("bulk.tsv.gz", gzip_it=False),                 "OK"),
    ("pandas_to_csv_index_column",  bulk(lambda d: d.reset_index(), "bulk.csv", sep=","),       "OK"),
    ("tpm_rounded_given_as_counts", both(bulk(_to_tpm), units("counts")),                       "ERROR: every sample sums to about 1e6"),
    ("cpm_rounded_one_sample_counts", both(bulk(lambda d: _to_tpm(d[["ctrl_1"]])), no_samplesheet, units("counts")),
                                                                                                "ERROR: these look like normalised values"),
    ("tpm_rounded_auto",            bulk(_to_tpm),                                              "OK",
                                    lambda s: s["bulk"]["units"] == "tpm" and s["bulk"]["library_sizes"] is None
                                    and s["bulk"]["decisions"][0]["decision"] == "units"),
    ("normalised_reference",        ref(_normalise),                                            "ERROR: normalised values (e.g. normalize_total) rounded"),
    ("single_cell_type",            ref(lambda a: a.obs.__setitem__("celltype", "T")),          "ERROR: has a single cell type ('T')"),
    ("zero_count_reference_cells",  ref(_zero_cells),                                           "WARNING: 30 of 420 selected cells have zero counts",
                                    lambda s: s["reference"]["n_cells_zero_counts_dropped"] == 30 and s["reference"]["n_cells_after"] == 390),
    ("duplicate_bulk_genes",        bulk(lambda d: pd.concat([d, d.iloc[:5]])),                "WARNING: 5 duplicate gene rows dropped"),
    ("few_shared_genes",            bulk(lambda d: d.iloc[:20]),                                "WARNING: only 20 genes shared"),
    ("biomart_three_column_map",    write_map("Gene stable ID\tGene stable ID version\tGene name",
                                              lambda i, s: f"{i}\t{i}.7\t{s}"),                 "OK", lambda s: s["n_shared_genes"] == 765),
    ("headerless_three_column_map", write_map("", lambda i, s: f"{i}\tENST{i[1:]}\t{s}"),       "OK", lambda s: s["n_shared_genes"] == 765),
    ("reference_ensembl_bulk_symbols", ref(_ensembl_reference),                                 "ERROR: the reference is keyed by Ensembl IDs and the bulk by symbols"),
    ("reference_ensembl_with_map",  both(write_map("gene_id\tsymbol", lambda i, s: f"{i}\t{s}"), ref(_ensembl_reference)),
                                                                                                "ERROR: (--gene_map translated the bulk to symbols) and --gene_map translates only the bulk"),
    ("transposed_bulk_samplesheet", bulk(lambda d: d.T),                                        "ERROR: it looks transposed (samples x genes)"),
    ("transposed_bulk_no_sheet",    both(bulk(lambda d: d.T), no_samplesheet),                  "ERROR: the matrix looks transposed (samples x genes)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, capsys, case):
    name, breaker, expected, *summary_check = case
    run = Run(dir=tmp_path, bulk=TEST_DATA / "bulk_counts.tsv.gz", reference=TEST_DATA / "reference.h5ad",
              samplesheet=TEST_DATA / "samplesheet.csv")
    breaker(run)
    out = tmp_path / "out"
    script = load_script("bin/prepare_inputs.py")
    if expected.startswith("ERROR: "):
        with pytest.raises(InputError) as err:
            script.main(run.argv(out))
        msg = str(err.value)
        assert expected.removeprefix("ERROR: ") in msg, msg
        assert "\n" not in msg
        assert not out.exists() or not any(out.iterdir())  # nothing published
        return
    script.main(run.argv(out))
    summary = json.loads((out / "prepare_summary.json").read_text())
    if expected.startswith("WARNING: "):
        fragment = expected.removeprefix("WARNING: ")
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING: ")]
        assert any(fragment in ln for ln in lines), lines
        assert any(fragment in w for w in summary["warnings"]), summary.get("warnings")
    for check in summary_check:
        assert check(summary), summary


def test_leiden_size_that_filters_nothing_warns(capsys):
    """--leiden_size larger than any cluster (issue 12: 100000 was silently ignored)."""
    import scanpy as sc

    from b2s.cluster.filter import filter_cells

    a = ad.read_h5ad(TEST_DATA / "reference.h5ad")
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    out = filter_cells(a, leiden_size=100000, seed=1)
    assert out.n_obs == a.n_obs
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING: ")]
    assert any("--leiden_size 100000" in ln and "nothing is filtered" in ln for ln in lines), lines
    out = filter_cells(a, leiden_size=400, seed=1)  # fewer cells than that in every cluster
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING: ")]
    assert any("--leiden_size 400" in ln and "nothing is filtered" in ln for ln in lines), lines

"""Input reading/validation (b2s.io.tables) and the PREPARE_INPUTS script."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "bin"
TEST_DATA = REPO / "assets" / "test_data"

import b2s.io as bio  # noqa: E402
import b2s.io.h5ad as h5read  # noqa: E402
import b2s.io.reference as refio  # noqa: E402
from b2s.errors import InputError  # noqa: E402
from tests.helpers import pipeline_args  # noqa: E402


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


GOOD = "gene\ts1\ts2\nA\t1\t0\nB\t5\t7\nC\t0\t3\n"


# ----------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("name,text", [
    ("c.tsv", GOOD),
    ("c.csv", GOOD.replace("\t", ",")),
    ("c.tsv.gz", GOOD),
    ("c.txt", GOOD.replace("\t", ",")),  # delimiter from content, not extension
    ("c.tsv", GOOD.replace("1\t0", "1.0\t0.0")),  # integral floats are counts
    ("c.tsv", "\ts1\ts2\nA\t1\t0\nB\t5\t7\nC\t0\t3\n"),  # empty gene column name
    ("c.tsv", "s1\ts2\nA\t1\t0\nB\t5\t7\nC\t0\t3\n"),  # R write.table header
])
def test_read_counts_formats(tmp_path, name, text):
    df = bio.read_counts(write(tmp_path / name, text))
    assert list(df.columns) == ["s1", "s2"]
    assert list(df.index) == ["A", "B", "C"]
    assert df.index.name == "gene"
    assert df.dtypes.unique().tolist() == [np.dtype("int64")]
    assert df.loc["B", "s2"] == 7 and df.to_numpy().sum() == 16


@pytest.mark.parametrize("text,needle,fix", [
    ("", "empty", "provide"),
    ("\n\n", "empty", "provide"),
    ("gene\ts1\ts2\n", "header only", "provide"),
    ("gene\nA\nB\n", "no sample columns", "one column per sample"),
    ("gene\ts1\ts2\nA\t1\tx\nB\t5\t7\n", "non-numeric value 'x' (gene A, sample s2)", "numbers only"),
    ("gene\ts1\ts2\nA\t1\t2\nB\t5\n", "missing/NaN values (first: gene B, sample s2)", "truncated"),
    ("gene\ts1\ts2\nA\t1\tNaN\nB\t5\t3\n", "1 missing/NaN", "fill or remove"),
    ("gene\ts1\ts2\nA\t1\t-2\nB\t5\t3\n", "negative values (first: -2 at gene A, sample s2)", "raw counts"),
    ("gene\ts1\ts1\nA\t1\t2\nB\t5\t3\n", "duplicate sample names s1", "unique"),
    ("gene\ts1\t\nA\t1\t2\nB\t5\t3\n", "empty name", "name"),
    ("gene\ts1\ts2\nA\t1\t0\nB\t5\t0\n", "s2 have no counts", "remove"),
    ("gene\ts1\ts2\nA\t1\t2\nB\t5\t3\t4\n", "malformed table", "one value per sample"),
    ("gene\ts1\ts2\nA\t1\t2\n\t5\t3\n", "gene ID missing in data row 2", "first column"),
])
def test_read_counts_errors(tmp_path, text, needle, fix):
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(InputError) as err:
        bio.read_counts(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and needle in msg and fix in msg


def test_read_counts_keeps_id_strings_and_bom(tmp_path):
    df = bio.read_counts(write(tmp_path / "e.csv", "\ufeffgene,s1\n7157,3\n0012,4\n\"G,1\",5\n"))
    assert list(df.index) == ["7157", "0012", "G,1"] and list(df.columns) == ["s1"]
    sheet = write(tmp_path / "sheet.csv", "\ufeffgroup,sample\nA,s1\n")
    assert bio.read_groups(df, samplesheet=sheet).values.tolist() == [["A", "s1", "A"]]


def test_read_counts_missing_and_truncated_gz(tmp_path):
    with pytest.raises(InputError, match=r"--bulk .*nope.tsv: file not found"):
        bio.read_counts(tmp_path / "nope.tsv")
    full = gzip.compress(("gene\ts1\n" + "".join(f"G{i}\t{i}\n" for i in range(5000))).encode())
    (tmp_path / "cut.tsv.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match=r"cut.tsv.gz: cannot be read.*(truncated|corrupted)"):
        bio.read_counts(tmp_path / "cut.tsv.gz")


def test_read_counts_duplicate_genes_keep_largest(tmp_path, capsys):
    text = "gene\ts1\ts2\nA\t1\t1\nB\t2\t2\nA\t9\t9\nC\t3\t3\nA\t9\t9\n"
    df = bio.read_counts(write(tmp_path / "d.tsv", text))
    assert list(df.index) == ["A", "B", "C"]  # order of first appearance kept
    assert df.loc["A"].tolist() == [9, 9]  # largest total wins, as omicverse
    assert df.attrs["duplicate_genes_dropped"] == 2
    assert "2 duplicate gene rows dropped" in capsys.readouterr().err


def test_drop_duplicate_genes_tie_keeps_first():
    out, n = bio.drop_duplicate_genes(pd.DataFrame({"s": [4, 1, 0], "t": [0, 0, 4]}, index=["X", "Y", "X"]))
    assert n == 1 and list(out.index) == ["X", "Y"] and out.loc["X"].tolist() == [4, 0]
    out2, _ = bio.drop_duplicate_genes(pd.DataFrame({"s": [1, 2], "t": [3, 0]}, index=["X", "X"]))
    assert out2.loc["X"].tolist() == [1, 3]  # totals 4 vs 2


# --------------------------------------------------------------------------------- gene map
def counts_frame(ids, n=2):
    return pd.DataFrame(np.arange(len(ids) * n).reshape(len(ids), n) + 1, index=pd.Index(ids, name="gene"),
                        columns=[f"s{i}" for i in range(n)])


def test_apply_gene_map_headerless_drops_and_collapses(tmp_path):
    mp = write(tmp_path / "map.tsv", "E1\tTP53\nE2\tGAPDH\nE3\tTP53\nE9\tXIST\n")
    counts = counts_frame(["E1", "E2", "E3", "E4"])  # E3 has larger totals than E1; E4 unmapped
    out = bio.apply_gene_map(counts, mp)
    assert list(out.index) == ["TP53", "GAPDH"]  # a symbol sits where it first appears
    assert out.loc["TP53"].tolist() == counts.loc["E3"].tolist()
    assert out.attrs["gene_map"] == {"n_ids": 4, "n_mapped": 3, "n_unmapped": 1, "n_collapsed": 1}


def test_apply_gene_map_header_symbol_column_and_versions(tmp_path):
    mp = write(tmp_path / "map.csv", "gene_id,biotype,symbol\nENSG01,pc,AAA\nENSG02,pc,\nENSG03,pc,CCC\n")
    out = bio.apply_gene_map(counts_frame(["ENSG01.4", "ENSG02.1", "ENSG03"]), mp)
    assert list(out.index) == ["AAA", "CCC"]  # version ignored; empty symbol = unmapped


def test_apply_gene_map_errors(tmp_path):
    counts = counts_frame(["E1", "E2"])
    swapped = write(tmp_path / "swap.tsv", "TP53\tE1\nGAPDH\tE2\n")
    with pytest.raises(InputError, match=r"--gene_map .*swap.tsv: none of the 2 gene IDs.*swap the columns"):
        bio.apply_gene_map(counts, swapped)
    other = write(tmp_path / "other.tsv", "X1\tTP53\n")
    with pytest.raises(InputError, match=r"other.tsv: none of .*first column holds the IDs"):
        bio.apply_gene_map(counts, other)
    one = write(tmp_path / "one.tsv", "E1\nE2\n")
    with pytest.raises(InputError, match=r"one.tsv: needs two columns"):
        bio.apply_gene_map(counts, one)


# ----------------------------------------------------------------------------------- groups
@pytest.fixture
def bulk6():
    return counts_frame(["A", "B"], 6).set_axis(["ctrl_1", "ctrl_2", "ctrl_3", "stim_1", "stim 2", "x/y"], axis=1)


def test_read_groups_samplesheet(tmp_path, bulk6):
    sheet = write(tmp_path / "s.csv", "sample,group,notes\nctrl_1,ctrl,a\nctrl_2,ctrl,\nstim_1, stim ,b\n")
    g = bio.read_groups(bulk6, samplesheet=sheet)
    assert list(g.columns) == ["group", "sample", "name"]
    assert g.values.tolist() == [["ctrl", "ctrl_1", "ctrl"], ["ctrl", "ctrl_2", "ctrl"], ["stim", "stim_1", "stim"]]


@pytest.mark.parametrize("text,needle", [
    ("grp,sample\nctrl,ctrl_1\n", "missing column(s) group"),
    ("group,sample\nctrl,ctrl_1\nctrl,nope\nctrl,nada\n", "sample(s) nope, nada not found in the bulk matrix columns (available: ctrl_1"),
    ("group,sample\nctrl,ctrl_1\nstim,ctrl_1\n", "ctrl_1 listed more than once"),
    ("group,sample\nDay 0,ctrl_1\nDay/0,ctrl_2\n", "groups 'Day 0' and 'Day/0' both become the file name 'Day_0'"),
    ("group,sample\nctrl,ctrl_1\nCTRL,ctrl_2\n", "groups 'ctrl' and 'CTRL' both become the file name 'CTRL'"),
    ("group,sample\nctrl,\n", "empty group or sample in data row 1"),
    ("group,sample\n", "no rows"),
])
def test_read_groups_samplesheet_errors(tmp_path, bulk6, text, needle):
    sheet = write(tmp_path / "sheet.csv", text)
    with pytest.raises(InputError) as err:
        bio.read_groups(bulk6, samplesheet=sheet)
    assert f"--samplesheet {sheet}" in str(err.value) and needle in str(err.value)


def test_read_groups_bulk_group_and_default(bulk6):
    g = bio.read_groups(bulk6, bulk_group=" ctrl_1, stim_1 ")
    assert g.values.tolist() == [["bulk_group", "ctrl_1", "bulk_group"], ["bulk_group", "stim_1", "bulk_group"]]
    with pytest.raises(InputError, match=r"--bulk_group 'ctrl_1,foo': sample\(s\) foo not found .*available: ctrl_1"):
        bio.read_groups(bulk6, bulk_group="ctrl_1,foo")
    with pytest.raises(InputError, match="pass only one"):
        bio.read_groups(bulk6, samplesheet="x.csv", bulk_group="ctrl_1")
    own = bio.read_groups(bulk6)
    assert own["sample"].tolist() == list(bulk6.columns)
    assert own["group"].tolist() == ["ctrl_1", "ctrl_2", "ctrl_3", "stim_1", "stim_2", "x_y"]
    assert own["name"].tolist() == list(bulk6.columns)


# -------------------------------------------------------------------------------- reference
def make_reference(n_per_type=(6, 5, 4), n_genes=30, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    n = sum(n_per_type)
    x = rng.poisson(1.0, size=(n, n_genes)).astype(np.float32)
    labels = np.repeat([f"T{i}" for i in range(len(n_per_type))], n_per_type)
    return ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame({"cluster": labels, "other": 1},
                                                            index=[f"c{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def test_read_reference_standardises(tmp_path):
    a = make_reference()
    a.write_h5ad(tmp_path / "r.h5ad")
    out = refio.read_reference(tmp_path / "r.h5ad", "cluster")
    assert out.shape == (15, 30) and list(out.obs.columns) == ["celltype"]
    assert isinstance(out.obs["celltype"].dtype, pd.CategoricalDtype)
    assert list(out.obs["celltype"].cat.categories) == ["T0", "T1", "T2"]
    assert sp.isspmatrix_csr(out.X) and out.X.dtype == np.float32
    np.testing.assert_array_equal(out.X.toarray(), a.X.toarray())
    assert out.uns["prepare"]["counts_source"] == "X"
    assert out.uns["prepare"]["celltype_counts"] == {"T0": 6, "T1": 5, "T2": 4}


def test_read_reference_prefers_count_layers(tmp_path):
    a = make_reference()
    counts = a.X.copy()
    a.layers["counts"] = counts
    lognorm = a.X.copy()
    lognorm.data = np.log1p(lognorm.data * 1.7).astype(np.float32)
    a.X = lognorm
    a.write_h5ad(tmp_path / "layer.h5ad")
    out = refio.read_reference(tmp_path / "layer.h5ad", "cluster")
    assert out.uns["prepare"]["counts_source"] == "layers['counts']"
    np.testing.assert_array_equal(out.X.toarray(), counts.toarray())

    b = make_reference()
    b.raw = b.copy()
    b.X = lognorm
    b.write_h5ad(tmp_path / "raw.h5ad")
    out = refio.read_reference(tmp_path / "raw.h5ad", "cluster")
    assert out.uns["prepare"]["counts_source"] == ".raw.X"
    np.testing.assert_array_equal(out.X.toarray(), counts.toarray())


@pytest.mark.parametrize("mutate,needle", [
    (lambda a: setattr(a, "X", sp.csr_matrix(np.log1p(a.X.toarray() * 1.3))), "X has non-integer values"),
    (lambda a: a.X.data.__setitem__(0, -1.0), "X has negative values"),
    (lambda a: a.X.data.__setitem__(0, np.nan), "X has 1 NaN values"),
])
def test_read_reference_not_counts(tmp_path, mutate, needle):
    a = make_reference()
    mutate(a)
    a.write_h5ad(tmp_path / "r.h5ad")
    with pytest.raises(InputError) as err:
        refio.read_reference(tmp_path / "r.h5ad", "cluster")
    msg = str(err.value)
    assert f"--reference {tmp_path / 'r.h5ad'}: no raw counts found" in msg and needle in msg
    assert "needs raw integer counts" in msg


def test_read_reference_errors(tmp_path):
    a = make_reference((6, 1))
    a.write_h5ad(tmp_path / "r.h5ad")
    with pytest.raises(InputError, match=r"--celltype_key 'celltype' is not a column of .*r.h5ad obs \(found: cluster, other\)"):
        refio.read_reference(tmp_path / "r.h5ad", "celltype")
    with pytest.raises(InputError, match=r"fewer than 2 cells in obs\['cluster'\]: 'T1' \(1\); remove those cells or merge"):
        refio.read_reference(tmp_path / "r.h5ad", "cluster")
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    with pytest.raises(InputError, match=r"--reference .*junk.h5ad: cannot be read as h5ad"):
        refio.read_reference(tmp_path / "junk.h5ad", "cluster")
    with pytest.raises(InputError, match=r"--reference .*missing.h5ad: file not found"):
        refio.read_reference(tmp_path / "missing.h5ad", "cluster")


@pytest.mark.filterwarnings("ignore:.* names are not unique")
def test_read_reference_unlabelled_and_duplicates(tmp_path, capsys):
    a = make_reference()
    a.obs["cluster"] = a.obs["cluster"].astype(object)
    a.obs.iloc[0, 0] = np.nan
    a.obs_names = ["dup"] * 3 + [f"c{i}" for i in range(3, 15)]
    a.var_names = ["g0", "g0"] + [f"g{j}" for j in range(2, 30)]
    a.write_h5ad(tmp_path / "r.h5ad")
    out = refio.read_reference(tmp_path / "r.h5ad", "cluster")
    assert out.n_obs == 14 and out.obs_names.is_unique and out.var_names.is_unique
    assert out.uns["prepare"]["n_cells_unlabelled_dropped"] == 1
    err = capsys.readouterr().err
    assert "1 cells without a label" in err and "duplicate cell names made unique" in err
    assert "duplicate gene names made unique" in err


def test_subsample_is_seeded_and_keeps_every_type(tmp_path):
    a = make_reference((40, 30, 2))
    a.write_h5ad(tmp_path / "r.h5ad")
    r1 = refio.read_reference(tmp_path / "r.h5ad", "cluster", max_single_cells=10, seed=7)
    r2 = refio.read_reference(tmp_path / "r.h5ad", "cluster", max_single_cells=10, seed=7)
    r3 = refio.read_reference(tmp_path / "r.h5ad", "cluster", max_single_cells=10, seed=8)
    assert r1.n_obs == 10 and list(r1.obs_names) == list(r2.obs_names)
    assert list(r1.obs_names) != list(r3.obs_names)
    assert r1.obs["celltype"].value_counts()["T2"] == 2  # the small type survives
    np.testing.assert_array_equal(r1.X.toarray(), a[r1.obs_names].X.toarray())
    assert refio.read_reference(tmp_path / "r.h5ad", "cluster", max_single_cells=500).n_obs == 72
    with pytest.raises(InputError, match=r"--max_single_cells 5: too small .* at least 6"):
        refio.subsample_indices(a.obs["cluster"].to_numpy(), 5, seed=0)


def _atlas(n: int = 400, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """A reference with several types, unlabelled cells and integer counts (CSR)."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(0.4, (n, n_genes)).astype(np.float32)
    x[rng.random((n, n_genes)) < 0.5] = 0
    labels = rng.choice(["B", "T", "NK", "Mono", "DC"], n, p=[0.3, 0.3, 0.2, 0.17, 0.03]).astype(object)
    labels[rng.choice(n, 7, replace=False)] = None
    obs = pd.DataFrame({"other": rng.normal(size=n), "cluster": pd.Categorical(labels)},
                       index=[f"cell{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def _layout(a: ad.AnnData, where: str, fmt: str) -> ad.AnnData:
    """Put the counts in X / layers['counts'] / .raw as CSR, CSC or dense (log values elsewhere)."""
    conv = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": lambda m: m.toarray()}[fmt]
    counts = a.X.copy()
    lognorm = counts.copy()
    lognorm.data = np.log1p(lognorm.data * 1.7).astype(np.float32)
    b = a.copy()
    if where == "X":
        b.X = conv(counts)
    elif where == "layer":
        b.X = lognorm
        b.layers["counts"] = conv(counts)
    else:  # raw, with one more gene than X
        full = ad.AnnData(X=conv(sp.hstack([counts, counts[:, :1]]).tocsr()), obs=b.obs,
                          var=pd.DataFrame(index=list(b.var_names) + ["extra"]))
        b.raw = full
        b.X = lognorm
    return b


def _whole_file(path, *args, **kw) -> ad.AnnData:
    """read_reference as it was before partial reads: the whole file in memory, same selection."""
    src = h5read.MemoryReference(ad.read_h5ad(path))
    return refio._select_reference(src, f"--reference {path}", path, *args, **kw)


def _assert_same_reference(x: ad.AnnData, y: ad.AnnData) -> None:
    assert list(x.obs_names) == list(y.obs_names) and list(x.var_names) == list(y.var_names)
    assert list(x.obs["celltype"]) == list(y.obs["celltype"])
    assert list(x.obs["celltype"].cat.categories) == list(y.obs["celltype"].cat.categories)
    assert x.X.dtype == y.X.dtype == np.float32 and sp.isspmatrix_csr(x.X)
    for attr in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(x.X, attr), getattr(y.X, attr))
    assert x.uns["prepare"] == y.uns["prepare"]


@pytest.mark.parametrize("where", ["X", "layer", "raw"])
@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_partial_read_gives_the_whole_file_result(tmp_path, monkeypatch, where, fmt):
    a = _layout(_atlas(), where, fmt)
    path = tmp_path / "atlas.h5ad"
    a.write_h5ad(path)
    expect = _whole_file(path, "cluster", 120, 5)
    expect_all = _whole_file(path, "cluster", None, 5)
    # small read blocks so spans, gaps and CSC blocks are all exercised on this small file
    monkeypatch.setattr(h5read, "_READ_BLOCK", 97)
    monkeypatch.setattr(h5read, "_READ_GAP", 5)

    def no_whole_read(*_a, **_k):
        raise AssertionError("the whole file was read")

    monkeypatch.setattr(refio.ad, "read_h5ad", no_whole_read)
    got = refio.read_reference(path, "cluster", 120, 5)
    _assert_same_reference(got, expect)
    assert got.n_obs == 120 and got.uns["prepare"]["n_cells_unlabelled_dropped"] == 7
    # the chosen rows are the seeded subsample of the labelled cells, with their own counts
    kept = np.flatnonzero(a.obs["cluster"].notna().to_numpy())
    labels = a.obs["cluster"].astype(str).to_numpy()[kept]
    chosen = kept[refio.subsample_indices(labels, 120, 5)]
    assert list(got.obs_names) == list(a.obs_names[chosen])
    counts = _atlas().X[chosen].toarray()
    if where == "raw":  # .raw holds one more gene, a copy of the first
        counts = np.hstack([counts, counts[:, :1]])
    np.testing.assert_array_equal(got.X.toarray(), counts)
    # no subsampling: every labelled cell
    _assert_same_reference(refio.read_reference(path, "cluster", None, 5), expect_all)


def test_partial_read_same_seed_same_subsample_on_bundled_reference():
    path = TEST_DATA / "reference.h5ad"
    for seed in (0, 42):
        _assert_same_reference(refio.read_reference(path, "celltype", 150, seed),
                               _whole_file(path, "celltype", 150, seed))


def test_unknown_layout_falls_back_to_whole_file(tmp_path, monkeypatch, capsys):
    a = _atlas()
    path = tmp_path / "old.h5ad"
    a.write_h5ad(path)
    import h5py

    with h5py.File(path, "r+") as f:  # a matrix encoding the partial reader does not know
        f["X"].attrs["encoding-type"] = "some_future_matrix"
    with pytest.raises(InputError, match="cannot be read as h5ad"):  # anndata cannot either
        refio.read_reference(path, "cluster", 50, 1)
    assert "layout not readable in part (matrix encoding 'some_future_matrix'); reading the whole file" \
        in capsys.readouterr().out
    a.write_h5ad(path)

    def unknown(self, f):
        raise h5read.Unsupported("test layout")

    monkeypatch.setattr(h5read.H5Reference, "__init__", unknown)
    got = refio.read_reference(path, "cluster", 50, 1)
    monkeypatch.undo()
    _assert_same_reference(got, refio.read_reference(path, "cluster", 50, 1))


def test_subsample_indices_uniform_fill():
    labels = np.array(["a"] * 900 + ["b"] * 100)
    idx = refio.subsample_indices(labels, 500, seed=1)
    assert idx.size == 500 and np.all(np.diff(idx) > 0)
    assert 30 < (labels[idx] == "b").sum() < 75  # ~50 expected under uniform sampling


# ---------------------------------------------------------------------------- shared genes
def test_check_shared_genes(capsys):
    assert bio.check_shared_genes(["c", "a", "z"] + [f"g{i}" for i in range(60)], ["a", "c"] + [f"g{i}" for i in range(60)]) \
        == ["c", "a"] + [f"g{i}" for i in range(60)]
    assert capsys.readouterr().err == ""
    assert bio.check_shared_genes(["a", "b"], ["b"], "--bulk B", "--reference R") == ["b"]
    assert "only 1 genes shared between --bulk B and --reference R" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"no genes shared between --bulk B and --reference R \(bulk genes look like "
                                         r"ENSG1, ENSG2; reference genes like TP53\); pass --gene_map"):
        bio.check_shared_genes(["ENSG1", "ENSG2"], ["TP53"], "--bulk B", "--reference R")
    with pytest.raises(InputError, match="letter case"):
        bio.check_shared_genes(["TP53"], ["Tp53"])


# ------------------------------------------------------------------------------- outputs
def test_write_json_and_uns(tmp_path):
    bio.write_json(tmp_path / "a.json", {"n": np.int64(3), "x": np.float32(0.5), "p": tmp_path}, params={"seed": 1})
    data = json.loads((tmp_path / "a.json").read_text())
    assert data == {"n": 3, "x": 0.5, "p": str(tmp_path), "params": {"seed": 1}}
    with pytest.raises(ValueError, match="params"):
        bio.write_json(tmp_path / "b.json", {"n": 1})
    a = bio.set_uns_params(make_reference(), {"seed": 3, "path": Path("x")})
    assert json.loads(a.uns["b2s"]) == {"path": "x", "seed": 3}
    prov = bio.provenance({"seed": 3}, "X")
    assert prov["params"] == {"seed": 3} and prov["versions"]["numpy"] == np.__version__


def test_atomic_write_replaces_symlink_not_target(tmp_path):
    target = write(tmp_path / "input.tsv", GOOD)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "bulk_counts.tsv").symlink_to(target)
    bio.write_counts(bio.read_counts(target) * 2, tmp_path / "work" / "bulk_counts.tsv")
    assert target.read_text() == GOOD
    assert not (tmp_path / "work" / "bulk_counts.tsv").is_symlink()
    with pytest.raises(InputError, match="would overwrite the input"):
        bio.guard_inputs([target], [target])


# ------------------------------------------------------------------------------ the script
def run_script(tmp_path, *args):
    cmd = [sys.executable, str(BIN / "prepare_inputs.py"), *pipeline_args("PREPARE_INPUTS"), "--max_single_cells", "300", "--seed", "5",
           "--outdir", str(tmp_path / "out"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_script_end_to_end(tmp_path):
    res = run_script(tmp_path, "--bulk", TEST_DATA / "bulk_counts_ids.tsv.gz", "--reference",
                     TEST_DATA / "reference.h5ad", "--celltype_key", "celltype", "--gene_map",
                     TEST_DATA / "gene_map.tsv", "--samplesheet", TEST_DATA / "samplesheet.csv")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    bulk = pd.read_csv(out / "bulk_counts.tsv", sep="\t", index_col=0)
    ref_bulk = pd.read_csv(TEST_DATA / "bulk_counts.tsv.gz", sep="\t", index_col=0)
    assert bulk.index.name == "gene"
    pd.testing.assert_frame_equal(bulk, ref_bulk)  # mapped IDs give back the symbol table
    groups = pd.read_csv(out / "groups.csv")
    pd.testing.assert_frame_equal(groups[["group", "sample"]], pd.read_csv(TEST_DATA / "samplesheet.csv"))
    assert groups["name"].tolist() == groups["group"].tolist()  # safe names are their own slug
    ref = ad.read_h5ad(out / "reference.h5ad")
    assert ref.n_obs == 300 and sp.isspmatrix_csr(ref.X) and ref.X.dtype == np.float32
    assert json.loads(ref.uns["b2s"])["seed"] == 5
    assert ref.obs["celltype"].nunique() == 10
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["params"]["celltype_key"] == "celltype"
    assert summary["reference"]["n_cells_before"] == 420 and summary["reference"]["n_cells_after"] == 300
    assert summary["n_shared_genes"] == 765 and summary["groups"]["n_groups"] == 2
    assert summary["bulk"]["gene_map"]["n_mapped"] == 765
    # Same seed, same cells.
    res2 = subprocess.run([sys.executable, str(BIN / "prepare_inputs.py"), *pipeline_args("PREPARE_INPUTS"), "--bulk", str(TEST_DATA / "bulk_counts.tsv.gz"),
                           "--reference", str(TEST_DATA / "reference.h5ad"), "--celltype_key", "celltype",
                           "--max_single_cells", "300", "--seed", "5", "--outdir", str(tmp_path / "out2")],
                          capture_output=True, text=True, timeout=120)
    assert res2.returncode == 0, res2.stderr
    assert list(ad.read_h5ad(tmp_path / "out2" / "reference.h5ad").obs_names) == list(ref.obs_names)
    assert pd.read_csv(tmp_path / "out2" / "groups.csv")["group"].tolist() == list(ref_bulk.columns)


@pytest.mark.parametrize("extra,needle", [
    (["--bulk", TEST_DATA / "bulk_counts.tsv.gz", "--celltype_key", "bulk_labels"],
     "ERROR: --celltype_key 'bulk_labels' is not a column of"),
    (["--bulk", TEST_DATA / "bulk_counts.tsv.gz", "--celltype_key", "celltype", "--bulk_group", "ctrl_1,ctrl_9"],
     "ERROR: --bulk_group 'ctrl_1,ctrl_9': sample(s) ctrl_9 not found"),
    (["--bulk", TEST_DATA / "bulk_counts_ids.tsv.gz", "--celltype_key", "celltype"],
     "ERROR: no genes shared between --bulk"),
])
def test_script_errors(tmp_path, extra, needle):
    res = run_script(tmp_path, "--reference", TEST_DATA / "reference.h5ad", *extra)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(needle), res.stderr
    assert not (tmp_path / "out" / "reference.h5ad").exists()


def _labels_as_strings(lab: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The former per-cell string cleaning of labels: (stripped label per cell, unlabelled mask)."""
    s = lab.astype("string").str.strip()
    bad = (s.isna() | (s == "") | s.str.lower().isin(["nan", "none", "na"])).to_numpy()
    return s.to_numpy(dtype=object), bad


@pytest.mark.parametrize("categorical", [True, False])
def test_label_codes_equal_the_per_cell_string_cleaning(categorical):
    rng = np.random.default_rng(3)
    pool = np.array(["T", " T", "B ", "NK", "", "NaN", "none", "NA", None, "Mono", "dc"], dtype=object)
    values = pool[rng.integers(0, len(pool), 500)]
    lab = pd.Series(pd.Categorical(values) if categorical else values)
    codes, names = refio.label_codes(lab)
    strings, bad = _labels_as_strings(lab)
    np.testing.assert_array_equal(codes < 0, bad)
    assert list(names[codes[~bad]]) == list(strings[~bad])
    assert len(set(names)) == len(names) and "T" in set(names) and " T" not in set(names)
    # the subsample chosen from the codes is the one chosen from the label strings
    keep = np.flatnonzero(~bad)
    np.testing.assert_array_equal(refio.subsample_indices(codes[keep], 60, 5),
                                  refio.subsample_indices(strings[keep].astype(str), 60, 5))
    numeric = refio.label_codes(pd.Series(pd.Categorical([3, 1, 3, 2])))
    assert list(numeric[1][numeric[0]]) == ["3", "1", "3", "2"]


def test_cell_names_are_read_for_the_chosen_cells_only(tmp_path, monkeypatch):
    a = _atlas(n=1000)
    path = tmp_path / "atlas.h5ad"
    a.write_h5ad(path)
    monkeypatch.setattr(h5read, "_NAME_BLOCK", 64)  # many blocks, some without a chosen cell
    got = refio.read_reference(path, "cluster", 50, 4)
    monkeypatch.undo()
    _assert_same_reference(got, _whole_file(path, "cluster", 50, 4))
    import h5py

    with h5py.File(path, "r") as f:
        rows = np.array([0, 63, 64, 65, 999])
        names = h5read._h5_index_rows(f["obs"][f["obs"].attrs["_index"]], rows)
    assert list(names) == [f"cell{i}" for i in rows]

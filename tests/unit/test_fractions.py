"""Tests of b2s.fractions.estimate: estimators, group means, target cell numbers, metrics, the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.optimize import nnls

BIN = Path(__file__).resolve().parents[2] / "bin"

import b2s.fractions.estimate as F  # noqa: E402
from b2s.errors import InputError  # noqa: E402
from b2s.fractions.mlp import simulate_pseudobulk  # noqa: E402
from b2s.fractions.signature import batched_nnls  # noqa: E402
from tests.helpers import pipeline_args  # noqa: E402

TYPES = ["B cell", "Mono/Mac", "NK+", "T"]  # unsorted-looking names with / + and space


def _synthetic(seed: int = 0, n_per_type: int = 40, n_genes: int = 120):
    """Reference (CSR counts) and a generator of cells from the same model.

    Every type has 15 marker genes with high expression and different library sizes, so
    cell fractions differ from count shares.
    """
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, n_genes)
    means = np.tile(base, (len(TYPES), 1))
    for t in range(len(TYPES)):
        means[t, t * 15:(t + 1) * 15] += 25.0 * (t + 1)
    means *= np.array([1.0, 2.0, 0.7, 1.3])[:, None]  # library size differs per type

    def cells(n_each: list[int]) -> tuple[np.ndarray, np.ndarray]:
        lab = np.repeat(np.arange(len(TYPES)), n_each)
        return rng.poisson(means[lab]).astype(np.float32), lab

    x, lab = cells([n_per_type] * len(TYPES))
    ref = ad.AnnData(sparse.csr_matrix(x),
                     obs=pd.DataFrame({"celltype": pd.Categorical(np.array(TYPES)[lab])},
                                      index=[f"c{i}" for i in range(len(lab))]),
                     var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))

    def bulk(fracs: np.ndarray, n_cells: int = 300) -> pd.DataFrame:
        cols = []
        for f in fracs:
            xs, _ = cells(list(np.round(f * n_cells).astype(int)))
            cols.append(xs.sum(axis=0))
        return pd.DataFrame(np.array(cols).T, index=ref.var_names,
                            columns=[f"s{i}" for i in range(len(fracs))])

    return ref, bulk, rng


@pytest.fixture(scope="module")
def mixture():
    ref, make_bulk, rng = _synthetic()
    fr = rng.dirichlet(np.ones(len(TYPES)), 8)
    b = make_bulk(fr)
    truth = pd.DataFrame(np.round(fr * 300) / np.round(fr * 300).sum(1, keepdims=True),
                         index=b.columns, columns=TYPES)
    return ref, b, truth


FAST = {"wls": {}, "nnls": {}, "tape": {"n_pseudobulk": 400, "epochs": 15}, "scaden": {"n_pseudobulk": 400, "epochs": 8}}


@pytest.mark.parametrize("method", F.METHODS)
def test_estimators_recover_known_fractions(mixture, method):
    ref, b, truth = mixture
    pred = F.estimate_sample_fractions(b, ref, method=method, seed=3, **FAST[method])
    assert list(pred.columns) == sorted(TYPES)
    assert list(pred.index) == list(b.columns)
    assert (pred.to_numpy() >= 0).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-9)
    acc = F.fraction_accuracy(pred, truth)
    assert acc["r"] > 0.9, acc
    assert acc["rmse"] < 0.1, acc


@pytest.mark.parametrize("method", ["tape", "scaden"])
def test_mlp_estimators_are_seeded(mixture, method):
    ref, b, _ = mixture
    kw = {"n_pseudobulk": 200, "epochs": 2}
    a = F.estimate_sample_fractions(b, ref, method=method, seed=7, **kw)
    a2 = F.estimate_sample_fractions(b, ref, method=method, seed=7, **kw)
    c = F.estimate_sample_fractions(b, ref, method=method, seed=8, **kw)
    pd.testing.assert_frame_equal(a, a2)
    assert not np.allclose(a.to_numpy(), c.to_numpy())


def test_nnls_cell_share_corrects_library_size(mixture):
    """Types with large libraries dominate expression shares; cell shares undo that."""
    ref, b, truth = mixture
    cells = F.fraction_accuracy(F.estimate_sample_fractions(b, ref, "nnls"), truth)["rmse"]
    expr = F.fraction_accuracy(F.estimate_sample_fractions(b, ref, "nnls", cell_share=False), truth)["rmse"]
    assert cells < expr


def test_batched_nnls_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.random((200, 6))
    truth = rng.random((6, 12)) * (rng.random((6, 12)) > 0.3)
    b = a @ truth + rng.normal(0, 0.05, (200, 12))
    got = batched_nnls(a, b)
    ref = np.array([nnls(a, b[:, j])[0] for j in range(b.shape[1])]).T
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert (got >= 0).all()


def test_simulate_pseudobulk_sums_drawn_cells():
    """One indicator gene per type: pseudo-bulk counts of gene t = number of cells of type t."""
    lab = np.repeat([0, 1, 2], [3, 5, 2])
    x = sparse.csr_matrix(np.eye(3, dtype=np.float32)[lab])
    ref = ad.AnnData(x, obs=pd.DataFrame({"celltype": pd.Categorical(np.array(["a", "b", "c"])[lab])},
                                         index=[f"c{i}" for i in range(10)]))
    summed, frac, types = simulate_pseudobulk(ref, 50, 20, np.random.default_rng(0))
    assert types == ["a", "b", "c"]
    assert summed.shape == (50, 3) and sparse.issparse(summed)
    np.testing.assert_allclose(summed.toarray(), frac * 20)
    np.testing.assert_allclose(frac.sum(axis=1), 1.0)
    assert (frac[:25] == 0).any(axis=1).all()  # the sparse half lacks at least one type


def test_unknown_method_and_no_shared_genes(mixture):
    ref, b, _ = mixture
    with pytest.raises(InputError, match="--method 'foo'"):
        F.estimate_sample_fractions(b, ref, method="foo")
    other = b.copy()
    other.index = [f"ENSG{i}" for i in range(len(other))]
    with pytest.raises(InputError, match="--gene_map"):
        F.estimate_sample_fractions(other, ref, method="nnls")


def test_group_fractions_are_sample_means():
    sf = pd.DataFrame({"a": [0.2, 0.4, 1.0], "b": [0.8, 0.6, 0.0]}, index=["s1", "s2", "s3"])
    groups = pd.DataFrame({"group": ["x", "x", "y"], "sample": ["s2", "s1", "s3"]})
    g = F.group_fractions(sf, groups)
    assert list(g.index) == ["x", "y"] and g.index.name == "group"
    np.testing.assert_allclose(g.loc["x"], [0.3, 0.7])
    np.testing.assert_allclose(g.loc["y"], [1.0, 0.0])
    with pytest.raises(InputError, match="s9"):
        F.group_fractions(sf, pd.DataFrame({"group": ["x"], "sample": ["s9"]}))


def test_cell_targets_formula():
    # reference: 4 cells, 100 counts in total
    x = sparse.csr_matrix(np.array([[10, 15], [20, 5], [30, 0], [0, 20]], dtype=np.float32))
    ref = ad.AnnData(x, obs=pd.DataFrame({"celltype": pd.Categorical(["A", "A", "B", "C"])},
                                         index=list("wxyz")))
    bulk = pd.DataFrame({"s1": [100, 300], "s2": [200, 400], "s3": [50, 0]}, index=["g1", "g2"])
    groups = pd.DataFrame({"group": ["G", "G", "H"], "sample": ["s1", "s2", "s3"]})
    fr = pd.DataFrame({"A": [0.5, 0.9], "B": [0.499, 0.1], "C": [0.001, 0.0]}, index=["G", "H"])
    t = F.cell_targets(bulk, groups, ref, fr, scale_size=2)
    assert list(t.columns) == ["group", "celltype", "fraction", "n_cells"]
    # G: mean library = (400 + 600) / 2 = 500 -> total = 4 * 500 / 100 = 20 cells, x2 = 40
    # H: library 50 -> total 2 cells, x2 = 4
    got = t.set_index(["group", "celltype"])["n_cells"].to_dict()
    assert got == {("G", "A"): 20, ("G", "B"): 19, ("G", "C"): 1,   # 19.96 -> 19; 0.04 -> floor 1
                   ("H", "A"): 3, ("H", "B"): 1, ("H", "C"): 1}    # 3.6 -> 3; 0.4 -> 1; 0 -> 1
    assert t["n_cells"].dtype.kind == "i"
    np.testing.assert_allclose(t["fraction"], [0.5, 0.499, 0.001, 0.9, 0.1, 0.0])
    assert F.total_cells(bulk, groups, ref) == {"G": 20.0, "H": 2.0}


def test_fraction_accuracy_values():
    truth = pd.DataFrame({"a": [0.5, 0.2], "b": [0.5, 0.8]}, index=["s1", "s2"])
    perfect = F.fraction_accuracy(truth, truth)
    assert perfect["r"] == pytest.approx(1.0) and perfect["rmse"] == 0 and perfect["ccc"] == pytest.approx(1.0)
    pred = pd.DataFrame({"b": [0.6, 0.8], "a": [0.4, 0.2]}, index=["s1", "s2"])  # columns reordered
    acc = F.fraction_accuracy(pred, truth)
    assert acc["rmse"] == pytest.approx(np.sqrt(0.02 / 4))
    a, b = np.array([0.4, 0.6, 0.2, 0.8]), np.array([0.5, 0.5, 0.2, 0.8])
    assert acc["r"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    ccc = 2 * np.cov(a, b, bias=True)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
    assert acc["ccc"] == pytest.approx(ccc)


def test_estimate_fractions_script(tmp_path, mixture):
    ref, b, _ = mixture
    b.index.name = "gene"
    b.round().astype(int).to_csv(tmp_path / "bulk_counts.tsv", sep="\t")
    pd.DataFrame({"group": ["g1"] * 4 + ["g2"] * 4, "sample": list(b.columns)}).to_csv(
        tmp_path / "groups.csv", index=False)
    ref.write_h5ad(tmp_path / "reference.h5ad")
    out = tmp_path / "out"
    cmd = [sys.executable, str(BIN / "estimate_fractions.py"), *pipeline_args("ESTIMATE_FRACTIONS"), "--bulk", str(tmp_path / "bulk_counts.tsv"),
           "--groups", str(tmp_path / "groups.csv"), "--reference", str(tmp_path / "reference.h5ad"),
           "--method", "nnls", "--seed", "5", "--outdir", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for f in ["fractions.csv", "sample_fractions.csv", "cell_targets.csv", "fractions_barplot.png",
              "fractions_summary.json"]:
        assert (out / f).stat().st_size > 0, f
    fr = pd.read_csv(out / "fractions.csv", index_col="group")
    assert list(fr.index) == ["g1", "g2"] and list(fr.columns) == sorted(TYPES)
    np.testing.assert_allclose(fr.sum(axis=1), 1.0, atol=1e-9)
    sf = pd.read_csv(out / "sample_fractions.csv", index_col="sample")
    np.testing.assert_allclose(fr.loc["g1"], sf.iloc[:4].mean(), atol=1e-12)
    t = pd.read_csv(out / "cell_targets.csv")
    assert len(t) == 2 * len(TYPES) and (t["n_cells"] >= 1).all() and t["n_cells"].dtype.kind == "i"
    summary = json.loads((out / "fractions_summary.json").read_text())
    assert summary["method"] == "nnls" and summary["params"]["seed"] == 5
    assert summary["groups"]["g1"]["target_cells"] == int(t.loc[t.group == "g1", "n_cells"].sum())
    # composition change between the two groups, with intervals and its plot
    cc = pd.read_csv(out / "composition_contrast.csv")
    assert set(cc["group"]) == {"g1", "g2"} and len(cc) == 2 * len(TYPES)
    np.testing.assert_allclose(cc.loc[cc.group == "g1", "change"].to_numpy(),
                               (sf.iloc[:4].mean() - sf.iloc[4:].mean()).reindex(cc.loc[cc.group == "g1", "celltype"]),
                               atol=1e-5)
    assert (out / "composition_contrast.png").stat().st_size > 1000
    assert "composition change between groups" in res.stdout

    # a sample missing from the bulk is one clear line, exit 2
    pd.DataFrame({"group": ["g1"], "sample": ["nope"]}).to_csv(tmp_path / "bad.csv", index=False)
    cmd[cmd.index(str(tmp_path / "groups.csv"))] = str(tmp_path / "bad.csv")
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith("ERROR: groups.csv") and "nope" in res.stderr and "Traceback" not in res.stderr

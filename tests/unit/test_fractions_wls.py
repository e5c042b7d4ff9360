"""Tests of the wls estimator, curated marker files and the goodness of fit."""

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
REPO = BIN.parent

import b2s.fractions.estimate as F  # noqa: E402
import b2s.head.inputs as binputs  # noqa: E402
import b2s.head.params as bp  # noqa: E402
import b2s.head.schema as bschema  # noqa: E402
from b2s.errors import InputError  # noqa: E402
from b2s.fractions.fit import goodness_of_fit  # noqa: E402
from b2s.fractions.markers import pairwise_markers, read_markers  # noqa: E402
from b2s.fractions.signature import type_profiles  # noqa: E402
from b2s.fractions.wls import batched_nnls_gram  # noqa: E402
from tests.helpers import pipeline_args  # noqa: E402

TYPES = ["B", "CD4 T", "CD8 T", "Mono", "NK"]


def _model(seed: int = 0, n_genes: int = 400):
    """Negative-binomial cells of 5 types: CD4 and CD8 share everything but 6 genes; every type
    has its own library size (mRNA content), so cell and read shares differ."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(1.5, 1.0, n_genes)
    means = np.tile(base, (len(TYPES), 1))
    means[0, 0:20] += 15
    means[1, 20:50] += 10
    means[2, 20:50] += 10  # T-cell programme shared by CD4 and CD8
    means[1, 50:53] += 6   # the few genes that tell CD4 ...
    means[2, 53:56] += 6   # ... from CD8
    means[3, 60:90] += 20
    means[4, 90:110] += 12
    means *= np.array([1.0, 0.8, 0.9, 2.0, 1.2])[:, None]

    def cells(n_each) -> tuple[np.ndarray, np.ndarray]:
        lab = np.repeat(np.arange(len(TYPES)), n_each)
        mu = means[lab]
        return rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32), lab

    x, lab = cells([80] * len(TYPES))
    ref = ad.AnnData(sparse.csr_matrix(x),
                     obs=pd.DataFrame({"celltype": pd.Categorical(np.array(TYPES)[lab])},
                                      index=[f"c{i}" for i in range(len(lab))]),
                     var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))

    def bulk(fracs: np.ndarray, n_cells: int = 400) -> tuple[pd.DataFrame, pd.DataFrame]:
        cols, truth = [], []
        for f in fracs:
            n = rng.multinomial(n_cells, f)
            xs, _ = cells(n)
            cols.append(xs.sum(axis=0))
            truth.append(n / n.sum())
        names = [f"s{i}" for i in range(len(fracs))]
        return (pd.DataFrame(np.array(cols).T, index=ref.var_names, columns=names),
                pd.DataFrame(truth, index=names, columns=TYPES))

    return ref, bulk, rng


@pytest.fixture(scope="module")
def data():
    ref, make_bulk, rng = _model()
    fr = rng.dirichlet(np.ones(len(TYPES)), 12)
    b, truth = make_bulk(fr)
    return ref, b, truth, make_bulk


def test_wls_recovers_cell_fractions_including_similar_types(data):
    ref, b, truth, _ = data
    pred = F.estimate_sample_fractions(b, ref, "wls")
    assert list(pred.columns) == sorted(TYPES) and list(pred.index) == list(b.columns)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-12)
    acc = F.fraction_accuracy(pred, truth)
    assert acc["r"] > 0.95 and acc["rmse"] < 0.05, acc
    bias = (pred[TYPES] - truth).mean()
    assert bias.abs().max() < 0.03, bias
    # the CD4 / CD8 split is recovered sample by sample, not only on average
    assert np.corrcoef(pred["CD4 T"], truth["CD4 T"])[0, 1] > 0.8


def test_wls_is_deterministic_and_per_sample(data):
    """Same input -> identical output; each sample's estimate does not depend on the others
    (the batched solve equals solving the samples one at a time)."""
    ref, b, _, _ = data
    a = F.estimate_sample_fractions(b, ref, "wls", seed=1)
    a2 = F.estimate_sample_fractions(b, ref, "wls", seed=1)
    pd.testing.assert_frame_equal(a, a2)
    one = pd.concat([F.estimate_sample_fractions(b[[c]], ref, "wls") for c in b.columns[:3]])
    np.testing.assert_allclose(one.to_numpy(), a.iloc[:3].to_numpy(), atol=1e-6)


def test_wls_gives_cell_not_read_fractions(data):
    """Monocytes carry twice the mRNA per cell: read shares would double them."""
    ref, _, _, make_bulk = data
    b, truth = make_bulk(np.full((4, len(TYPES)), 1 / len(TYPES)))
    pred = F.estimate_sample_fractions(b, ref, "wls")
    assert abs(pred["Mono"].mean() - truth["Mono"].mean()) < 0.04


def test_batched_nnls_gram_matches_scipy():
    rng = np.random.default_rng(3)
    a = rng.random((150, 6))
    a[:, 1] = a[:, 0] + 0.05 * rng.random(150)  # two nearly collinear columns
    w = rng.random((9, 150)) + 0.1
    truth = rng.random((9, 6)) * (rng.random((9, 6)) > 0.3)
    b = truth @ a.T + rng.normal(0, 0.05, (9, 150))
    gram = np.einsum("gk,sg,gl->skl", a, w, a)
    rhs = np.einsum("gk,sg->sk", a, w * b)
    got = batched_nnls_gram(gram, rhs)
    sw = np.sqrt(w)
    want = np.array([nnls(a * sw[j][:, None], b[j] * sw[j])[0] for j in range(9)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pairwise_markers_find_the_pair_specific_genes(data):
    ref, _, _, _ = data
    lab = pd.Categorical(ref.obs["celltype"].astype(str), categories=sorted(TYPES))
    genes = pairwise_markers(sparse.csr_matrix(ref.X), lab.codes, len(TYPES), n_per_pair=10)
    assert set(range(50, 56)) <= set(genes)  # the CD4-vs-CD8 genes
    assert genes.size < ref.n_vars / 2


# ------------------------------------------------------------------------------- markers file
def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_markers_file_is_used(tmp_path, data):
    ref, b, truth, _ = data
    rows = [("B", "g0"), ("B", "g1"), ("CD4 T", "g50"), ("CD4 T", "g51"), ("CD8 T", "g53"), ("CD8 T", "g54"),
            ("Mono", "g60"), ("Mono", "g61"), ("NK", "g90"), ("NK", "g91")]
    rows += [("CD4 T", f"g{i}") for i in range(20, 30)]
    path = _write(tmp_path / "m.csv", "celltype,gene\n" + "\n".join(f"{t},{g}" for t, g in rows) + "\n")
    markers = read_markers(path, sorted(TYPES), list(ref.var_names))
    assert markers["B"] == ["g0", "g1"]
    pred = F.estimate_sample_fractions(b, ref, "wls", markers=markers)
    assert sorted(pred.attrs["marker_genes"]) == sorted({g for _, g in rows})
    assert F.fraction_accuracy(pred, truth)["r"] > 0.8
    nn = F.estimate_sample_fractions(b, ref, "nnls", markers=markers)
    assert sorted(nn.attrs["marker_genes"]) == sorted({g for _, g in rows})


@pytest.mark.parametrize("text, match", [
    ("", "the file is empty"),
    ("type,gene\nB,g0\n", "missing column\\(s\\) celltype"),
    ("celltype,gene\n", "no marker rows"),
    ("celltype,gene\nB,\n", "line\\(s\\) 2 have an empty celltype or gene"),
    ("celltype,gene\nB,g0\nT cells,g1\n", "cell type\\(s\\) T cells are not in the reference"),
    ("celltype,gene\nB,g0\nCD4 T,g50\nCD8 T,g53\nMono,g60\n", "cell type\\(s\\) NK have no marker gene"),
    ("celltype,gene\nB,g0\nCD4 T,g50\nCD8 T,g53\nMono,g60\nNK,XYZ1\nNK,XYZ2\n",
     "no marker of cell type\\(s\\) NK is a gene shared .*XYZ1"),
])
def test_bad_markers_files_are_one_line_errors(tmp_path, data, text, match):
    ref, _, _, _ = data
    path = _write(tmp_path / "markers.csv", text)
    with pytest.raises(InputError, match=match) as err:
        read_markers(path, sorted(TYPES), list(ref.var_names))
    msg = str(err.value)
    assert msg.startswith(f"--markers {path}:") and "\n" not in msg


@pytest.mark.parametrize("text, match", [
    ("", "the file is empty"),
    ("type,gene\nB,g0\n", "missing column(s) celltype"),
    ("celltype,gene\n", "no marker rows"),
    ("celltype\tgene\nB\t\n", "empty celltype or gene"),
])
def test_params_validator_checks_markers_before_tasks(tmp_path, text, match):
    path = _write(tmp_path / "markers.csv", text)
    errs = binputs.validate_markers_file(path)
    assert len(errs) == 1 and match in errs[0] and errs[0].startswith(f"--markers {path}:")
    ok = _write(tmp_path / "ok.csv", "celltype,gene\nB,g0\n")
    assert binputs.validate_markers_file(ok) == []


def test_params_validator_refuses_markers_with_omicverse(tmp_path):
    schema = bschema.load_schema(REPO / "nextflow_schema.json")
    ok = _write(tmp_path / "ok.csv", "celltype,gene\nB,g0\n")
    base = {"bulk": str(REPO / "assets/test_data/bulk_counts.tsv.gz"),
            "reference": str(REPO / "assets/test_data/reference.h5ad"), "markers": ok}
    assert bp.validate_params(base, schema, schema_dir=REPO).errors == []
    res = bp.validate_params({**base, "engine": "omicverse"}, schema, schema_dir=REPO)
    assert any("--markers" in e and "--engine native" in e for e in res.errors)
    bad = _write(tmp_path / "bad.csv", "gene\ng0\n")
    res = bp.validate_params({**base, "markers": bad}, schema, schema_dir=REPO)
    assert any("missing column(s) celltype" in e for e in res.errors)


# ------------------------------------------------------------------------------ goodness of fit
def test_goodness_of_fit_flags_a_type_missing_from_the_reference(data):
    ref, _, _, make_bulk = data
    fr = np.tile([0.1, 0.1, 0.1, 0.6, 0.1], (3, 1))  # monocyte-rich samples
    b, truth = make_bulk(fr)
    full = F.estimate_sample_fractions(b, ref, "wls")
    fit = goodness_of_fit(b, ref, full)
    assert fit["explained"].all() and (fit["fit_r"] > 0.9).all(), fit
    no_mono = ref[ref.obs["celltype"] != "Mono"].copy()
    part = F.estimate_sample_fractions(b, no_mono, "wls")
    fit2 = goodness_of_fit(b, no_mono, part)
    assert (~fit2["explained"]).all(), fit2
    assert (fit2["residual"] > fit["residual"]).all()


def test_goodness_of_fit_is_perfect_for_an_exact_mixture(data):
    ref, _, _, _ = data
    prof = type_profiles(ref)
    fr = np.array([[0.2, 0.3, 0.1, 0.3, 0.1]])
    b = pd.DataFrame((fr @ prof["mean"]).T * 400, index=ref.var_names, columns=["x"])
    fit = goodness_of_fit(b, ref, pd.DataFrame(fr, index=["x"], columns=prof["types"]))
    assert fit.loc["x", "fit_r"] == pytest.approx(1.0) and fit.loc["x", "residual"] == pytest.approx(0.0, abs=1e-12)


def test_script_writes_fit_and_uses_markers(tmp_path, data):
    ref, b, _, make_bulk = data
    bm, _ = make_bulk(np.tile([0.1, 0.1, 0.1, 0.6, 0.1], (2, 1)))
    bulk = pd.concat([b.iloc[:, :4], bm.set_axis(["m1", "m2"], axis=1)], axis=1)
    bulk.index.name = "gene"
    bulk.round().astype(int).to_csv(tmp_path / "bulk_counts.tsv", sep="\t")
    pd.DataFrame({"group": ["g1"] * 4 + ["g2"] * 2, "sample": list(bulk.columns)}).to_csv(tmp_path / "groups.csv", index=False)
    ref[ref.obs["celltype"] != "Mono"].copy().write_h5ad(tmp_path / "reference.h5ad")
    out = tmp_path / "out"
    cmd = [sys.executable, str(BIN / "estimate_fractions.py"), *pipeline_args("ESTIMATE_FRACTIONS"), "--bulk", str(tmp_path / "bulk_counts.tsv"),
           "--groups", str(tmp_path / "groups.csv"), "--reference", str(tmp_path / "reference.h5ad"), "--outdir", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "fractions_summary.json").read_text())
    assert summary["method"] == "wls" and summary["markers"]["source"] == "automatic"
    assert summary["counting_noise"] == {"rule": "library_size"}  # counts: their own library sizes
    gof = summary["goodness_of_fit"]["samples"]
    assert not gof["m1"]["explained"] and not gof["m2"]["explained"]
    assert "sample m1: the reference explains it poorly" in res.stderr
    assert pd.read_csv(out / "fractions_fit.csv", index_col=0).shape[0] == 6
    # a curated list replaces the automatic one; a bad one is one line, exit 2
    _write(tmp_path / "m.csv", "celltype,gene\nB,g0\nCD4 T,g50\nCD8 T,g53\nNK,g90\n")
    res = subprocess.run(cmd + ["--markers", str(tmp_path / "m.csv")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "fractions_summary.json").read_text())["markers"] == {"source": str(tmp_path / "m.csv"), "n_genes": 4}
    _write(tmp_path / "bad.csv", "celltype,gene\nMono,g60\n")
    res = subprocess.run(cmd + ["--markers", str(tmp_path / "bad.csv")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith(f"ERROR: --markers {tmp_path / 'bad.csv'}: cell type(s) Mono")
    assert len(res.stderr.strip().splitlines()) == 1


def test_report_shows_goodness_of_fit_and_warns(tmp_path):
    from b2s.report.build import build_report

    summary = {"method": "wls", "goodness_of_fit": {
        "thresholds": {"min_fit_r": 0.9, "max_residual": 0.12},
        "samples": {"s1": {"fit_r": 0.97, "residual": 0.05, "explained": True},
                    "s2": {"fit_r": 0.62, "residual": 0.41, "explained": False}},
        "n_unexplained": 1}}
    (tmp_path / "fractions_summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report.html"
    build_report(str(tmp_path), str(out), {}, None)
    html = out.read_text()
    assert "Goodness of fit per sample" in html and "0.620" in html and "0.410" in html
    assert "explains 1 sample(s) poorly (s2)" in html
    (tmp_path / "fractions_summary.json").write_text(json.dumps({"method": "nnls"}))  # older summaries: no section
    build_report(str(tmp_path), str(out), {}, None)
    assert "Goodness of fit" not in out.read_text()


def test_errors_in_variables_correction_reduces_the_small_type_bias(data):
    """A type with 8 reference cells has a noisy signature; uncorrected, its coefficient is
    attenuated and the similar type absorbs its cells. The correction (eiv) must shrink that bias."""
    ref, _, _, make_bulk = data
    lab = ref.obs["celltype"].to_numpy()
    keep = np.flatnonzero(lab != "CD8 T")
    keep = np.sort(np.concatenate([keep, np.flatnonzero(lab == "CD8 T")[:8]]))
    small = ref[keep].copy()
    rng = np.random.default_rng(3)
    b, truth = make_bulk(rng.dirichlet(np.ones(len(TYPES)) * 3, 24))
    bias = {}
    for eiv in (0.0, 0.5):
        est = F.estimate_sample_fractions(b, small, method="wls", eiv=eiv)[TYPES]
        bias[eiv] = float((est - truth).mean()["CD8 T"])
    assert bias[0.0] < -0.04  # the attenuation this corrects is there (-0.064 when written)
    assert abs(bias[0.5]) < 0.5 * abs(bias[0.0])  # -0.025 when written


@pytest.mark.parametrize("phi", [0.0, 0.01])
@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_fit_bulk_scale_recovers_the_counting_noise_of_a_bulk_without_library_size(scale, phi):
    """TPM/FPKM carry no library size; the counting-noise scale p (CPM per read) is fitted from the
    residuals. Residuals drawn with a known p (plus reference-mean and phi*mu^2 terms) give it back."""
    from b2s.fractions.wls import fit_bulk_scale

    rng = np.random.default_rng(3)
    n_samples, n_genes = 4, 600
    mu = rng.lognormal(2.0, 2.0, (n_samples, n_genes))
    per_read = mu * rng.uniform(1.0, 1.5, (1, n_genes))  # counting + cell sampling per read
    fixed = 0.01 * mu
    true_var = fixed + scale * per_read + phi * mu ** 2
    bulk = mu + rng.standard_normal(mu.shape) * np.sqrt(true_var)
    got = fit_bulk_scale(bulk, mu, fixed, per_read, multiplicative="fit" if phi else 0.0)
    assert got.shape == (n_samples,)
    np.testing.assert_allclose(np.log(got), np.log(scale), atol=np.log(1.5))

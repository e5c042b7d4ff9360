"""QC: proportions, marker correlation, MDE embedding, metrics (b2s.qc.metrics, bin/qc.py)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import b2s.qc as qc
from b2s.errors import InputError
from b2s.qc.metrics import read_all_targets
from b2s.qc.stage import QcOptions, run_qc
from tests.helpers import load_script, pbmc_model_input, pipeline_args, write_bulk_inputs


@pytest.fixture(scope="module")
def ref() -> ad.AnnData:
    """pbmc68k_reduced as model input (tests.helpers.pbmc_model_input)."""
    return pbmc_model_input()


def _resampled(ref: ad.AnnData, n: int, seed: int) -> ad.AnnData:
    """Fake generated cells: reference cells drawn with replacement, noise on non-zeros."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(ref.n_obs, n)
    x = ref.X[idx].toarray()
    x = np.clip(x + rng.normal(0, 0.1, x.shape) * (x > 0), 0, None).astype(np.float32)
    obs = pd.DataFrame({"celltype": ref.obs["celltype"].astype(str).to_numpy()[idx]},
                       index=[f"G_{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=ref.var.copy())


@pytest.fixture(scope="module")
def gen(ref) -> ad.AnnData:
    return _resampled(ref, 800, seed=1)


@pytest.fixture(scope="module")
def markers(ref) -> dict:
    return qc.reference_markers(ref, top_n=50)


def test_proportions_sum_to_one(ref, gen):
    filt = gen[gen.obs["celltype"] != "CD34+"].copy()
    types = sorted(ref.obs["celltype"].unique())
    targets = pd.DataFrame({"celltype": types + ["Unseen type"],
                            "n_cells": list(range(1, len(types) + 1)) + [5]})
    props = qc.celltype_proportions(ref, targets, gen, filt)
    for col in ("reference", "target", "generated", "filtered"):
        assert props[col].sum() == pytest.approx(1.0)
        assert (props[col] >= 0).all()
    assert list(props.index[: len(types)]) == types  # reference order first
    assert props.index[-1] == "Unseen type"
    assert props.loc["Unseen type", "n_reference"] == 0 and props.loc["Unseen type", "n_target"] == 5
    assert props.loc["CD34+", "n_filtered"] == 0 and props.loc["CD34+", "filtered"] == 0
    assert props["n_generated"].sum() == gen.n_obs
    assert props.loc["Dendritic", "reference"] == pytest.approx(240 / 700)
    with pytest.raises(InputError, match="n_cells"):
        qc.celltype_proportions(ref, targets.drop(columns="n_cells"), gen, filt)


def test_reference_markers(ref, markers):
    assert set(markers) == set(ref.obs["celltype"].astype(str))
    assert all(len(m) == 50 and len(set(m)) == 50 for m in markers.values())
    # the top markers of a type are higher in that type than in the rest
    x = ref.X.toarray()
    lab = ref.obs["celltype"].astype(str).to_numpy()
    for t in ("CD19+ B", "CD14+ Monocyte", "CD56+ NK"):
        for g in markers[t][:5]:
            j = list(ref.var_names).index(g)
            assert x[lab == t, j].mean() > x[lab != t, j].mean() + 0.5, (t, g)


def test_marker_correlation_high_for_resampled(ref, gen, markers):
    summary, matrix = qc.marker_correlation(ref, gen, top_n=50, markers=markers)
    types = list(ref.obs["celltype"].cat.categories)
    assert list(summary["celltype"]) == types  # one row per reference type
    assert list(summary.columns[:3]) == ["celltype", "pearson_r", "n_markers"]
    assert matrix.shape == (len(types), len(types)) and list(matrix.index) == types
    assert (summary["pearson_r"] > 0.9).all()
    union = len({g for m in markers.values() for g in m})
    assert (summary["n_markers"] == union).all() and (summary["n_own_markers"] == 50).all()
    diag = np.diag(matrix.to_numpy())
    np.testing.assert_allclose(summary["pearson_r"], diag)
    off = matrix.to_numpy()[~np.eye(len(types), dtype=bool)]
    assert diag.mean() > off.mean() + 0.2  # matching types correlate best
    assert matrix.loc["CD19+ B"].idxmax() == "CD19+ B"


def test_marker_correlation_matches_direct_computation(ref, gen, markers):
    summary, _ = qc.marker_correlation(ref, gen, markers=markers)
    union = list(dict.fromkeys(g for t in ref.obs["celltype"].cat.categories for g in markers[t]))
    t = "CD56+ NK"
    a = ref[ref.obs["celltype"] == t, union].X.toarray().mean(axis=0)
    b = gen[gen.obs["celltype"] == t, union].X.toarray().mean(axis=0)
    r = np.corrcoef(a, b)[0, 1]
    assert summary.set_index("celltype").loc[t, "pearson_r"] == pytest.approx(r, abs=1e-5)


def test_missing_type_gets_nan_with_note(ref, gen, markers):
    part = gen[gen.obs["celltype"] != "CD34+"].copy()
    summary, matrix = qc.marker_correlation(ref, part, markers=markers)
    row = summary.set_index("celltype").loc["CD34+"]
    assert np.isnan(row["pearson_r"]) and "absent" in row["note"]
    assert row["n_generated"] == 0
    assert "CD34+" in matrix.index and "CD34+" not in matrix.columns
    assert summary["pearson_r"].notna().sum() == len(summary) - 1


def test_embed_shape_and_determinism(ref, gen):
    r = qc.subsample(ref, 150, seed=0)
    g = qc.subsample(gen, 150, seed=1)
    assert r.n_obs == g.n_obs == 150
    assert list(r.obs_names) == sorted(r.obs_names, key=list(ref.obs_names).index)
    c1 = qc.embed(r, g, seed=4)
    c2 = qc.embed(r, g, seed=4)
    assert c1.shape == (300, 2) and np.isfinite(c1).all()
    np.testing.assert_array_equal(c1, c2)
    # Standardized constraint: centred, unit covariance
    np.testing.assert_allclose(c1.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(c1.T @ c1 / len(c1), np.eye(2), atol=1e-2)
    # generated cells land near reference cells of their own type
    lab_r = r.obs["celltype"].astype(str).to_numpy()
    lab_g = g.obs["celltype"].astype(str).to_numpy()
    d = ((c1[150:, None, :] - c1[None, :150, :]) ** 2).sum(-1)
    assert (lab_r[d.argmin(axis=1)] == lab_g).mean() > 0.6


def test_qc_metrics(ref, gen, markers):
    filt = gen[:700].copy()
    targets = gen.obs["celltype"].value_counts().rename_axis("celltype").reset_index(name="n_cells")
    props = qc.celltype_proportions(ref, targets, gen, filt)
    summary, _ = qc.marker_correlation(ref, filt, markers=markers)
    m = qc.qc_metrics(props, summary, {"seed": 1}, filter_summary={"n_cells_in": 800, "params": {}})
    text = json.dumps(m, allow_nan=False)  # JSON-able, NaN as null
    assert json.loads(text)["params"] == {"seed": 1}
    assert m["n_generated"] == 800 and m["n_filtered"] == 700 and m["n_target"] == 800
    assert m["fraction_kept"] == pytest.approx(700 / 800)
    assert m["proportion_l1"]["target_vs_generated"] == pytest.approx(0.0)
    l1 = float(np.abs(props["target"] - props["filtered"]).sum())
    assert m["proportion_l1"]["target_vs_filtered"] == pytest.approx(l1, abs=1e-6)
    assert m["marker_r_mean"] == pytest.approx(summary["pearson_r"].mean(), abs=1e-6)
    assert set(m["per_celltype"]) == set(props.index)
    assert m["filter"] == {"n_cells_in": 800}


def test_read_targets_errors(tmp_path):
    p = tmp_path / "cell_targets.csv"
    p.write_text("group,celltype,fraction,n_cells\nA,T,0.5,10\nA,B,0.5,10\nB,T,1,3\n")
    rows = qc.read_targets(str(p), "A")
    assert list(rows["celltype"]) == ["T", "B"] and rows["n_cells"].sum() == 20
    with pytest.raises(InputError, match="--group 'C' is not in"):
        qc.read_targets(str(p), "C")
    p.write_text("group,celltype\nA,T\n")
    with pytest.raises(InputError, match="lacks column"):
        qc.read_targets(str(p), "A")


def test_read_all_targets(tmp_path):
    """Every group in file order, each as read_targets reads it (GENERATE's contrast cohort)."""
    p = tmp_path / "cell_targets.csv"
    p.write_text("group,celltype,fraction,n_cells\nB,T,1,3\nA,T,0.5,10\nA,B,0.5,10\n")
    rows = read_all_targets(str(p))
    assert list(rows) == ["B", "A"]
    for g, r in rows.items():
        pd.testing.assert_frame_equal(r, qc.read_targets(str(p), g))
    p.write_text("group,celltype,fraction,n_cells\nA,T,0.5,1.5\n")
    with pytest.raises(InputError, match="non-integer or negative n_cells for group 'A'"):
        read_all_targets(str(p))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("top_markers", 0, "--top_markers 0: must be >= 1"),
    ("mde_max_cells", 2, "--mde_max_cells 2: must be >= 3"),
])
def test_qc_option_errors_state_no_default(option, value, message):
    kwargs = {"top_markers": 200, option: value}
    opts = QcOptions(generated=["g.h5ad"], filtered=["f.h5ad"], reference="r.h5ad", targets="t.csv", group=["g"],
                     seed=1, outdir=".", **kwargs)
    with pytest.raises(InputError, match=f"^{message}$"):
        run_qc(opts)


def test_qc_script(tmp_path, ref):
    gen = _resampled(ref, 300, seed=2)
    filt = gen[gen.obs["celltype"] != "CD34+"].copy()
    filt.uns["b2s"] = json.dumps({"summary": {"dropped_clusters": ["7"], "notes": []}})
    ref.write_h5ad(tmp_path / "model_input.h5ad")
    gen.write_h5ad(tmp_path / "G.generated.h5ad")
    filt.write_h5ad(tmp_path / "G.filtered.h5ad")
    counts = gen.obs["celltype"].value_counts()
    pd.DataFrame({"group": "G", "celltype": counts.index, "fraction": counts / counts.sum(),
                  "n_cells": counts.values}).to_csv(tmp_path / "cell_targets.csv", index=False)
    out = tmp_path / "out"
    bulk, groups = write_bulk_inputs(tmp_path, ref)
    load_script("bin/qc.py").main(pipeline_args("QC") + [
        "--bulk", bulk, "--groups", groups,
        "--generated", str(tmp_path / "G.generated.h5ad"),
        "--filtered", str(tmp_path / "G.filtered.h5ad"),
        "--reference", str(tmp_path / "model_input.h5ad"),
        "--targets", str(tmp_path / "cell_targets.csv"), "--group", "G",
        "--top_markers", "30", "--seed", "5", "--mde_max_cells", "120", "--outdir", str(out)])
    for suffix in ("cellprop.png", "cellprop.csv", "correlation.png", "correlation.csv",
                   "mde.png", "metrics.json"):
        assert (out / f"G.{suffix}").stat().st_size > 0, suffix
    corr = pd.read_csv(out / "G.correlation.csv")
    assert list(corr.columns[:3]) == ["celltype", "pearson_r", "n_markers"]
    assert len(corr) == ref.obs["celltype"].nunique()
    assert corr.set_index("celltype")["pearson_r"].isna().to_dict()["CD34+"]
    metrics = json.loads((out / "G.metrics.json").read_text())
    assert metrics["params"]["top_markers"] == 30 and metrics["group"] == "G"
    assert metrics["n_filtered"] == filt.n_obs and metrics["celltypes_without_r"] == ["CD34+"]
    assert metrics["filter"]["dropped_clusters"] == ["7"]
    assert metrics["mde_cells"] == {"reference": 120, "generated": 120}
    props = pd.read_csv(out / "G.cellprop.csv", index_col=0)
    assert props["filtered"].sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match="--group 'X' is not in"):
        load_script("bin/qc.py").main(pipeline_args("QC") + [
            "--bulk", bulk, "--groups", groups,
            "--generated", str(tmp_path / "G.generated.h5ad"),
            "--filtered", str(tmp_path / "G.filtered.h5ad"),
            "--reference", str(tmp_path / "model_input.h5ad"),
            "--targets", str(tmp_path / "cell_targets.csv"), "--group", "X",
            "--outdir", str(out)])


def test_identity_distinct_types_all_identified(ref, gen, markers):
    summary, matrix = qc.marker_correlation(ref, gen, top_n=50, markers=markers)
    assert (summary["r_margin"] > 0).all()
    assert (summary["best_match"] == summary["celltype"]).all()
    t = "CD19+ B"
    row = matrix.loc[t]
    assert summary.set_index("celltype").loc[t, "r_margin"] == pytest.approx(
        row[t] - row.drop(t).max(), abs=1e-6)
    ident = qc.identity_summary(summary)
    n = len(summary)
    assert ident == {"n_celltypes_identified": n, "n_celltypes_assessed": n,
                     "celltype_identity_rate": 1.0, "marker_r_margin_median": pytest.approx(
                         float(summary["r_margin"].median()), abs=1e-6), "warnings": []}


def test_identity_flags_the_same_cell_generated_for_every_type(ref, markers):
    """An undertrained VAE's failure mode: every type gets the average cell; r is high, margin 0."""
    avg = np.asarray(ref.X.mean(axis=0)).ravel()
    types = ref.obs["celltype"].astype(str).unique()
    labels = np.repeat(types, 20)
    rng = np.random.default_rng(0)
    x = np.clip(avg + rng.normal(0, 0.01, (len(labels), ref.n_vars)), 0, None).astype(np.float32)
    flat = ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame({"celltype": labels},
                      index=[f"F_{i}" for i in range(len(labels))]), var=ref.var.copy())
    summary, _ = qc.marker_correlation(ref, flat, top_n=50, markers=markers)
    assert summary["pearson_r"].median() > 0.5  # r alone looks fine ...
    assert summary["r_margin"].abs().max() < 0.05  # ... but no type stands out
    targets = pd.Series(labels).value_counts().rename_axis("celltype").reset_index(name="n_cells")
    props = qc.celltype_proportions(ref, targets, flat, flat)
    m = qc.qc_metrics(props, summary, {"seed": 1})
    assert m["celltype_identity_rate"] < qc.MIN_IDENTITY_RATE
    assert len(m["warnings"]) == 1 and "--epoch_num" in m["warnings"][0]
    assert m["per_celltype"]["CD19+ B"]["r_margin"] is not None


def test_identity_with_one_generated_type_is_not_assessed(ref, gen, markers):
    only_b = gen[gen.obs["celltype"] == "CD19+ B"].copy()
    summary, _ = qc.marker_correlation(ref, only_b, markers=markers)
    assert summary["r_margin"].isna().all()
    ident = qc.identity_summary(summary)
    assert ident["n_celltypes_assessed"] == 0 and ident["celltype_identity_rate"] is None
    assert ident["warnings"] == []


def test_identity_warns_when_types_are_told_apart_by_a_hair():
    """The seed's settings on a real reference: 6 of 9 types 'told apart' with a median margin of 3e-4."""
    margins = [0.0003, 0.0001, -0.001, 0.0005, 0.0002, 0.0004, -0.0002, -0.0001, 0.0003]
    ident = qc.identity_summary(pd.DataFrame({"r_margin": margins}))
    assert ident["n_celltypes_identified"] == 6 and ident["celltype_identity_rate"] > qc.MIN_IDENTITY_RATE
    assert len(ident["warnings"]) == 1
    w = ident["warnings"][0]
    assert "6 of 9" in w and "median margin 0.0002" in w and "--epoch_num" in w and "MDE" in w
    clear = qc.identity_summary(pd.DataFrame({"r_margin": [0.05, 0.08, 0.02]}))
    assert clear["warnings"] == []


def _flat(ref: ad.AnnData, per_type: int = 20) -> ad.AnnData:
    avg = np.asarray(ref.X.mean(axis=0)).ravel()
    labels = np.repeat(ref.obs["celltype"].astype(str).unique(), per_type)
    rng = np.random.default_rng(0)
    x = np.clip(avg + rng.normal(0, 0.01, (len(labels), ref.n_vars)), 0, None).astype(np.float32)
    return ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame({"celltype": labels},
                      index=[f"F_{i}" for i in range(len(labels))]), var=ref.var.copy())


def test_knn_typing_of_real_like_and_mixed_cells(ref, gen):
    good = qc.typing_summary(ref, gen, seed=0)
    assert good["typing_accuracy"] > 0.5 and good["typing_ratio"] > qc.MIN_TYPING_RATIO
    assert 0 < good["typing_accuracy_reference"] <= 1 and good["warnings"] == []
    assert set(good["typing_per_celltype"]) == set(gen.obs["celltype"].astype(str))
    again = qc.typing_summary(ref, gen, seed=0)
    assert again == good  # seeded
    bad = qc.typing_summary(ref, _flat(ref), seed=0)
    assert bad["typing_ratio"] < qc.MIN_TYPING_RATIO
    assert len(bad["warnings"]) == 1 and "--epoch_num" in bad["warnings"][0]
    # the classifier is fit on the training cells only; leave-one-out excludes each cell itself
    typer = qc.KnnTyper(ref, seed=0)
    assert (typer.predict(ref) == typer.labels).mean() >= (typer.predict_train_loo() == typer.labels).mean()
    m = qc.qc_metrics(qc.celltype_proportions(ref, pd.DataFrame({"celltype": ["CD19+ B"], "n_cells": [1]}),
                                              gen, gen),
                      qc.marker_correlation(ref, gen, markers=qc.reference_markers(ref, 50))[0], {},
                      typing=bad)
    assert m["typing_accuracy"] == bad["typing_accuracy"] and bad["warnings"][0] in m["warnings"]

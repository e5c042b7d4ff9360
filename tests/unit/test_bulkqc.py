"""QC against the bulk (b2s.qc.bulk) and bulk-informed generation (b2s.generate.bulkshift, GENERATE --bulk_shift)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import b2s.generate.bulkshift as bulkshift
import b2s.qc.bulk as bulkqc
from b2s.errors import InputError
from b2s.generate.cells import generate_cells
from b2s.model.vae import BetaVAE
from tests.helpers import load_script, pipeline_args

TYPES = ["A", "B", "C"]
N_GENES = 300
N_CELLS = {"A": 120, "B": 80, "C": 60}
FRACTIONS = np.array([0.5, 0.3, 0.2])


def _profiles(seed: int = 0) -> np.ndarray:
    """Types x genes expected count per cell: shared genes plus type-specific ones, a few genes off in C."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, N_GENES)
    prof = np.vstack([base * rng.lognormal(0, 0.3, N_GENES) for _ in TYPES])
    for i in range(len(TYPES)):
        prof[i, i * 20:(i + 1) * 20] *= 8.0  # markers
    prof[2, 280:] = 0.0  # genes off in type C
    return prof


@pytest.fixture(scope="module")
def reference() -> ad.AnnData:
    """Model input: counts layer, total_counts, log-normalised X, obs['celltype']."""
    rng = np.random.default_rng(1)
    prof = _profiles()
    labels = np.concatenate([[t] * N_CELLS[t] for t in TYPES])
    counts = rng.poisson(prof[[TYPES.index(t) for t in labels]]).astype(np.float32)
    lib = counts.sum(axis=1)
    x = np.log1p(counts / lib[:, None] * 1e4).astype(np.float32)
    obs = pd.DataFrame({"celltype": pd.Categorical(labels, categories=TYPES), "total_counts": lib.astype(float)},
                       index=[f"r{i}" for i in range(len(labels))])
    out = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))
    out.layers["counts"] = sp.csr_matrix(counts)
    return out


def _bulk(reference: ad.AnnData, fractions: np.ndarray, change: dict[tuple[str, int], float] | None = None,
          n_samples: int = 3, depth: float = 2e6, seed: int = 2) -> pd.DataFrame:
    """Poisson bulk samples of the reference's per-type means, optional fold changes per (type, gene)."""
    rng = np.random.default_rng(seed)
    prof = bulkqc.type_mean_counts(reference, TYPES, reference.var_names)
    for (t, g), fc in (change or {}).items():
        prof[TYPES.index(t), g] *= fc
    mean = fractions @ prof
    mean = mean / mean.sum() * depth
    cols = {f"s{k}": rng.poisson(mean) for k in range(n_samples)}
    return pd.DataFrame(cols, index=reference.var_names.copy())


def _generated_from(reference: ad.AnnData, fractions: np.ndarray, n: int = 600, seed: int = 3) -> ad.AnnData:
    """Cells drawn from the reference with the given type fractions (no model): a composition-only generator."""
    rng = np.random.default_rng(seed)
    labels = reference.obs["celltype"].astype(str).to_numpy()
    k = rng.multinomial(n, fractions)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == t), c) for t, c in zip(TYPES, k)])
    out = reference[idx].copy()
    out.obs_names = [f"G_{i}" for i in range(len(idx))]
    return out


def test_score_exact_offset_and_constant():
    y = np.linspace(0, 10, 50)
    s = bulkqc.score(y, y)
    assert s["pearson_r"] == pytest.approx(1) and s["spearman_r"] == pytest.approx(1)
    assert s["var_explained"] == pytest.approx(1) and s["n_genes"] == 50
    off = bulkqc.score(y, y + 2.0)  # perfectly correlated, but not explained: no refit
    assert off["pearson_r"] == pytest.approx(1) and off["var_explained"] < 0.6
    assert bulkqc.score(y, np.ones(50))["pearson_r"] is None


def test_cpm_and_group_bulk():
    x = np.array([[1.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(bulkqc.cpm(x), [[2.5e5, 7.5e5], [0.0, 0.0]])
    bulk = pd.DataFrame({"a1": [1, 2], "a2": [3, 4], "b1": [5, 6]}, index=["g1", "g2"])
    groups = pd.DataFrame({"group": ["a", "a", "b"], "sample": ["a1", "a2", "b1"]})
    assert list(bulkqc.group_bulk(bulk, groups, "a").columns) == ["a1", "a2"]
    with pytest.raises(InputError, match="'z' is not in the groups"):
        bulkqc.group_bulk(bulk, groups, "z")
    with pytest.raises(InputError, match="not columns of the bulk"):
        bulkqc.group_bulk(bulk.drop(columns="a2"), groups, "a")


def test_bulk_qc_scores_and_residual_table(reference):
    changed = {("A", g): 6.0 for g in range(100, 110)}
    bulk = _bulk(reference, FRACTIONS, changed)
    gen = _generated_from(reference, FRACTIONS)
    res = bulkqc.bulk_qc(bulk, gen, gen[:0], reference, FRACTIONS, TYPES, top_n=15)
    summ = res["summary"].set_index("profile")
    assert list(summ.index) == ["generated", "filtered", "composition_expected"]
    # composition explains most of the bulk; the changed genes are what it misses
    assert summ.loc["composition_expected", "pearson_r"] > 0.9
    assert summ.loc["generated", "pearson_r"] > 0.9
    assert pd.isna(summ.loc["filtered", "pearson_r"])  # no filtered cells: no score, no crash
    resid = res["residuals"]
    assert len(resid) == 15
    assert np.all(np.diff(np.abs(resid["residual_generated"].to_numpy())) <= 1e-12)  # sorted by |residual|
    assert len(set(resid.index[:10]) & {f"g{g}" for g in range(100, 110)}) >= 8
    np.testing.assert_allclose(resid["residual_generated"], resid["generated_log2cpm"] - resid["bulk_log2cpm"])
    m = res["metrics"]
    assert m["n_samples"] == 3 and m["generated"]["n_genes"] == N_GENES
    assert m["var_explained_gain"] == pytest.approx(m["generated"]["var_explained"]
                                                    - m["composition_expected"]["var_explained"], abs=1e-5)


def test_refit_fractions_recovers_the_composition(reference):
    true = np.array([0.2, 0.5, 0.3])
    bulk = _bulk(reference, true, n_samples=1)
    prof = bulkqc.type_mean_counts(reference, TYPES, reference.var_names)
    got = bulkshift.refit_fractions(bulkqc.cpm(bulk["s0"].to_numpy(float)), prof, FRACTIONS)
    np.testing.assert_allclose(got, true, atol=0.03)


@pytest.mark.parametrize("mode", ["allocate", "weighted"])
def test_no_change_no_shift(reference, mode):
    """A bulk of the reference's own types (fractions off by a lot) gives (almost) no shift."""
    bulk = _bulk(reference, np.array([0.3, 0.45, 0.25]))
    res = bulkshift.estimate_shifts(bulk, reference, TYPES, FRACTIONS, mode=mode)
    lfc = res["lfc"].to_numpy()
    assert (np.abs(lfc) > 0).mean() < 0.02
    assert np.abs(lfc).max() < 0.5
    assert res["fractions_refit"]["B"] == pytest.approx(0.45, abs=0.03)


def test_shifts_recover_a_change_in_the_dominant_type(reference):
    up = {("A", g): 4.0 for g in range(100, 110)}
    down = {("A", g): 0.25 for g in range(110, 120)}
    bulk = _bulk(reference, FRACTIONS, {**up, **down})
    alloc = bulkshift.estimate_shifts(bulk, reference, TYPES, FRACTIONS, mode="allocate")
    weigh = bulkshift.estimate_shifts(bulk, reference, TYPES, FRACTIONS, mode="weighted")
    a, w = alloc["lfc"], weigh["lfc"]
    genes_up = [f"g{g}" for g in range(100, 110)]
    genes_down = [f"g{g}" for g in range(110, 120)]
    controls = [f"g{g}" for g in range(150, 280)]
    # allocate: every type gets the gene's bulk ratio, diluted by the other types' share
    assert (a.loc[:, genes_up].to_numpy() > 0.5).all() and (a.loc[:, genes_down].to_numpy() < -0.1).all()
    np.testing.assert_allclose(a.loc["A", genes_up], a.loc["B", genes_up])
    # weighted: type A (half the cells, the change) gets more than the others
    assert (w.loc["A", genes_up] > w.loc["C", genes_up]).all()
    assert w.loc["A", genes_up].median() > a.loc["A", genes_up].median()
    assert (np.abs(a.loc[:, controls].to_numpy()) > 0).mean() < 0.02
    # genes off in a type stay off, whatever the bulk says
    assert (a.loc["C", [f"g{g}" for g in range(280, 300)]] == 0).all()
    table = alloc["table"]
    assert list(table.columns) == ["celltype", "gene", "log2fc", "gene_log2ratio", "se", "share"]
    assert len(table) == int((a.to_numpy() != 0).sum())
    assert np.all(np.diff(np.abs(table["log2fc"].to_numpy())) <= 1e-12)
    with pytest.raises(InputError, match="--bulk_shift"):
        bulkshift.estimate_shifts(bulk, reference, TYPES, FRACTIONS, mode="bogus")


def test_generate_applies_shifts_in_count_space(reference):
    torch.manual_seed(0)
    model = BetaVAE(N_GENES, 8)
    shift = pd.DataFrame(0.0, index=TYPES, columns=reference.var_names)
    shift.loc["A", "g100"] = 3.0
    shift.loc["C", "g290"] = 5.0  # off in C: must stay 0
    targets = {"A": 200, "C": 50}
    kw = dict(hidden_size=8, seed=7, device="cpu")
    plain = generate_cells(model, reference, targets, **kw)
    shifted = generate_cells(model, reference, targets, shift=shift, **kw)
    again = generate_cells(model, reference, targets, shift=shift, **kw)
    assert (shifted.layers["counts"] != again.layers["counts"]).nnz == 0  # seeded
    ca, cs = plain.layers["counts"].toarray(), shifted.layers["counts"].toarray()
    a = plain.obs["celltype"].to_numpy() == "A"
    j = list(reference.var_names).index("g100")
    ratio = cs[a, j].mean() / ca[a, j].mean()
    assert 5.5 < ratio < 11  # 2 ** 3 = 8, NB noise
    c = ~a
    assert cs[c, 290].sum() == 0 and ca[c, 290].sum() == 0
    # other genes and the other type are not shifted on average
    other = [k for k in range(N_GENES) if k != j]
    assert abs(np.log2(cs[:, other].sum() / ca[:, other].sum())) < 0.05
    with pytest.raises(InputError, match="NaN"):
        generate_cells(model, reference, targets, shift=shift.replace(3.0, np.nan), **kw)


def _write_inputs(tmp_path, reference, bulk: pd.DataFrame) -> dict[str, str]:
    paths = {k: str(tmp_path / n) for k, n in (("bulk", "bulk_counts.tsv"), ("groups", "groups.csv"),
                                              ("targets", "cell_targets.csv"), ("mi", "model_input.h5ad"))}
    bulk.rename_axis("gene").to_csv(paths["bulk"], sep="\t")
    pd.DataFrame({"group": ["g1"] * bulk.shape[1], "sample": list(bulk.columns)}).to_csv(paths["groups"], index=False)
    n = (FRACTIONS * 300).astype(int)
    pd.DataFrame({"group": "g1", "celltype": TYPES, "fraction": FRACTIONS, "n_cells": n}).to_csv(paths["targets"], index=False)
    mi = reference.copy()
    mi.uns["b2s"] = "{}"
    mi.write_h5ad(paths["mi"])
    return paths


def test_generate_and_qc_scripts_with_the_bulk(tmp_path, reference):
    up = {("A", g): 4.0 for g in range(100, 110)}
    p = _write_inputs(tmp_path, reference, _bulk(reference, FRACTIONS, up))
    torch.manual_seed(0)
    weights = str(tmp_path / "vae.pth")
    torch.save(BetaVAE(N_GENES, 8).state_dict(), weights)
    gen = load_script("bin/generate.py")
    base = pipeline_args("GENERATE") + ["--input", p["mi"], "--weights", weights, "--targets", p["targets"],
                                        "--group", "g1", "--hidden_size", "8", "--device", "cpu"]
    from b2s.generate.stage import GenerateOptions, run_generate  # the pipeline always passes the bulk

    opts = vars(gen.parse_args(base + ["--bulk", "b", "--groups", "g", "--outdir", str(tmp_path / "x")]))
    with pytest.raises(InputError, match="needs --bulk and --groups"):
        run_generate(GenerateOptions(**{**opts, "bulk_shift": "allocate", "bulk": None, "groups": None}))
    gen.main(base + ["--bulk_shift", "allocate", "--bulk", p["bulk"], "--groups", p["groups"],
                     "--outdir", str(tmp_path / "on")])
    gen.main(base + ["--bulk_shift", "none", "--bulk", p["bulk"], "--groups", p["groups"],
                     "--outdir", str(tmp_path / "off")])
    gen.main(base + ["--bulk", p["bulk"], "--groups", p["groups"], "--outdir", str(tmp_path / "default")])
    assert not (tmp_path / "default" / "g1.celltype_shifts.csv").exists()  # the default is none
    shifts = pd.read_csv(tmp_path / "on" / "g1.celltype_shifts.csv")
    assert set(shifts["gene"]) >= {f"g{g}" for g in range(100, 110)}
    assert not (tmp_path / "off" / "g1.celltype_shifts.csv").exists()
    on = ad.read_h5ad(tmp_path / "on" / "g1.generated.h5ad")
    assert json.loads(on.uns["bulk_shift"])["mode"] == "allocate"
    assert json.loads(ad.read_h5ad(tmp_path / "off" / "g1.generated.h5ad").uns["bulk_shift"])["mode"] == "none"

    qc = load_script("bin/qc.py")
    ve = {}
    for name in ("on", "off"):
        d = tmp_path / name
        g = str(d / "g1.generated.h5ad")
        qc.main(pipeline_args("QC") + [
                 "--generated", g, "--filtered", g, "--reference", p["mi"], "--targets", p["targets"],
                 "--group", "g1", "--bulk", p["bulk"], "--groups", p["groups"], "--top_markers", "10",
                 "--mde_max_cells", "200", "--outdir", str(d / "qc")])
        m = json.loads((d / "qc" / "g1.metrics.json").read_text())["bulk_qc"]
        assert (d / "qc" / "g1.bulk_scatter.png").stat().st_size > 1000
        assert len(pd.read_csv(d / "qc" / "g1.bulk_residuals.csv")) == 50
        assert m["bulk_shift"] == name.replace("on", "allocate").replace("off", "none")
        ve[name] = m["generated"]["var_explained"]
    # the shifted cells explain the bulk better than the plain ones
    assert ve["on"] > ve["off"]
    from b2s.qc.stage import QcOptions, run_qc  # the pipeline always passes both

    opts = vars(qc.parse_args(pipeline_args("QC") + [
        "--generated", g, "--filtered", g, "--reference", p["mi"], "--targets", p["targets"],
        "--group", "g1", "--bulk", p["bulk"], "--groups", p["groups"], "--outdir", str(tmp_path / "y")]))
    with pytest.raises(InputError, match="go together"):
        run_qc(QcOptions(**{**opts, "groups": None}))


def test_report_shows_bulk_qc_and_shifts(tmp_path):
    from b2s.report.build import build_report

    d = tmp_path / "in"
    d.mkdir()
    (d / "g1.metrics.json").write_text(json.dumps({"group": "g1", "bulk_qc": {"bulk_shift": "allocate"}}))
    pd.DataFrame({"profile": ["generated", "filtered", "composition_expected"], "pearson_r": [0.97, 0.96, 0.95],
                  "spearman_r": [0.9, 0.9, 0.9], "var_explained": [0.95, 0.94, 0.9], "n_genes": [10, 10, 10]}
                 ).to_csv(d / "g1.bulk_qc.csv", index=False)
    pd.DataFrame({"celltype": ["A", "B"], "gene": ["GZMB", "CD3E"], "log2fc": [1.5, -0.7], "gene_log2ratio": [1.5, -0.7],
                  "se": [0.1, 0.1], "share": [0.5, 0.4]}).to_csv(d / "g1.celltype_shifts.csv", index=False)
    out = tmp_path / "report.html"
    build_report(str(d), str(out), {})
    html = out.read_text()
    assert "Pseudo-bulk vs the group" in html and "Per-type shifts from the bulk (allocate)" in html
    assert "GZMB" in html and "composition_expected" in html


def test_params_warn_bulk_shift_with_omicverse():
    from b2s.head.params import validate_params
    from b2s.head.schema import load_schema
    from tests.helpers import REPO

    schema = load_schema(REPO / "nextflow_schema.json")
    base = {"bulk": str(REPO / "assets/test_data/bulk_counts.tsv.gz"),
            "reference": str(REPO / "assets/test_data/reference.h5ad")}
    res = validate_params({**base, "bulk_shift": "allocate", "engine": "omicverse"}, schema,
                          check_samplesheet=False)
    assert res.ok and any("--bulk_shift allocate is ignored" in w for w in res.warnings)
    assert validate_params({**base, "bulk_shift": "weighted"}, schema, check_samplesheet=False).ok
    assert any("bulk_shift" in e for e in validate_params({**base, "bulk_shift": "x"}, schema,
                                                          check_samplesheet=False).errors)


@pytest.mark.parametrize(("engine", "given", "used"), [
    ("omicverse", "contrast", "none"), ("omicverse", "weighted", "none"), ("omicverse", "auto", "none"),
    ("native", "weighted", "weighted"), ("native", "none", "none")])
def test_bulk_shift_with_the_omicverse_engine_is_none_and_says_so(capsys, engine, given, used):
    """omicverse's generation never reads the bulk: GENERATE itself runs a given --bulk_shift as
    none (one console line, recorded), so the pipeline passes --bulk_shift as the user gave it."""
    from b2s.generate.stage import GenerateOptions, resolve_shift

    opts = GenerateOptions(input="i", weights="w", targets="t", group="g", hidden_size=8, seed=0, device="cpu",
                           engine=engine, bulk_shift=given, bulk="b", groups="g", outdir=".")
    mode, why = resolve_shift(opts)
    assert mode == used
    if engine == "omicverse":
        assert "--engine omicverse ignores the bulk" in why
        assert capsys.readouterr().out == f"[generate] --bulk_shift none ({why})\n"

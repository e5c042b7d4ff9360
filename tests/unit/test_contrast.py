"""Between-group shifts (b2s.generate.bulkshift.contrast_model / contrast_shifts, GENERATE --bulk_shift contrast|auto)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import b2s.generate.bulkshift as bulkshift
import b2s.qc.bulk as bulkqc
from b2s.errors import InputError
from b2s.model.vae import BetaVAE
from tests.helpers import load_script, pipeline_args
from tests.unit.test_bulkqc import N_GENES, TYPES, reference  # noqa: F401 (fixture)

#: group -> cell fractions of A, B, C; in ``treated`` C holds 3 % (too rare to be identified)
DESIGN = {"ctrl": [0.5, 0.3, 0.2], "other": [0.4, 0.4, 0.2], "treated": [0.6, 0.37, 0.03]}
UP, DOWN = list(range(100, 120)), list(range(120, 140))
CONTROLS = list(range(140, 280))
#: fold changes of type A in ``treated`` only; C (3 %) is changed too, on its own genes
CHANGE = {**{("A", g): 4.0 for g in UP}, **{("A", g): 0.25 for g in DOWN},
          **{("C", g): 8.0 for g in range(60, 80)}}


def _cohort(reference, n_samples: int = 4, bias_sigma: float = 0.5, seed: int = 5):  # noqa: F811
    """Bulk (genes x samples) and groups of a 3-group cohort: replicate fractions Dirichlet(50 f), a per-gene
    platform factor (log-normal, ``bias_sigma``) shared by every sample, 10 % biological noise per sample."""
    rng = np.random.default_rng(seed)
    prof = bulkqc.type_mean_counts(reference, TYPES, reference.var_names)
    bias = rng.lognormal(0.0, bias_sigma, N_GENES)
    cols, rows = {}, []
    for grp, f in DESIGN.items():
        p = prof.copy()
        if grp == "treated":
            for (t, g), fc in CHANGE.items():
                p[TYPES.index(t), g] *= fc
        for k in range(n_samples):
            fs = rng.dirichlet(np.asarray(f) * 50)
            mean = (fs @ p) * bias * rng.lognormal(0.0, 0.1, N_GENES)
            name = f"{grp}_{k}"
            cols[name] = rng.poisson(mean / mean.sum() * 5e6)
            rows.append((grp, name))
    bulk = pd.DataFrame(cols, index=reference.var_names.copy())
    return bulk, pd.DataFrame(rows, columns=["group", "sample"])


def _fractions():
    return {g: np.asarray(f) for g, f in DESIGN.items()}


def test_contrast_recovers_a_group_change_and_cancels_a_shared_bias(reference):  # noqa: F811
    bulk, groups = _cohort(reference)
    model = bulkshift.contrast_model(bulk, groups, reference, TYPES, _fractions())
    assert model["centre"] == "median of the 3 groups"
    res = {g: bulkshift.contrast_shifts(model, g) for g in DESIGN}
    lfc = res["treated"]["lfc"]
    up, down = lfc.loc["A", [f"g{g}" for g in UP]], lfc.loc["A", [f"g{g}" for g in DOWN]]
    # recovered: at least half of the true log2 FC (+2 / -2) for the type holding 60 % of the group
    assert up.median() > 1.0 and down.median() < -1.0
    truth = np.r_[np.full(20, 2.0), np.full(20, -2.0), np.zeros(len(CONTROLS))]
    got = lfc.loc["A", [f"g{g}" for g in UP + DOWN + CONTROLS]].to_numpy()
    assert np.corrcoef(truth, got)[0, 1] > 0.8
    # the shared platform bias cancels: no shift on the control genes, nor in the unchanged groups
    assert (lfc.loc[:, [f"g{g}" for g in CONTROLS]].to_numpy() != 0).mean() < 0.02
    for g in ("ctrl", "other"):  # z = 2: ~4.6 % of the genes pass by chance
        assert (res[g]["lfc"].to_numpy() != 0).mean() < 0.05
        assert np.abs(res[g]["lfc"].to_numpy()).max() < 0.5
    # ... which a shift against the reference writes into every group
    ref_shift = bulkshift.estimate_shifts(bulkqc.group_bulk(bulk, groups, "ctrl"), reference, TYPES,
                                          _fractions()["ctrl"], mode="weighted")
    assert (ref_shift["lfc"].to_numpy() != 0).mean() > 0.2
    # C holds 3 % of the treated group: not identifiable, left unshifted although its genes changed
    summ = res["treated"]["summary"]
    assert not summ["C"]["identifiable"] and "% of the group's cells (< 5%)" in summ["C"]["reason"]
    assert summ["A"]["identifiable"] and summ["B"]["identifiable"]
    assert (lfc.loc["C"] == 0).all()
    assert summ["C"]["n_up"] == 0 and summ["A"]["n_up"] >= 15
    # the evidence rule: a type whose median gene needs a larger change than max_mde to be seen is not identifiable
    strict = bulkshift.contrast_shifts(model, "treated", max_mde=0.05)
    assert not strict["summary"]["A"]["identifiable"] and "median detectable" in strict["summary"]["A"]["reason"]
    assert (strict["lfc"].to_numpy() == 0).all()
    table = res["treated"]["table"]
    assert list(table.columns) == ["celltype", "gene", "log2fc", "se", "z", "pvalue", "padj",
                                   "gene_log2contrast", "share"]
    assert len(table) == int((lfc.to_numpy() != 0).sum()) and (table["se"] > 0).all()
    assert (table["padj"] >= table["pvalue"] - 1e-12).all() and (np.abs(table["z"]) > 2).all()


def test_bh_decision_controls_false_shifts_in_unchanged_groups(reference):  # noqa: F811
    """``fdr``: the shift decision by BH-adjusted p (the DE table's padj) instead of |z| > 2."""
    bulk, groups = _cohort(reference)
    model = bulkshift.contrast_model(bulk, groups, reference, TYPES, _fractions())
    n_z = n_fdr = 0
    for g in ("ctrl", "other"):  # unchanged groups: z 2 lets chance genes through, BH 5 % far fewer
        n_z += int((bulkshift.contrast_shifts(model, g)["lfc"].to_numpy() != 0).sum())
        n_fdr += int((bulkshift.contrast_shifts(model, g, fdr=0.05)["lfc"].to_numpy() != 0).sum())
    assert n_z >= 4 and n_fdr <= n_z / 4, (n_z, n_fdr)
    # the per-sample terms the benchmark's oracles and candidates read; refit=False keeps the given fractions
    assert model["sample_log2ratio"].shape == (len(groups), len(model["genes"]))
    fixed = bulkshift.contrast_model(bulk, groups, reference, TYPES, _fractions(), refit=False)
    np.testing.assert_allclose(fixed["sample_fractions"], np.vstack([_fractions()[g] for g in groups["group"]]))
    assert not np.allclose(model["sample_fractions"], fixed["sample_fractions"])
    treated = bulkshift.contrast_shifts(model, "treated", fdr=0.05)
    up = treated["lfc"].loc["A", [f"g{g}" for g in UP]]
    assert up.median() > 1.0 and (treated["table"]["padj"] < 0.05).all()


def test_contrast_reference_group_and_two_groups(reference):  # noqa: F811
    bulk, groups = _cohort(reference)
    model = bulkshift.contrast_model(bulk, groups, reference, TYPES, _fractions(), reference_group="ctrl")
    assert model["centre"] == "reference group ctrl"
    assert (bulkshift.contrast_shifts(model, "ctrl")["lfc"].to_numpy() == 0).all()
    up = bulkshift.contrast_shifts(model, "treated")["lfc"].loc["A", [f"g{g}" for g in UP]]
    assert up.median() > 1.0
    two = groups[groups["group"] != "other"]
    m2 = bulkshift.contrast_model(bulk[two["sample"]], two, reference, TYPES, _fractions())
    assert m2["centre"] == "mean of the 2 groups"
    # two groups without a reference group: the change is split symmetrically between them
    np.testing.assert_allclose(m2["d"][0], -m2["d"][1])
    with pytest.raises(InputError, match="--reference_group 'x'"):
        bulkshift.contrast_model(bulk, groups, reference, TYPES, _fractions(), reference_group="x")
    one = groups[groups["group"] == "ctrl"]
    with pytest.raises(InputError, match=">= 2 bulk groups"):
        bulkshift.contrast_model(bulk[one["sample"]], one, reference, TYPES, _fractions())


def _write(tmp_path, reference, bulk, groups) -> dict[str, str]:  # noqa: F811
    p = {k: str(tmp_path / n) for k, n in (("bulk", "bulk_counts.tsv"), ("groups", "groups.csv"),
                                           ("targets", "cell_targets.csv"), ("mi", "model_input.h5ad"))}
    bulk.rename_axis("gene").to_csv(p["bulk"], sep="\t")
    groups.to_csv(p["groups"], index=False)
    rows = [(g, t, f, int(f * 300)) for g, fr in DESIGN.items() for t, f in zip(TYPES, fr)]
    pd.DataFrame(rows, columns=["group", "celltype", "fraction", "n_cells"]).to_csv(p["targets"], index=False)
    mi = reference.copy()
    mi.uns["b2s"] = "{}"
    mi.write_h5ad(p["mi"])
    return p


def test_generate_auto_is_contrast_with_groups_and_none_with_one(tmp_path, reference, capsys):  # noqa: F811
    bulk, groups = _cohort(reference, n_samples=3)
    p = _write(tmp_path, reference, bulk, groups)
    weights = str(tmp_path / "vae.pth")
    torch.manual_seed(0)
    torch.save(BetaVAE(N_GENES, 8).state_dict(), weights)
    gen = load_script("bin/generate.py")
    base = pipeline_args("GENERATE") + ["--input", p["mi"], "--weights", weights, "--targets", p["targets"], "--hidden_size", "8",
            "--device", "cpu", "--bulk", p["bulk"], "--groups", p["groups"]]
    gen.main(base + ["--group", "treated", "ctrl", "--outdir", str(tmp_path / "auto")])
    assert "--bulk_shift contrast (auto: 3 groups" in capsys.readouterr().out
    rec = json.loads(ad.read_h5ad(tmp_path / "auto" / "treated.generated.h5ad").uns["bulk_shift"])
    assert rec["mode"] == "contrast" and rec["centre"] == "median of the 3 groups"
    assert rec["decision"].startswith("auto: 3 groups") and "C" in rec["not_identifiable"]
    shifts = pd.read_csv(tmp_path / "auto" / "treated.celltype_shifts.csv")
    assert set(shifts.loc[shifts["celltype"] == "A", "gene"]) >= {f"g{g}" for g in UP[:15]}
    assert "C" not in set(shifts["celltype"])
    ident = pd.read_csv(tmp_path / "auto" / "treated.celltype_identifiability.csv", index_col="celltype")
    assert not ident.loc["C", "identifiable"] and ident.loc["A", "identifiable"]
    # one group: no contrast; shifts vs the reference stay opt-in, and the reason is recorded
    one = groups[groups["group"] == "ctrl"]
    one.to_csv(tmp_path / "one.csv", index=False)
    gen.main(base[:-1] + [str(tmp_path / "one.csv"), "--group", "ctrl", "--outdir", str(tmp_path / "one")])
    rec = json.loads(ad.read_h5ad(tmp_path / "one" / "ctrl.generated.h5ad").uns["bulk_shift"])
    assert rec["mode"] == "none" and "one group" in rec["decision"] and "opt-in" in rec["decision"]
    assert not (tmp_path / "one" / "ctrl.celltype_shifts.csv").exists()

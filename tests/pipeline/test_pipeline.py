"""End-to-end: the real `nextflow run` of the pipeline on the bundled data (-profile test).

One full run is shared by the content tests; -resume, --vae_weights, -stub-run and the
bad-input runs each use their own launch directory.
"""

from __future__ import annotations

import json
import math
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from .nfrun import REPO, nextflow_run, nftest_pipeline_paths

TEST_DATA = REPO / "assets" / "test_data"
GROUPS = sorted(pd.read_csv(TEST_DATA / "samplesheet.csv")["group"].unique())
# groups per GENERATE/FILTER/QC task with the local executor and --groups_per_task unset
# (groupsPerTask() in workflows/bulk2single.nf)
LOCAL_GROUPS_PER_TASK = 8
BATCHES = math.ceil(len(GROUPS) / LOCAL_GROUPS_PER_TASK)

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The pipeline on the bundled data, as `make demo` runs it."""
    res = nextflow_run(tmp_path_factory.mktemp("full"), "-profile", "test")
    assert res.returncode == 0, res.output[-4000:]
    return res


def test_fractions_per_group_sum_to_one_and_track_truth(full_run):
    fracs = pd.read_csv(full_run.outdir / "estimate_fractions" / "fractions.csv", index_col=0)
    assert sorted(fracs.index) == GROUPS
    np.testing.assert_allclose(fracs.sum(axis=1), 1.0, atol=1e-6)
    assert (fracs.values >= 0).all()
    truth = pd.read_csv(TEST_DATA / "truth_group_fractions.csv", index_col=0).loc[fracs.index, fracs.columns]
    r = np.corrcoef(fracs.values.ravel(), truth.values.ravel())[0, 1]
    assert r > 0.8, f"group fractions correlate poorly with the truth: r={r:.3f}"
    assert (full_run.outdir / "estimate_fractions" / "fractions_barplot.png").stat().st_size > 1000


def test_generated_counts_match_targets_and_filter_keeps_subset(full_run):
    targets = pd.read_csv(full_run.outdir / "estimate_fractions" / "cell_targets.csv")
    assert (targets["n_cells"] >= 1).all()
    for group in GROUPS:
        gen = ad.read_h5ad(full_run.outdir / "generate" / f"{group}.generated.h5ad")
        want = targets[targets["group"] == group].set_index("celltype")["n_cells"].sort_index()
        got = gen.obs["celltype"].value_counts().reindex(want.index).fillna(0).astype(int)
        pd.testing.assert_series_equal(got, want, check_names=False)
        filt = ad.read_h5ad(full_run.outdir / "filter" / f"{group}.filtered.h5ad")
        assert 0 < filt.n_obs <= gen.n_obs
        assert set(filt.obs_names) <= set(gen.obs_names)
        assert "X_pca" in filt.obsm and filt.obsm["X_pca"].shape[0] == filt.n_obs


def test_qc_outputs_per_group(full_run):
    model_input = ad.read_h5ad(full_run.outdir / "preprocess" / "model_input.h5ad", backed="r")
    ref_types = set(model_input.obs["celltype"].unique())
    for group in GROUPS:
        qc = full_run.outdir / "qc" / group
        corr = pd.read_csv(qc / f"{group}.correlation.csv")
        assert set(corr["celltype"]) == ref_types and len(corr) == len(ref_types)
        # Generated cells must resemble their reference type on its markers ...
        assert corr["pearson_r"].median() > 0.5
        # ... more than they resemble any other type (an undertrained VAE generates the same average
        # cell for every type: high r everywhere, no type told apart; 1/10 types at 60 epochs).
        matrix = pd.read_csv(qc / f"{group}.correlation_matrix.csv", index_col=0)
        shared = [t for t in matrix.index if t in matrix.columns]
        own = np.array([matrix.loc[t, t] for t in shared])
        other = np.array([matrix.loc[t, [u for u in matrix.columns if u != t]].max() for t in shared])
        assert (own > other).sum() >= 0.8 * len(shared), matrix.round(3).to_string()
        metrics = json.loads((qc / f"{group}.metrics.json").read_text())
        assert metrics["params"]["seed"] is not None
        # The VAE by itself tells every type apart, judged before the per-type calibration (which
        # types the output right whatever the VAE learnt: a randomly initialised VAE passes the
        # checks above but tells 0/10 apart, tests/unit/test_structure.py), and the QC's
        # within-type structure and VAE identity warnings (b2s.qc.structure) stay silent.
        gen = ad.read_h5ad(full_run.outdir / "generate" / f"{group}.generated.h5ad", backed="r")
        vae = json.loads(gen.uns["vae_identity"])
        assert vae["told_apart"] == vae["n_types"] == len(ref_types), vae
        assert metrics["within_type_types_assessed"] >= 1 and metrics["within_type_types_under_floor"] == []
        assert not [w for w in metrics["warnings"] if w.startswith(("within-type structure", "the VAE by itself"))]
        for plot in ("cellprop", "correlation", "mde", "bulk_scatter"):
            assert (qc / f"{group}.{plot}.png").stat().st_size > 1000
        # QC against the group's own bulk: generated cells and the composition-only expectation
        bulk_qc = pd.read_csv(qc / f"{group}.bulk_qc.csv").set_index("profile")
        assert list(bulk_qc.index) == ["generated", "filtered", "composition_expected"]
        assert (bulk_qc["pearson_r"] > 0.8).all(), bulk_qc.to_string()
        # the default with the test profile's 2 groups (weighted: tests/pipeline/test_resources.py)
        assert metrics["bulk_qc"]["bulk_shift"] == "contrast"
        assert len(pd.read_csv(qc / f"{group}.bulk_residuals.csv")) == 50


def test_model_weights_history_and_report(full_run):
    state = torch.load(full_run.outdir / "train_vae" / "vae.pth", map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.") for k in state) and any(k.startswith("decoder.") for k in state)
    history = pd.read_csv(full_run.outdir / "train_vae" / "loss_history.csv")
    assert len(history) >= 1 and np.isfinite(history["loss"]).all()
    assert (full_run.outdir / "train_vae" / "loss_plot.png").stat().st_size > 1000
    html = (full_run.outdir / "report" / "bulk2single_report.html").read_text()
    for group in GROUPS:
        assert group in html
    assert html.count("data:image/png;base64,") >= 2 + 3 * len(GROUPS)
    versions = (full_run.outdir / "pipeline_info" / "software_versions.yml").read_text()
    for proc in ("PREPARE_INPUTS", "ESTIMATE_FRACTIONS", "TRAIN_VAE", "GENERATE", "FILTER", "QC"):
        assert proc in versions


def test_params_json_and_report_show_the_values_used(full_run):
    """pipeline_info/params.json holds the values the stages and the workflow decided, and
    params_decided.json the given ones (b2s.report.run_params); the report's parameter table shows them."""
    used = json.loads((full_run.outdir / "pipeline_info" / "params.json").read_text())
    decided = json.loads((full_run.outdir / "pipeline_info" / "params_decided.json").read_text())
    train = json.loads((full_run.outdir / "train_vae" / "train_summary.json").read_text())
    assert "decided" not in used  # reusable with -params-file
    assert used["fraction_method"] == "wls" and decided["fraction_method"]["given"] is None
    assert used["groups_per_task"] == LOCAL_GROUPS_PER_TASK and decided["groups_per_task"]["given"] is None
    assert used["epoch_num"] == train["params"]["epoch_num"] == 300  # the test profile's, as given
    assert used["batch_size"] == train["params"]["batch_size"] and used["device"] == train["device"]
    assert used["bulk_units"] == "counts" and used["bulk_shift"] == "contrast"
    html = (full_run.outdir / "report" / "bulk2single_report.html").read_text()
    run = html[html.index("id='run'"):]
    assert re.search(r"<th>fraction_method</th>\s*<td[^>]*>wls <span class='muted'>\(auto", run)
    assert re.search(rf"<th>groups_per_task</th>\s*<td[^>]*>{LOCAL_GROUPS_PER_TASK} <span class='muted'>\(auto", run)
    assert re.search(r"<th>epoch_num</th>\s*<td[^>]*>300</td>", run)


def test_resume_reexecutes_no_finished_task(full_run):
    res = nextflow_run(full_run.launch_dir, "-profile", "test", "-resume")
    assert res.returncode == 0, res.output[-4000:]
    assert res.submitted() == [], "tasks re-ran on -resume:\n" + "\n".join(res.submitted())
    # PREPARE_INPUTS, ESTIMATE_FRACTIONS, PREPROCESS, TRAIN_VAE, REPORT + GENERATE/FILTER/QC per batch of groups
    assert len(res.cached()) == 5 + 3 * BATCHES


def test_leftover_checkpoint_of_a_longer_run_never_changes_the_result(full_run):
    """Issue 12, problem 1: a run asking for fewer epochs where the full run (300 epochs, -profile
    test) left its checkpoint (the same default <workDir>/b2s_checkpoints) trains from scratch, and
    the console says why; the pre-issue-12 main returned the longer run's model with rc 0.
    -resume only to reuse the stages before training; it runs after the -resume test above."""
    res = nextflow_run(full_run.launch_dir, "-profile", "test", "-resume", "--epoch_num", "10",
                       outdir="results_short")
    assert res.returncode == 0, res.output[-4000:]
    assert any("TRAIN_VAE" in line for line in res.submitted())
    summary = json.loads((res.outdir / "train_vae" / "train_summary.json").read_text())
    assert summary["resumed_from"] is None and summary["epochs_run"] <= 10, summary
    assert len(pd.read_csv(res.outdir / "train_vae" / "loss_history.csv")) == summary["epochs_run"]
    warned = [line for line in res.output.splitlines() if line.startswith("  [TRAIN_VAE] ")]
    assert any("beyond --epoch_num 10" in line for line in warned), res.output[-3000:]


def _same_h5ad(a, b) -> None:
    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    assert list(x.obs_names) == list(y.obs_names) and list(x.var_names) == list(y.var_names), a.name
    pd.testing.assert_frame_equal(x.obs, y.obs)
    assert (x.X != y.X).nnz == 0, a.name
    assert sorted(x.layers) == sorted(y.layers) and all((x.layers[k] != y.layers[k]).nnz == 0 for k in x.layers)
    assert sorted(x.obsm) == sorted(y.obsm) and all(np.array_equal(x.obsm[k], y.obsm[k]) for k in x.obsm)
    assert {k: str(v) for k, v in x.uns.items()} == {k: str(v) for k, v in y.uns.items()}, a.name


def test_vae_weights_and_one_group_per_task_give_the_same_outputs(full_run, tmp_path):
    """--vae_weights skips training; --groups_per_task 1 (one task per group, as on HPC) writes the
    very same per-group files as the full run's batch of groups."""
    weights = full_run.outdir / "train_vae" / "vae.pth"
    res = nextflow_run(tmp_path, "-profile", "test", "--vae_weights", str(weights), "--groups_per_task", "1")
    assert res.returncode == 0, res.output[-4000:]
    assert not any("TRAIN_VAE" in line for line in res.submitted())
    assert not (res.outdir / "train_vae").exists()
    for stage in ("GENERATE", "FILTER", "QC"):
        assert len([line for line in res.submitted() if f":{stage} " in line]) == len(GROUPS), stage
    for group in GROUPS:
        first = ad.read_h5ad(full_run.outdir / "generate" / f"{group}.generated.h5ad")
        again = ad.read_h5ad(res.outdir / "generate" / f"{group}.generated.h5ad")
        pd.testing.assert_series_equal(
            first.obs["celltype"].value_counts().sort_index(), again.obs["celltype"].value_counts().sort_index()
        )
    # Same weights, same seed, whatever the batching: the very same cells, filters and QC.
    per_group = [p.relative_to(full_run.outdir) for folder in ("generate", "filter", "qc")
                 for p in sorted((full_run.outdir / folder).rglob("*")) if p.is_file()]
    assert sorted(per_group) == sorted(p.relative_to(res.outdir) for folder in ("generate", "filter", "qc")
                                       for p in (res.outdir / folder).rglob("*") if p.is_file())
    assert {f"qc/{g}/{g}.metrics.json" for g in GROUPS} <= {str(p) for p in per_group}
    for rel in per_group:
        if rel.suffix == ".h5ad":
            _same_h5ad(full_run.outdir / rel, res.outdir / rel)
        else:
            assert (full_run.outdir / rel).read_bytes() == (res.outdir / rel).read_bytes(), rel


def test_stub_run_wires_every_stage(tmp_path):
    res = nextflow_run(tmp_path, "-profile", "test", "-stub-run")
    assert res.returncode == 0, res.output[-4000:]
    ran = {re.search(r"BULK2SINGLE:(\w+)", line).group(1) for line in res.submitted()}
    assert ran == {"PREPARE_INPUTS", "ESTIMATE_FRACTIONS", "PREPROCESS", "TRAIN_VAE", "GENERATE", "FILTER", "QC", "REPORT"}
    assert len([line for line in res.submitted() if "GENERATE" in line]) == BATCHES
    assert (res.outdir / "report" / "bulk2single_report.html").exists()
    # The paths the nf-test pipeline test asserts on are what the pipeline publishes.
    for rel in nftest_pipeline_paths():
        assert (res.outdir / rel).exists(), rel
    # Published through the staging folder, moved into place at the end (issue 12).
    assert not (res.outdir / ".nf-bulk2single.staging").exists()


def _error_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR: ")]


@pytest.mark.parametrize(
    ("args", "must_name"),
    [
        (["--celltype_key", "no_such_column"], "--celltype_key"),
        (["-params-file", "NO_SHEET", "--bulk_group", "SAMPLE1,not_a_sample"], "not_a_sample"),
        (["--bulk", str(TEST_DATA / "bulk_counts_ids.tsv.gz")], "--gene_map"),
        (["--samplesheet", "SHEET_UNKNOWN_SAMPLE"], "no_such_sample"),
    ],
    ids=["wrong_celltype_key", "bulk_group_not_in_matrix", "no_shared_genes", "samplesheet_sample_not_in_matrix"],
)
def test_bad_input_stops_with_one_clear_line(tmp_path, args, must_name):
    no_sheet = tmp_path / "no_sheet.json"  # --bulk_group replaces the test profile's samplesheet
    no_sheet.write_text('{"samplesheet": null}')
    first_sample = pd.read_csv(TEST_DATA / "samplesheet.csv")["sample"].iloc[0]
    sheet = tmp_path / "my_sheet.csv"  # a user samplesheet naming a sample the bulk lacks
    sheet.write_text((TEST_DATA / "samplesheet.csv").read_text() + "stim,no_such_sample\n")
    args = [str(no_sheet) if a == "NO_SHEET" else str(sheet) if a == "SHEET_UNKNOWN_SAMPLE"
            else a.replace("SAMPLE1", first_sample) for a in args]
    res = nextflow_run(tmp_path, "-profile", "test", *args)
    assert res.returncode != 0
    lines = _error_lines(res.output)
    assert lines, res.output[-3000:]
    assert must_name in lines[0], lines[0]
    assert "Traceback" not in res.output
    # Issue 12: the task's own ERROR line is also the last console line, with the user's paths
    # instead of the task's staged input/<name>; the generic line names the stage, not the bulk file.
    last = [line for line in res.output.splitlines() if line.strip()][-1]
    assert last.startswith("ERROR: ") and must_name in last, res.output[-3000:]
    assert "input/" not in last.split(" (BULK2SINGLE:")[0], last
    if "--samplesheet" in args:
        assert str(sheet) in last, last
    elif "--celltype_key" in args:
        assert str(TEST_DATA / "reference.h5ad") in last, last
    generic = [line for line in res.output.splitlines() if "Error executing process" in line]
    assert generic and "bulk_counts" not in generic[0], generic
    # A run stopped by an input problem publishes nothing but Nextflow's execution records.
    published = [p for p in res.outdir.rglob("*") if p.is_file() and not p.name.startswith("execution_")]
    assert published == [], published


def test_bad_parameter_stops_before_any_task(tmp_path):
    res = nextflow_run(tmp_path, "-profile", "test", "--epoch_num", "-5")
    assert res.returncode != 0
    assert res.submitted() == []
    assert any("epoch_num" in line for line in _error_lines(res.output)), res.output[-3000:]


def test_omicverse_engine_runs_the_seed_calls_end_to_end(tmp_path):
    """--engine omicverse: omicverse's own Scaden, trainer, generator and filter on the bundled data."""
    res = nextflow_run(tmp_path, "-profile", "test", "--engine", "omicverse", "--epoch_num", "20")
    assert res.returncode == 0, res.output[-4000:]
    summary = json.loads((res.outdir / "estimate_fractions" / "fractions_summary.json").read_text())
    assert summary["engine"] == "omicverse" and summary["method"] == "scaden"
    fracs = pd.read_csv(res.outdir / "estimate_fractions" / "fractions.csv", index_col=0)
    np.testing.assert_allclose(fracs.sum(axis=1), 1.0, atol=1e-6)
    targets = pd.read_csv(res.outdir / "estimate_fractions" / "cell_targets.csv")
    for group in GROUPS:
        gen = ad.read_h5ad(res.outdir / "generate" / f"{group}.generated.h5ad")
        want = targets[targets["group"] == group].set_index("celltype")["n_cells"]
        assert gen.n_obs == want.sum()
        filt = ad.read_h5ad(res.outdir / "filter" / f"{group}.filtered.h5ad")
        assert filt.n_obs <= gen.n_obs and "X_pca" in filt.obsm
    assert (res.outdir / "report" / "bulk2single_report.html").exists()

"""The parameters a run used (b2s.report.run_params): pipeline_info/params.json and the report's
parameter table show the value each stage decided, with the one given."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from b2s.errors import InputError
from b2s.report.build import build_report
from b2s.report.inputs import index_files
from b2s.report.run_params import DECIDED, read_given, resolve_params
from tests.helpers import REPO, load_script

# The params as Nextflow holds them when the user sets none of the decided ones (nextflow.config).
GIVEN = {"bulk_units": "auto", "fraction_method": None, "cells_per_group": None, "reference_group": None,
         "batch_size": None, "learning_rate": None, "epoch_num": None, "vae_genes": None,
         "checkpoint_dir": None, "device": "auto", "amp": "auto", "bulk_shift": "auto",
         "groups_per_task": None, "seed": 42, "hidden_size": 256, "engine": "native"}
WORKFLOW = {"workflow": {"groups_per_task": 8, "executor": "local"}}
# what the stages recorded in the bundled test run (-profile test without --epoch_num)
USED = {"bulk_units": "counts", "fraction_method": "wls", "batch_size": 128, "learning_rate": 0.001,
        "epoch_num": 2286, "vae_genes": 2000, "checkpoint_dir": "/work/b2s_checkpoints", "device": "cpu",
        "amp": "on", "bulk_shift": "contrast", "groups_per_task": 8}


def _summaries(d: Path, groups=("ctrl", "stim"), skip=()) -> None:
    """The stage summaries REPORT receives, holding the values the stages decided."""
    files = {
        "prepare_summary.json": {"bulk": {"units": "counts"}, "params": {"bulk_units": "auto"}},
        "fractions_summary.json": {"method": "wls", "cell_number_rule": {"rule": "library_size"},
                                   "composition_contrast": {"versus": "other groups"},
                                   "params": {"method": None}},
        "preprocess_summary.json": {"n_cells": 420, "params": {}},
        "train_summary.json": {"device": "cpu", "epochs_run": 2286, "extra": {"precision": "bfloat16 autocast"},
                               "params": {"batch_size": 128, "learning_rate": 0.001, "epoch_num": 2286,
                                          "vae_genes": 2000, "checkpoint_dir": "/work/b2s_checkpoints",
                                          "device": "auto", "amp": "auto"}},
        **{f"{g}.metrics.json": {"group": g, "bulk_qc": {"bulk_shift": "contrast"}, "params": {}} for g in groups},
    }
    for name, data in files.items():
        if name not in skip:
            (d / name).write_text(json.dumps(data))


def test_decided_values_replace_the_given_ones(tmp_path):
    _summaries(tmp_path)
    out = resolve_params(GIVEN, index_files(tmp_path), WORKFLOW)
    for k, v in USED.items():
        assert out[k] == v, k
        assert out["decided"][k]["used"] == v and out["decided"][k]["given"] == GIVEN[k], k
    assert out["decided"]["fraction_method"] == {"given": None, "used": "wls", "by": "ESTIMATE_FRACTIONS",
                                                 "from": "fractions_summary.json: method"}
    assert out["decided"]["groups_per_task"]["by"] == "workflow, local executor"
    # rules, not values of the parameter: recorded in decided, the parameter stays unset
    assert out["cells_per_group"] is None and out["decided"]["cells_per_group"]["used"] == "library_size"
    assert out["reference_group"] is None and out["decided"]["reference_group"]["used"] == "other groups"
    # what nobody decided is as given, and not in decided
    assert out["seed"] == 42 and out["hidden_size"] == 256 and not {"seed", "hidden_size", "engine"} & set(out["decided"])


def test_values_given_and_used_alike_are_not_marked(tmp_path):
    _summaries(tmp_path)
    given = {**GIVEN, "fraction_method": "wls", "epoch_num": 2286, "device": "cpu", "groups_per_task": 8,
             "learning_rate": 1e-3, "cells_per_group": 500}
    out = resolve_params(given, index_files(tmp_path), WORKFLOW)
    assert not {"fraction_method", "epoch_num", "device", "groups_per_task", "learning_rate",
                "cells_per_group"} & set(out["decided"])
    assert out["cells_per_group"] == 500  # a rule never replaces a value given


def test_a_value_used_other_than_the_one_given_keeps_both(tmp_path):
    """e.g. --bulk_shift contrast with --engine omicverse: GENERATE gets none."""
    _summaries(tmp_path)
    for g in ("ctrl", "stim"):
        (tmp_path / f"{g}.metrics.json").write_text(json.dumps({"bulk_qc": {"bulk_shift": "none"}}))
    out = resolve_params({**GIVEN, "bulk_shift": "contrast"}, index_files(tmp_path), WORKFLOW)
    assert out["bulk_shift"] == "none" and out["decided"]["bulk_shift"]["given"] == "contrast"


@pytest.mark.parametrize("missing", ["train_summary.json", "fractions_summary.json", "prepare_summary.json",
                                     "metrics", "workflow"])
def test_a_missing_summary_leaves_the_given_value_with_a_note(tmp_path, missing):
    """e.g. --vae_weights (no TRAIN_VAE), a plain --params: never a crash, the given value noted."""
    skip = ("ctrl.metrics.json", "stim.metrics.json") if missing == "metrics" else (missing,)
    _summaries(tmp_path, skip=skip)
    out = resolve_params(GIVEN, index_files(tmp_path), {} if missing == "workflow" else WORKFLOW)
    source = {"metrics": "<group>.metrics.json", "workflow": "params.json"}.get(missing, missing)
    lost = [d.param for d in DECIDED if d.source == source]
    assert lost
    for p in lost:
        assert out[p] == GIVEN[p], p
        assert out["decided"][p]["used"] is None and out["decided"][p]["note"], p
    others = [k for k in USED if k not in lost]
    assert all(out[k] == USED[k] for k in others)


def test_unreadable_or_incomplete_summaries_are_noted_not_fatal(tmp_path):
    _summaries(tmp_path)
    (tmp_path / "train_summary.json").write_text("{not json")
    (tmp_path / "fractions_summary.json").write_text(json.dumps({"params": {}}))  # no method recorded
    out = resolve_params(GIVEN, index_files(tmp_path), WORKFLOW)
    assert out["device"] == "auto" and out["decided"]["device"]["note"] == "train_summary.json not found"
    assert out["fraction_method"] is None
    assert out["decided"]["fraction_method"]["note"] == "fractions_summary.json: method not recorded"
    (tmp_path / "train_summary.json").write_text(json.dumps({"device": "cpu", "params": {"batch_size": None}}))
    out = resolve_params(GIVEN, index_files(tmp_path), WORKFLOW)
    assert out["batch_size"] is None and out["decided"]["batch_size"]["note"] == "train_summary.json: params.batch_size is unset"


def test_groups_that_differ_are_listed_per_group(tmp_path):
    _summaries(tmp_path)
    (tmp_path / "stim.metrics.json").write_text(json.dumps({"bulk_qc": {"bulk_shift": "none"}}))
    out = resolve_params(GIVEN, index_files(tmp_path), WORKFLOW)
    assert out["decided"]["bulk_shift"]["used"] == {"ctrl": "contrast", "stim": "none"}
    assert out["bulk_shift"] == "auto"  # no single value of the parameter


def test_amp_and_device_are_read_as_values_of_the_parameter(tmp_path):
    _summaries(tmp_path)
    summ = json.loads((tmp_path / "train_summary.json").read_text())
    summ.update(device="cuda:0", extra={"precision": "fp32"})
    (tmp_path / "train_summary.json").write_text(json.dumps(summ))
    out = resolve_params(GIVEN, index_files(tmp_path), WORKFLOW)
    assert out["device"] == "cuda" and out["amp"] == "off"


def test_every_decided_parameter_is_a_pipeline_parameter_and_its_stage_a_process():
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    props = {k for d in schema.get("$defs", schema.get("definitions", {})).values()
             for k in d.get("properties", {})} | set(schema.get("properties", {}))
    processes = set(re.findall(r"^process (\w+)", "\n".join(
        p.read_text() for p in (REPO / "modules" / "local").glob("*/main.nf")), re.M))
    for d in DECIDED:
        assert d.param in props, d.param
        assert d.by in processes | {"workflow"}, d.by
    assert len({d.param for d in DECIDED}) == len(DECIDED)


def test_report_table_shows_the_used_values_marked_auto(tmp_path):
    _summaries(tmp_path)
    out = tmp_path / "r.html"
    build_report(str(tmp_path), str(out), resolve_params(GIVEN, index_files(tmp_path), WORKFLOW), None)
    text = out.read_text()
    run = text[text.index("id='run'"):text.index("Software versions")]
    assert re.search(r"<th>fraction_method</th>\s*<td[^>]*>wls <span class='muted'>\(auto: ESTIMATE_FRACTIONS\)", run)
    assert re.search(r"<th>epoch_num</th>\s*<td[^>]*>2,286 <span class='muted'>\(auto: TRAIN_VAE\)", run)
    assert re.search(r"<th>groups_per_task</th>\s*<td[^>]*>8 <span class='muted'>\(auto: workflow, local executor\)",
                     run)
    assert re.search(r"<th>seed</th>\s*<td[^>]*>42</td>", run)
    assert "<th>decided</th>" not in run


def test_report_table_marks_a_value_not_recorded(tmp_path):
    _summaries(tmp_path, skip=("train_summary.json",))
    out = tmp_path / "r.html"
    build_report(str(tmp_path), str(out), resolve_params(GIVEN, index_files(tmp_path), WORKFLOW), None)
    run = out.read_text()
    assert re.search(r"<th>epoch_num</th>\s*<td[^>]*>NA <span class='muted'>\(not recorded: "
                     r"train_summary.json not found\)", run)


def test_make_report_writes_the_used_params(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _summaries(inputs)
    given = tmp_path / "params.json"
    given.write_text(json.dumps({"params": GIVEN, **WORKFLOW}))
    versions = tmp_path / "versions.yml"
    versions.write_text("REPORT:\n  pandas: 2.2.0\n")
    script = load_script("bin/make_report.py")
    script.main(["--inputs", str(inputs), "--params", str(given), "--versions", str(versions),
                 "--params_out", str(tmp_path / "o" / "pipeline_info" / "params.json"), "--outdir", str(tmp_path / "o")])
    written = json.loads((tmp_path / "o" / "pipeline_info" / "params.json").read_text())
    decided = json.loads((tmp_path / "o" / "pipeline_info" / "params_decided.json").read_text())
    assert written["fraction_method"] == "wls" and written["groups_per_task"] == 8 and "decided" not in written
    assert decided["epoch_num"]["given"] is None and decided["epoch_num"]["used"] == 2286
    assert "wls <span class='muted'>(auto" in (tmp_path / "o" / "bulk2single_report.html").read_text()
    # another --params_out, and a plain object of params (the nf-test's): read as given
    given.write_text(json.dumps({"seed": 42, "epoch_num": 2}))
    script.main(["--inputs", str(inputs), "--params", str(given), "--versions", str(versions),
                 "--params_out", str(tmp_path / "p" / "used.json"), "--outdir", str(tmp_path / "p")])
    assert json.loads((tmp_path / "p" / "used.json").read_text()) == {"seed": 42, "epoch_num": 2286}
    assert json.loads((tmp_path / "p" / "params_decided.json").read_text()) == {"epoch_num": {
        "given": 2, "used": 2286, "by": "TRAIN_VAE", "from": "train_summary.json: params.epoch_num"}}


def test_read_given_shapes_and_errors(tmp_path):
    p = tmp_path / "params.json"
    assert read_given(None) == ({}, {})
    p.write_text(json.dumps({"params": {"seed": 1}, **WORKFLOW}))
    assert read_given(str(p)) == ({"seed": 1}, WORKFLOW)
    p.write_text(json.dumps({"seed": 1}))
    assert read_given(str(p)) == ({"seed": 1}, {})
    for text, match in (("[1]", "must hold a JSON object"), ("{x", "is not valid JSON")):
        p.write_text(text)
        with pytest.raises(InputError, match=match):
            read_given(str(p))
    with pytest.raises(InputError, match="does not exist"):
        read_given(str(tmp_path / "missing.json"))

"""nextflow_schema.json, the samplesheet schema, parameter validation (b2s.head.params,
bin/validate_params.py) and --help (validate_params.py --print-help, which `nextflow run . --help` prints)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

import b2s.head.inputs as binputs
import b2s.head.params as bp
import b2s.head.schema as bschema

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "assets" / "test_data"
SCHEMA_PATH = REPO / "nextflow_schema.json"
SHEET_SCHEMA_PATH = REPO / "assets" / "schema_samplesheet.json"
SEE = "(see nextflow run . --help)"


@pytest.fixture(scope="module")
def schema() -> dict:
    return bschema.load_schema(SCHEMA_PATH)


@pytest.fixture(scope="module")
def sheet_schema() -> dict:
    return bschema.load_schema(SHEET_SCHEMA_PATH)


def parse_flat_params(text: str) -> dict:
    """``params.x = value`` lines of ``nextflow config -flat`` as Python values."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^params\.(\w+) = (.*)$", line)
        if not m:
            continue
        name, raw = m.groups()
        if raw == "null":
            val = None
        elif raw in ("true", "false"):
            val = raw == "true"
        elif raw.startswith("'") and raw.endswith("'"):
            val = raw[1:-1].replace("\\'", "'")
        elif re.fullmatch(r"-?\d+", raw):
            val = int(raw)
        else:
            val = float(raw)
        out[name] = val
    return out


@lru_cache(maxsize=None)
def config_params() -> dict:
    """The pipeline's params as Nextflow resolves them (no profile)."""
    proc = subprocess.run(["nextflow", "config", "-flat", str(REPO)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    params = parse_flat_params(proc.stdout)
    assert len(params) > 20, proc.stdout[:2000]
    return params


def good_params(**overrides) -> dict:
    """Config defaults plus the bundled test inputs: a valid run."""
    p = dict(config_params())
    p.update(bulk=str(TEST_DATA / "bulk_counts.tsv.gz"), reference=str(TEST_DATA / "reference.h5ad"))
    p.update(overrides)
    return p


# --------------------------------------------------------------------------------------------
# the schemas themselves
# --------------------------------------------------------------------------------------------
def test_schema_is_valid_draft_2020_12_with_nf_core_groups(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    groups = ["input_output_options", "seed_options", "fraction_options", "vae_options", "filter_options",
              "generic_options"]
    assert list(schema["$defs"]) == groups
    assert schema["allOf"] == [{"$ref": f"#/$defs/{g}"} for g in groups]
    assert schema["$defs"]["input_output_options"]["required"] == ["bulk", "reference"]
    for name, prop in bschema.schema_properties(schema).items():
        assert prop.get("type") in ("string", "integer", "number", "boolean"), name
        assert prop.get("description", "").strip(), name
        assert prop.get("fa_icon", "").startswith("fa"), name
        if prop.get("format") == "file-path":
            assert prop.get("exists") is True and prop.get("pattern") and prop.get("mimetype"), name


def test_samplesheet_schema_is_valid_and_referenced(schema, sheet_schema):
    Draft202012Validator.check_schema(sheet_schema)
    assert sheet_schema["items"]["required"] == ["group", "sample"]
    assert bschema.schema_properties(schema)["samplesheet"]["schema"] == "assets/schema_samplesheet.json"


def test_schema_covers_exactly_the_config_params_with_the_same_defaults(schema):
    cfg = config_params()
    props = bschema.schema_properties(schema)
    assert set(props) == set(cfg), (sorted(set(cfg) - set(props)), sorted(set(props) - set(cfg)))
    for name, value in cfg.items():
        if value is None:
            assert "default" not in props[name], name  # unset params carry no default (nf-core style)
        else:
            assert props[name]["default"] == value and type(props[name]["default"]) is type(value), name
            # A default must itself be valid.
            assert bp.validate_params({name: value}, {"$defs": {"g": {"properties": {name: props[name]}}},
                                                      "allOf": [{"$ref": "#/$defs/g"}]}).ok, name


def test_enums_and_bounds(schema):
    props = bschema.schema_properties(schema)
    assert props["engine"]["enum"] == ["native", "omicverse"]
    assert props["fraction_method"]["enum"] == ["wls", "nnls", "tape", "scaden"]
    assert props["device"]["enum"] == ["auto", "cpu", "cuda"]
    for name in ("epoch_num", "batch_size", "max_single_cells", "hidden_size", "patience",
                 "checkpoint_every", "log_every", "top_marker_num", "ratio_num"):
        assert props[name]["type"] == "integer" and props[name]["minimum"] == 1, name
    assert props["leiden_size"]["minimum"] == 1 and props["seed"]["minimum"] == 0
    assert props["learning_rate"]["exclusiveMinimum"] == 0 and "minimum" not in props["learning_rate"]
    assert props["scale_size"]["exclusiveMinimum"] == 0


# --------------------------------------------------------------------------------------------
# parameter validation
# --------------------------------------------------------------------------------------------
def test_good_params_pass_without_warnings(schema):
    res = bp.validate_params(good_params(), schema, schema_dir=REPO)
    assert res.errors == [] and res.warnings == []
    sheet = good_params(samplesheet=str(TEST_DATA / "samplesheet.csv"))
    assert bp.validate_params(sheet, schema, schema_dir=REPO).ok


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ({"epoch_num": "ten"}, "--epoch_num ten: must be an integer"),
        ({"epoch_num": -5}, "--epoch_num -5: must be >= 1"),
        ({"fraction_method": "foo"}, "--fraction_method foo: must be one of wls, nnls, tape, scaden"),
        ({"fraction_method": "NNLS"}, "--fraction_method NNLS: must be one of wls, nnls, tape, scaden; did you mean nnls?"),
        ({"learning_rate": 0}, "--learning_rate 0: must be > 0"),
        ({"learning_rate": -1e-3}, "--learning_rate -0.001: must be > 0"),
        ({"batch_size": 0}, "--batch_size 0: must be >= 1"),
        ({"leiden_size": -1}, "--leiden_size -1: must be >= 1"),
        ({"leiden_size": 0}, "--leiden_size 0: must be >= 1"),
        ({"groups_per_task": 0}, "--groups_per_task 0: must be >= 1"),
        ({"groups_per_task": "many"}, "--groups_per_task many: must be an integer"),
        ({"device": "gpu"}, "--device gpu: must be one of auto, cpu, cuda"),
        ({"engine": "scanpy"}, "--engine scanpy: must be one of native, omicverse"),
        ({"hidden_size": 2.5}, "--hidden_size 2.5: must be an integer"),
        ({"validate_params": "yes"}, "--validate_params yes: must be true or false"),
        ({"staging_folder": ".."}, "--staging_folder ..: must be one folder name (no '/'), not '.' or '..'"),
        ({"staging_folder": "a/b"}, "--staging_folder a/b: must be one folder name (no '/'), not '.' or '..'"),
        ({"publish_dir_mode": "hardlink"}, "--publish_dir_mode hardlink: must be one of symlink, rellink, link, copy, copyNoFollow, move"),
        # The pattern is reported rather than "file not found": one line per parameter, the most telling.
        ({"reference": "ref.loom"}, "--reference ref.loom: must be an .h5ad file"),
        ({"gene_map": "/no/such/map.tsv"}, "--gene_map /no/such/map.tsv: file not found"),
        ({"bulk": True}, "--bulk true: must be a string"),
        ({"bulk_group": "a,,b"}, "--bulk_group a,,b: must be comma-separated bulk sample names"),
    ],
)
def test_bad_param_gives_one_line(schema, override, line):
    res = bp.validate_params(good_params(**override), schema, schema_dir=REPO)
    assert len(res.errors) == 1, res.errors
    assert res.errors[0].startswith(line) and res.errors[0].endswith(SEE), res.errors[0]
    assert "\n" not in res.errors[0]


def test_missing_required_inputs_and_help_skips_validation(schema):
    p = good_params(bulk=None)
    del p["reference"]
    res = bp.validate_params(p, schema)
    assert [e.split(":")[0] for e in res.errors] == ["--bulk", "--reference"]
    assert "required but not given" in res.errors[0]
    assert bp.validate_params({"help": True, "epoch_num": -5}, schema).ok


def test_one_line_per_param_and_schema_order(schema):
    res = bp.validate_params(good_params(epoch_num=-5, fraction_method="foo", learning_rate=0), schema)
    assert [e.split()[0] for e in res.errors] == ["--fraction_method", "--learning_rate", "--epoch_num"]


def test_transport_types_are_coerced_exactly(schema):
    # YAML params files give 1e-4 as a string; --bulk_group 1 reaches us as an integer.
    res = bp.validate_params(good_params(learning_rate="1e-4", epoch_num="10", bulk_group=1,
                                         monochrome_logs="true"), schema)
    assert res.ok, res.errors
    assert bp.coerce_params({"epoch_num": "10", "learning_rate": "1e-4", "bulk_group": 7, "x": None},
                            bschema.schema_properties(schema)) == {"epoch_num": 10, "learning_rate": 1e-4,
                                                              "bulk_group": "7"}


def test_unknown_params_warn_with_suggestion(schema):
    res = bp.validate_params(good_params(epochs=10, **{"epoch-num": 5, "epochNum": 5, "zzz_qqq": 1}), schema)
    assert res.ok
    assert res.warnings == [
        f"--epochs is not a parameter of this pipeline; did you mean --epoch_num? {SEE}",
        f"--epoch-num is not a parameter of this pipeline; did you mean --epoch_num? {SEE}",
        f"--zzz_qqq is not a parameter of this pipeline; it is ignored {SEE}",
    ]


def test_samplesheet_and_bulk_group_are_exclusive(schema):
    res = bp.validate_params(good_params(samplesheet=str(TEST_DATA / "samplesheet.csv"), bulk_group="a,b"),
                             schema, schema_dir=REPO)
    assert len(res.errors) == 1 and "pass only one" in res.errors[0]


def test_reference_group_must_name_a_samplesheet_group(schema, tmp_path):
    sheet = str(TEST_DATA / "samplesheet.csv")
    res = bp.validate_params(good_params(samplesheet=sheet, reference_group="ctlr"), schema, schema_dir=REPO)
    assert res.errors == [f"--reference_group 'ctlr': not a group of --samplesheet {sheet} (groups: ctrl, stim); "
                          f"pass one of them, or leave it unset to compare each group with the cohort {SEE}"]
    assert bp.validate_params(good_params(samplesheet=sheet, reference_group="stim"), schema, schema_dir=REPO).ok
    odd = tmp_path / "odd.csv"
    odd.write_text("group,sample\nDay 0,s1\nIFN-b/6h,s2\n")
    for name in ("Day 0", "Day_0", "IFN-b_6h"):  # as shown, or its file name
        assert bp.validate_params(good_params(samplesheet=str(odd), reference_group=name), schema, schema_dir=REPO).ok
    one = bp.validate_params(good_params(bulk_group="a,b", reference_group="a"), schema, schema_dir=REPO)
    assert len(one.errors) == 1 and "with --bulk_group there is one bulk group" in one.errors[0]


def test_nnls_is_refused_with_the_omicverse_engine(schema):
    res = bp.validate_params(good_params(engine="omicverse", fraction_method="nnls"), schema, schema_dir=REPO)
    assert len(res.errors) == 1 and "--fraction_method nnls" in res.errors[0] and "scaden" in res.errors[0]
    for ok in ({"engine": "omicverse"}, {"engine": "omicverse", "fraction_method": "tape"}, {"fraction_method": "nnls"}):
        assert bp.validate_params(good_params(**ok), schema, schema_dir=REPO).ok, ok


# --------------------------------------------------------------------------------------------
# samplesheet
# --------------------------------------------------------------------------------------------
def test_bundled_and_tsv_samplesheets_pass(sheet_schema, tmp_path):
    assert binputs.validate_samplesheet(TEST_DATA / "samplesheet.csv", sheet_schema) == []
    rows = binputs.read_samplesheet(TEST_DATA / "samplesheet.csv")
    assert rows[0] == {"group": "ctrl", "sample": "ctrl_1"} and len(rows) == 6
    tsv = tmp_path / "s.tsv"
    tsv.write_text("Group\tSample\textra\n g1 \tS 1\tx\n")
    assert binputs.read_samplesheet(tsv) == [{"group": "g1", "sample": "S 1", "extra": "x"}]
    assert binputs.validate_samplesheet(tsv, sheet_schema) == []
    odd = tmp_path / "odd.csv"
    odd.write_text("group,sample\nDay 0,s1\nIFN-b/6h,s2\n")  # any group name (issue 26)
    assert binputs.validate_samplesheet(odd, sheet_schema) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grp,sample\na,s1\n", ": missing column(s) group; the header must be 'group,sample'"),
        ("group,sample\n", ": no rows; list one 'group,sample' row per bulk sample"),
        ("group,sample\nok,s1\n,s2\n", " data row 2, group '': group name must be non-empty"),
        ("group,sample\nok,s1\nok,\n", " data row 2, sample '': sample name must be non-empty"),
        ("group,sample\na,s1\nb,s1\n", ": sample 's1' listed in data rows 1 and 2; list each sample once"),
    ],
    ids=["missing_column", "no_rows", "empty_group_name", "empty_sample", "duplicate_sample"],
)
def test_bad_samplesheet_gives_one_line(sheet_schema, schema, tmp_path, text, expected):
    path = tmp_path / "sheet.csv"
    path.write_text(text)
    errors = binputs.validate_samplesheet(path, sheet_schema)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"--samplesheet {path}{expected}"), errors[0]
    # The same problem surfaces through the params validation (schema found via schema_dir).
    res = bp.validate_params(good_params(samplesheet=str(path)), schema, schema_dir=REPO)
    assert res.errors == errors


# --------------------------------------------------------------------------------------------
# CLI and help
# --------------------------------------------------------------------------------------------
def run_cli(*args: str, python: str = sys.executable, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([python, *flags, str(REPO / "bin" / "validate_params.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_exit_codes_and_lines(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(good_params(epochs=3)))
    res = run_cli("--schema", str(SCHEMA_PATH), "--params-json", str(good))
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [f"WARN: --epochs is not a parameter of this pipeline; did you mean --epoch_num? {SEE}"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(good_params(epoch_num=-5, fraction_method="foo")))
    res = run_cli("--schema", str(SCHEMA_PATH), "--params-json", str(bad))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"ERROR: --fraction_method foo: must be one of wls, nnls, tape, scaden {SEE}",
                                       f"ERROR: --epoch_num -5: must be >= 1 {SEE}"]

    res = run_cli("--schema", str(SCHEMA_PATH), "--params-json", str(tmp_path / "missing.json"))
    assert res.returncode == 2 and res.stderr.startswith("ERROR: --params-json ") and "Traceback" not in res.stderr

    # Without jsonschema (python -S hides site-packages) the caller is told to defer: exit 3.
    res = run_cli("--schema", str(SCHEMA_PATH), "--params-json", str(bad), flags=("-S",))
    assert res.returncode == 3, res.stderr


def test_help_text_lists_every_param_with_description_and_default(schema):
    text = bschema.help_text(schema)
    props = bschema.schema_properties(schema)
    for name, prop in props.items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"--{name} "))
        assert prop["description"] in line, name
        if name in ("bulk", "reference"):
            assert line.endswith("required]")
        else:
            assert f"default: {bschema.format_value(prop.get('default')) if 'default' in prop else 'none'}" in line
    assert ("--epoch_num          [integer] Maximum training epochs; unset: about 2,400 optimizer steps (native "
            "engine), 3500 (omicverse engine, the seed's). [default: none]") in text
    for grp in schema["$defs"].values():
        assert f"{grp['title']}:" in text
    res = run_cli("--schema", str(SCHEMA_PATH), "--print-help")
    assert res.returncode == 0 and res.stdout == text


def test_nextflow_run_help_prints_the_schema_help(schema, tmp_path):
    proc = subprocess.run(["nextflow", "-q", "run", str(REPO), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NXF_ANSI_LOG": "false"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # `nextflow run . --help` prints help_text() (bin/validate_params.py --print-help): same parameter lines.
    nf_lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("--")]
    py_lines = [ln for ln in bschema.help_text(schema).splitlines() if ln.strip().startswith("--")]
    assert nf_lines == py_lines
    assert len(nf_lines) == len(bschema.schema_properties(schema))
    assert ("--learning_rate      [number] AdamW learning rate; unset: 0.001 (native engine), 0.0001 (omicverse "
            "engine, the seed's). [default: none]") in proc.stdout

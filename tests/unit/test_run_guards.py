"""Head-node checks before any task (issue 12, item 6), schema/script bound agreement, the numba
cache shared across tasks, and task warnings at the top of the report.

The bad-input catalogue runs bin/validate_params.py with --executor, the checks that
bin/run_guard.py start runs for the pipeline (validate_params.validate): a new bad input is one row
of PREFLIGHT. The real `nextflow run` behaviour (nothing published, outdir lock, console lines) is in
tests/pipeline/test_run_guards.py; the lock, staging and task messages alone in test_head_node.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import b2s.cache as cache
import b2s.head.params as bp
import b2s.head.preflight as preflight
import b2s.head.schema as bschema
from b2s.errors import InputError
from b2s.report.inputs import warning_lines

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "assets" / "test_data"
SCHEMA_PATH = REPO / "nextflow_schema.json"
SEE = "(see nextflow run . --help)"


def _base(tmp: Path) -> dict:
    return {"bulk": str(TEST_DATA / "bulk_counts.tsv.gz"), "reference": str(TEST_DATA / "reference.h5ad"),
            "celltype_key": "celltype", "outdir": str(tmp / "results"), "device": "auto"}


def _files(tmp: Path) -> dict[str, str]:
    """Bad files a row can refer to as {name}."""
    spaced = tmp / "my data" / "bulk counts.tsv.gz"
    spaced.parent.mkdir(exist_ok=True)
    spaced.write_bytes((TEST_DATA / "bulk_counts.tsv.gz").read_bytes())
    empty = tmp / "empty.h5ad"
    empty.write_bytes(b"")
    a_file = tmp / "a_file"
    a_file.write_text("x")
    return {"spaced": str(spaced), "empty": str(empty), "a_file": str(a_file), "tmp": str(tmp)}


# (params overrides, executor, env, expected ERROR line start or None, expected WARN substring or None)
# One row per bad input; "{name}" refers to _files().
PREFLIGHT = [
    pytest.param({"bulk": "{spaced}"}, "local", {}, "--bulk {spaced}: the path contains a space", None,
                 id="bulk-path-with-spaces"),
    pytest.param({"reference": "{empty}"}, "local", {}, "--reference {empty}: is empty (0 bytes)", None,
                 id="empty-reference"),
    pytest.param({"outdir": "{a_file}"}, "local", {}, "--outdir {a_file}: exists and is a file", None,
                 id="outdir-is-a-file"),
    pytest.param({"outdir": "{a_file}/results"}, "local", {}, "--outdir {a_file}/results: cannot be created", None,
                 id="outdir-below-a-file"),
    pytest.param({"outdir": "/sys/b2s_results"}, "local", {}, "--outdir /sys/b2s_results: is not writable", None,
                 id="outdir-not-writable"),
    pytest.param({"checkpoint_dir": "s3://bucket/ckpt"}, "local", {},
                 "--checkpoint_dir s3://bucket/ckpt: object-store paths are not supported", None,
                 id="checkpoint-dir-object-store"),
    pytest.param({"checkpoint_dir": "{a_file}"}, "local", {}, "--checkpoint_dir {a_file}: exists and is a file", None,
                 id="checkpoint-dir-is-a-file"),
    pytest.param({"checkpoint_dir": "/sys/b2s_ckpt"}, "local", {}, "--checkpoint_dir /sys/b2s_ckpt: is not writable",
                 None, id="checkpoint-dir-not-writable"),
    pytest.param({"device": "cuda"}, "local", {"CUDA_VISIBLE_DEVICES": "-1"}, "--device cuda: no GPU is visible",
                 None, id="cuda-without-gpu-local"),
    pytest.param({"device": "cuda"}, "slurm", {"CUDA_VISIBLE_DEVICES": "-1"}, None,
                 "--device cuda: no GPU on this head node", id="cuda-without-gpu-on-head-node-of-slurm"),
    pytest.param({"leiden_size": 0}, "local", {}, "--leiden_size 0: must be >= 1", None, id="leiden-size-0"),
    pytest.param({"outdir": "s3://bucket/results", "checkpoint_dir": "{tmp}/ckpt"}, "local", {}, None, None,
                 id="good-remote-outdir-and-new-checkpoint-dir"),
]


@pytest.mark.parametrize(("overrides", "executor", "env", "error", "warning"), PREFLIGHT)
def test_preflight_catalogue(tmp_path, overrides, executor, env, error, warning):
    names = _files(tmp_path)
    params = _base(tmp_path)
    params.update({k: v.format(**names) if isinstance(v, str) else v for k, v in overrides.items()})
    pfile = tmp_path / "params.json"
    pfile.write_text(json.dumps(params))
    res = subprocess.run([sys.executable, str(REPO / "bin" / "validate_params.py"), "--schema", str(SCHEMA_PATH),
                          "--params-json", str(pfile), "--executor", executor],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, **env})
    errors = [line for line in res.stderr.splitlines() if line.startswith("ERROR: ")]
    warns = [line for line in res.stderr.splitlines() if line.startswith("WARN: ")]
    assert "Traceback" not in res.stderr, res.stderr
    if error is None:
        assert res.returncode == 0 and errors == [], res.stderr
    else:
        assert res.returncode == 2 and len(errors) == 1, res.stderr
        assert errors[0].startswith("ERROR: " + error.format(**names)) and errors[0].endswith(SEE), errors[0]
    if warning is not None:
        assert any(warning in line for line in warns), res.stderr
    # Nothing is created by the checks themselves.
    assert not (tmp_path / "results").exists() and not (tmp_path / "ckpt").exists()


def test_gpu_visibility_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert preflight.gpu_visible() is False


# --------------------------------------------------------------------------------------------
# the schema and the stage scripts agree on every bound
# --------------------------------------------------------------------------------------------
def _train(name):
    from b2s.model.config import TrainConfig

    return lambda v: TrainConfig(**{name: v}).validate()


def _script(module: str, process: str, *argv: str):
    """A stage's argument check: ``resolve_options`` of the b2s stage module the script calls, on the
    script's command line (``process``' always-passed arguments with the pipeline's defaults first)."""
    def run(v):
        import importlib

        from tests.helpers import pipeline_args

        script = importlib.import_module(module)
        args = vars(script.parse_args(pipeline_args(process) + [a.format(v=v) for a in argv]))
        options = next(c for name, c in vars(script).items() if name.endswith("Options"))
        importlib.import_module(options.__module__).resolve_options(options(**args))
    return run


def _main(module: str, process: str, *argv: str):
    """A stage script's ``main`` (whose checks come first), ``process``' always-passed arguments first."""
    def run(v):
        import importlib

        from tests.helpers import pipeline_args

        importlib.import_module(module).main(pipeline_args(process) + [a.format(v=v) for a in argv])
    return run


def _filter(v):
    from b2s.cluster.filter import filter_cells

    filter_cells(None, v, 0)


# (parameter, the stage-level check); the lowest value the schema allows must pass that check
# (errors after the check, e.g. a missing file, are fine) and the value below it must fail both.
BOUNDS = [
    ("leiden_size", _filter),
    ("epoch_num", _train("epoch_num")),
    ("batch_size", _train("batch_size")),
    ("hidden_size", _train("hidden_size")),
    ("patience", _train("patience")),
    ("checkpoint_every", _train("checkpoint_every")),
    ("log_every", _train("log_every")),
    ("learning_rate", _train("learning_rate")),
    ("max_single_cells", _script("prepare_inputs", "PREPARE_INPUTS", "--bulk", "b", "--reference", "r",
                                 "--celltype_key", "c", "--max_single_cells", "{v}", "--outdir", "o")),
    ("scale_size", _script("estimate_fractions", "ESTIMATE_FRACTIONS", "--bulk", "b", "--groups", "g",
                           "--reference", "r", "--scale_size", "{v}", "--outdir", "o")),
    ("top_marker_num", _main("qc", "QC", "--generated", "/nonexistent/g.h5ad", "--filtered", "/nonexistent/f.h5ad",
                             "--reference", "/nonexistent/r.h5ad", "--targets", "/nonexistent/t.csv",
                             "--group", "g", "--bulk", "/nonexistent/b.tsv", "--groups", "/nonexistent/g.csv",
                             "--top_markers", "{v}", "--outdir", "/nonexistent/out")),
]


@pytest.mark.parametrize(("name", "check"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_schema_and_stage_bounds_agree(name, check):
    schema = bschema.load_schema(SCHEMA_PATH)
    prop = bschema.schema_properties(schema)[name]
    if "minimum" in prop:
        lowest, below = prop["minimum"], prop["minimum"] - 1
    else:
        lowest, below = prop["exclusiveMinimum"] + 1e-6, prop["exclusiveMinimum"]
    one = {"$defs": {"g": {"properties": {name: prop}}}, "allOf": [{"$ref": "#/$defs/g"}]}
    assert bp.validate_params({name: lowest}, one).ok
    assert not bp.validate_params({name: below}, one).ok
    with pytest.raises(InputError, match=f"--?{name.replace('top_marker_num', 'top_markers')}"):
        check(below)
    try:
        check(lowest)
    except InputError as err:
        assert name.replace("top_marker_num", "top_markers") not in str(err), \
            f"--{name} {lowest}: allowed by the schema, refused by the stage: {err}"
    except Exception:  # noqa: BLE001  (past the parameter check: the dummy inputs fail next)
        pass


def test_seed_maximum_is_what_every_seeded_library_accepts():
    """scanpy's PCA and sklearn seed numpy's RandomState, which takes seeds below 2**32."""
    import numpy as np

    prop = bschema.schema_properties(bschema.load_schema(SCHEMA_PATH))["seed"]
    one = {"$defs": {"g": {"properties": {"seed": prop}}}, "allOf": [{"$ref": "#/$defs/g"}]}
    top = prop["maximum"]
    np.random.RandomState(top)
    with pytest.raises(ValueError):
        np.random.RandomState(top + 1)
    assert bp.validate_params({"seed": top}, one).ok
    assert bp.validate_params({"seed": top + 1}, one).errors[0].startswith(f"--seed {top + 1}: must be <= {top}")


# --------------------------------------------------------------------------------------------
# numba cache
# --------------------------------------------------------------------------------------------
def _task_dir(root: Path) -> Path:
    task = root / "work" / "ab" / ("c" * 30)
    task.mkdir(parents=True)
    (task / ".command.sh").write_text("true\n")
    return task


def test_numba_cache_moves_to_the_work_dir_of_a_task(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    task = _task_dir(tmp_path)
    env = {"NUMBA_CACHE_DIR": str(task / ".cache" / "numba")}
    chosen = cache.share_numba_cache(env, cwd=task)
    assert chosen == str(tmp_path / "work" / ".b2s_cache" / "numba") == env["NUMBA_CACHE_DIR"]
    assert Path(chosen).is_dir()
    # B2S_CACHE_DIR (a per-user cache) comes first
    env = {"NUMBA_CACHE_DIR": str(task / ".cache" / "numba"), "B2S_CACHE_DIR": str(tmp_path / "user")}
    assert cache.share_numba_cache(env, cwd=task) == str(tmp_path / "user" / "numba")


def test_numba_cache_is_kept_outside_tasks_and_when_set_by_the_user(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    task = _task_dir(tmp_path)
    env = {"NUMBA_CACHE_DIR": "/my/own/cache"}
    assert cache.share_numba_cache(env, cwd=task) is None and env["NUMBA_CACHE_DIR"] == "/my/own/cache"
    plain = tmp_path / "not_a_task"
    plain.mkdir()
    env = {"NUMBA_CACHE_DIR": str(plain / ".cache" / "numba")}
    assert cache.share_numba_cache(env, cwd=plain) is None
    assert env["NUMBA_CACHE_DIR"] == str(plain / ".cache" / "numba")
    # an unusable shared folder: the task-local one stays
    env = {"NUMBA_CACHE_DIR": str(task / ".cache" / "numba"), "B2S_CACHE_DIR": "/sys/b2s_cache"}
    (tmp_path / "work" / ".b2s_cache").write_text("a file, not a folder")
    assert cache.share_numba_cache(env, cwd=task) is None
    assert env["NUMBA_CACHE_DIR"] == str(task / ".cache" / "numba")


# --------------------------------------------------------------------------------------------
# task warnings at the top of the report
# --------------------------------------------------------------------------------------------
def test_report_top_lists_task_warnings_once(tmp_path):
    tw = tmp_path / "task_warnings.tsv"
    tw.write_text("PREPARE_INPUTS\t\t--bulk /data/b.tsv: 3 duplicate gene rows dropped\n"
                  "QC\tctrl\t[qc] ctrl: only 2/10 cell types told apart\n"
                  "FILTER\tstim\tall clusters below --leiden_size; kept every cell\n")
    metrics = {"ctrl": {"warnings": ["only 2/10 cell types told apart"]}, "stim": {}}
    lines = warning_lines(["ctrl", "stim"], metrics, tw)
    assert lines == [("ctrl", "only 2/10 cell types told apart"),
                     ("PREPARE_INPUTS", "--bulk /data/b.tsv: 3 duplicate gene rows dropped"),
                     ("FILTER stim", "all clusters below --leiden_size; kept every cell")]
    assert warning_lines(["ctrl"], {"ctrl": {}}, None) == []

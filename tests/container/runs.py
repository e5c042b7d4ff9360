"""What the container tests share: the pipeline copy, the launcher and the native test-profile run
that every engine's run is compared with (session-scoped, so docker and podman share one native
run). conftest.py exposes the fixtures."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ..pipeline.nfrun import REPO, NfResult

# Short training keeps the runs to minutes; every run gets exactly these params.
PARAMS = ("--epoch_num", "40", "--checkpoint_every", "20", "--log_every", "20")
GROUPS = sorted(pd.read_csv(REPO / "assets" / "test_data" / "samplesheet.csv")["group"].unique())


@pytest.fixture(scope="session")
def base_dir():
    """A scratch folder a non-root uid can traverse (pytest's tmp folders are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="b2s-container-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pipeline(base_dir) -> Path:
    """The pipeline (and the local Nextflow launcher) copied where a non-root uid can read it
    (a checkout under /root is not); every run uses this copy."""
    dst = base_dir / "pipeline"
    shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".nxf_home", ".nextflow-runtime", "benchmarks", "tests", "work", "results",
        ".nextflow", ".nextflow.log*", "__pycache__", ".pytest_cache"))
    shutil.copytree((REPO / ".nextflow-runtime").resolve(), dst / ".nextflow-runtime")
    return dst


def launch(pipeline: Path, launch_dir: Path, *args: str, env: dict | None = None,
           prefix: tuple[str, ...] = ()) -> NfResult:
    """`nextflow run <pipeline copy> -ansi-log false --outdir results <args>` in ``launch_dir``."""
    cmd = [*prefix, str(pipeline / "tools" / "nextflow"), "run", str(pipeline), "-ansi-log", "false",
           "--outdir", "results", *args]
    proc = subprocess.run(cmd, cwd=launch_dir, env=env, capture_output=True, text=True, timeout=1800)
    res = NfResult(proc.returncode, proc.stdout + proc.stderr, launch_dir, launch_dir / "results")
    assert res.returncode == 0, res.output[-4000:]
    return res


@pytest.fixture(scope="session")
def native_run(base_dir, pipeline) -> NfResult:
    (base_dir / "native").mkdir()
    return launch(pipeline, base_dir / "native", "-profile", "test", *PARAMS)


def task_dirs(run: NfResult) -> list[Path]:
    dirs = sorted(p.parent for p in (run.launch_dir / "work").glob("*/*/.command.run"))
    assert len(dirs) >= 8, dirs  # every stage ran (groups multiply GENERATE/FILTER/QC)
    return dirs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)

"""Shared pytest setup: make bin/ importable and put the local Nextflow and .venv on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "bin"
TEST_DATA = REPO / "assets" / "test_data"


# Tasks run the bin/ scripts with `python3` from PATH: make it the tested environment.
_venv_bin = Path(sys.executable).parent
os.environ["PATH"] = os.pathsep.join([str(REPO / "tools"), str(_venv_bin), os.environ.get("PATH", "")])
os.environ.setdefault("NXF_HOME", str(REPO / ".nxf_home"))
os.environ.setdefault("NXF_OFFLINE", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made torch ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

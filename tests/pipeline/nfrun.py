"""Run the real pipeline with `nextflow run` from a test-owned launch directory."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# One numba cache for every test run (b2s.cache; the local executor passes the variable to tasks):
# each run has its own launch and work folder, so the per-work-folder cache alone would not carry
# scanpy's compiled kernels from one test run to the next.
NUMBA_SHARED = REPO / "tests" / ".runs" / "b2s_cache"


@dataclass
class NfResult:
    """Outcome of one `nextflow run`: exit code, combined console output and paths."""

    returncode: int
    output: str
    launch_dir: Path
    outdir: Path

    def submitted(self) -> list[str]:
        """Lines of tasks that ran (not taken from the cache) in this run."""
        return [line for line in self.output.splitlines() if "Submitted process >" in line]

    def cached(self) -> list[str]:
        """Lines of tasks reused from the cache (-resume)."""
        return [line for line in self.output.splitlines() if "Cached process >" in line]


def nextflow_command(*args: str, outdir: str = "results") -> list[str]:
    """`nextflow run <repo> -ansi-log false --outdir <outdir> <args>`."""
    return ["nextflow", "run", str(REPO), "-ansi-log", "false", "--outdir", outdir, *args]


def run_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test run: ours, the shared numba cache, then ``env``."""
    out = dict(os.environ)
    out.setdefault("B2S_CACHE_DIR", str(NUMBA_SHARED))
    out.update(env or {})
    return out


def nextflow_run(launch_dir: Path, *args: str, outdir: str = "results", timeout: int = 1200,
                 env: dict[str, str] | None = None) -> NfResult:
    """`nextflow run <repo> -ansi-log false --outdir <outdir> <args>` inside ``launch_dir``."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(nextflow_command(*args, outdir=outdir), cwd=launch_dir, capture_output=True, text=True,
                          timeout=timeout, env=run_env(env))
    output = proc.stdout + proc.stderr
    return NfResult(proc.returncode, output, launch_dir, launch_dir / outdir)


def start_nextflow(launch_dir: Path, *args: str, outdir: str = "results") -> subprocess.Popen:
    """The same run started in the background (console output in ``launch_dir/console.txt``)."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    log = open(launch_dir / "console.txt", "w")  # noqa: SIM115  (closed with the process by the caller)
    return subprocess.Popen(nextflow_command(*args, outdir=outdir), cwd=launch_dir, stdout=log,
                            stderr=subprocess.STDOUT, text=True, env=run_env())


def nftest_pipeline_paths() -> list[str]:
    """Output paths (relative to outdir) that the nf-test pipeline test, tests/main.nf.test, asserts on."""
    text = (REPO / "tests" / "main.nf.test").read_text()
    return re.findall(r'path\("\$outputDir/([^"]+)"\)', text)

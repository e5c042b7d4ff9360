"""Run the real pipeline with `nextflow run` from a test-owned launch directory."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def nextflow_run(launch_dir: Path, *args: str, outdir: str = "results", timeout: int = 1200) -> NfResult:
    """`nextflow run <repo> -ansi-log false --outdir <outdir> <args>` inside ``launch_dir``."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["nextflow", "run", str(REPO), "-ansi-log", "false", "--outdir", outdir, *args]
    proc = subprocess.run(cmd, cwd=launch_dir, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    return NfResult(proc.returncode, output, launch_dir, launch_dir / outdir)


def nftest_pipeline_paths() -> list[str]:
    """Output paths (relative to outdir) that the nf-test pipeline test, tests/main.nf.test, asserts on."""
    text = (REPO / "tests" / "main.nf.test").read_text()
    return re.findall(r'path\("\$outputDir/([^"]+)"\)', text)

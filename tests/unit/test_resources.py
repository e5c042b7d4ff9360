"""Resource requests fit the machine with the local executor (conf/base.config), checked with Nextflow itself."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _config(*args: str, user_config: Path | None = None) -> str:
    pre = ["-c", str(user_config)] if user_config else []  # -c is an option of `nextflow` itself
    proc = subprocess.run(["nextflow", *pre, "config", "-flat", *args, str(REPO)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _limits(text: str) -> str:
    """The value of process.resourceLimits in `nextflow config -flat` output (may span lines)."""
    m = re.search(r"^process\.resourceLimits = (.*?)(?=^\S)", text + "\nend", re.S | re.M)
    assert m, text[:3000]
    return m.group(1).strip()


def test_default_caps_local_executor_at_the_machine():
    limits = _limits(_config())
    # one closure, evaluated per task: the machine's CPUs and memory for the local executor ...
    assert limits.startswith("{") and "task.executor in [null, 'local']" in limits
    assert "availableProcessors()" in limits and "totalMemorySize" in limits
    # ... and the fixed limits for every other executor (HPC, cloud): unchanged
    assert "[cpus: 16, memory: 128.GB, time: 240.h]" in limits


def test_explicit_resource_limits_win(tmp_path):
    assert _limits(_config("-profile", "test")) == "[cpus:2, memory:'6 GB', time:'1h']"
    user = tmp_path / "mine.config"
    user.write_text("process.resourceLimits = [cpus: 3, memory: 5.GB, time: 2.h]\n")
    assert _limits(_config(user_config=user)) == "[cpus:3, memory:'5 GB', time:'2h']"
    # a profile after which the user's -c file is applied still ends with the user's value
    assert _limits(_config("-profile", "docker,gpu", user_config=user)) == "[cpus:3, memory:'5 GB', time:'2h']"


def test_local_task_gets_capped_request(tmp_path):
    """A process with the TRAIN_VAE label under the pipeline's own base.config, run for real."""
    (tmp_path / "main.nf").write_text(
        "process P {\n  label 'process_gpu'\n  output: stdout\n"
        '  script: "echo cpus=${task.cpus} memory=${task.memory.toBytes()}"\n}\n'
        "workflow { P() | view }\n")
    (tmp_path / "nextflow.config").write_text(f"includeConfig '{REPO / 'conf' / 'base.config'}'\n")
    proc = subprocess.run(["nextflow", "run", "main.nf", "-ansi-log", "false"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    m = re.search(r"cpus=(\d+) memory=(\d+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    cpus, mem = int(m.group(1)), int(m.group(2))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert cpus == min(4, os.cpu_count())  # process_gpu asks for 4
    assert mem == min(24 * 1024**3, total) or abs(mem - min(24 * 1024**3, total)) < 2**20

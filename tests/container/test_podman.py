"""`-profile test,podman` with Debian's podman (rootful), against the native run (issue 26).

Skipped where podman is not installed (`apt-get install podman`; Debian 12: 4.3.1). The image is
the one `make test-image` built with Docker, copied into podman's store (`docker save | podman
load`, ~5 min for the 7.3 GB image) when podman does not hold it yet. Same wheels, same CPU, same
seed as the native run: fractions, weights and generated matrices must be identical.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess

import anndata as ad
import numpy as np
import pytest

from ..pipeline.nfrun import NfResult
from .runs import GROUPS, PARAMS, dense, launch, sha256, task_dirs

IMAGE = os.environ.get("B2S_IMAGE", "")
DOCKER = os.environ.get("DOCKER", "docker")
PODMAN = os.environ.get("PODMAN", "podman")
# podman lowers its own RLIMIT_NPROC to this before starting a container (strace of podman 4.3.1)
PODMAN_NPROC = 32768

pytestmark = pytest.mark.skipif(shutil.which(PODMAN) is None, reason="podman is not installed (apt-get install podman)")


def podman(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    assert not check or proc.returncode == 0, f"{PODMAN} {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def podman_image() -> str:
    """The image in podman's store, copied from the Docker engine when podman lacks it."""
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        cmd = f"{shlex.quote(DOCKER)} save {shlex.quote(IMAGE)} | {shlex.quote(PODMAN)} load"
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return IMAGE


def rlimit_options(image: str) -> str:
    """The `podman run` options this host needs ('' where podman's defaults work).

    Rootful podman gives every container nofile and nproc limits of 1048576. Raising a limit
    above the caller's needs CAP_SYS_RESOURCE; where root lacks it (a machine that is itself a
    container or sandbox, like this project's CI machine), runc fails with "error setting rlimit
    type 7: operation not permitted" (containers/README.md, Podman). There the tasks get the
    limits podman itself runs with: the caller's nofile, nproc at most PODMAN_NPROC."""
    probe = podman("run", "--rm", image, "true", check=False)
    if probe.returncode == 0:
        return ""
    assert "error setting rlimit" in probe.stderr, probe.stderr

    def hard(kind: int, cap: int) -> int:
        h = resource.getrlimit(kind)[1]
        return cap if h == resource.RLIM_INFINITY else min(h, cap)

    nofile, nproc = hard(resource.RLIMIT_NOFILE, 1048576), hard(resource.RLIMIT_NPROC, PODMAN_NPROC)
    return f"--ulimit nofile={nofile}:{nofile} --ulimit nproc={nproc}:{nproc}"


@pytest.fixture(scope="module")
def podman_run(base_dir, pipeline, native_run, podman_image) -> NfResult:
    """`-profile test,podman` (rootful: launched by root), plus the rlimit options if the host needs them."""
    launch_dir = base_dir / "podman"
    launch_dir.mkdir()
    args = ["-profile", "test,podman", *PARAMS]
    options = rlimit_options(podman_image)
    if options:
        config = launch_dir / "podman_rlimits.config"
        config.write_text(f"podman.runOptions = '{options}'\n")
        args += ["-c", str(config)]
    return launch(pipeline, launch_dir, *args)


def test_every_task_ran_in_the_image_with_podman(podman_run):
    for d in task_dirs(podman_run):
        run = (d / ".command.run").read_text()
        assert "podman run" in run and IMAGE in run, d
        assert (d / ".exitcode").read_text().strip() == "0", d


def test_podman_fractions_and_weights_equal_the_native_run(native_run, podman_run):
    for name in ("estimate_fractions/fractions.csv", "estimate_fractions/sample_fractions.csv",
                 "estimate_fractions/cell_targets.csv", "train_vae/vae.pth"):
        assert sha256(native_run.outdir / name) == sha256(podman_run.outdir / name), name


def test_podman_generated_cells_equal_the_native_run(native_run, podman_run):
    for group in GROUPS:
        a = ad.read_h5ad(native_run.outdir / "filter" / f"{group}.filtered.h5ad")
        b = ad.read_h5ad(podman_run.outdir / "filter" / f"{group}.filtered.h5ad")
        assert a.n_obs > 0 and list(a.obs_names) == list(b.obs_names)
        np.testing.assert_array_equal(dense(a.X), dense(b.X))

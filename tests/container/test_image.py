"""The shipped image, with a real engine (run by `make test-image`, which builds it first).

The pipeline's test profile runs twice in one session with the same short training: natively
(this venv) and with `-profile test,docker` launched by a non-root uid that has no passwd entry
(the docker profile's `-u $(id -u):$(id -g)` then runs every task as that uid). Same wheels, same
CPU, same seed: fractions, weights and generated matrices must be identical. The image itself
must hold exactly requirements.txt (pip and setuptools included), pass `pip check`, and carry no
cache folder a non-root task would fail to write.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from ..pipeline.nfrun import REPO, NfResult
from ..unit.test_containers import _canon, flat_config, read_pins, unquote
from .runs import GROUPS, PARAMS, dense, launch, sha256, task_dirs

IMAGE = os.environ.get("B2S_IMAGE", "")
DOCKER = os.environ.get("DOCKER", "docker")
UID = GID = 1234  # no passwd entry, in the image or on the host
# What matplotlib, numba (and anything else) print when a cache folder is not writable.
CACHE_WARNING = re.compile(r"not a writable directory|permission denied|read-only file system|"
                           r"matplotlib.*(cache|mplconfig)|numba.*(cache|locator)|NumbaWarning|"
                           r"mkdir", re.IGNORECASE)


def docker(*args: str, user: str | None = f"{UID}:{GID}", timeout: int = 300) -> subprocess.CompletedProcess:
    """`docker run --rm [-u user] IMAGE args...` (output captured; fails the test on error)."""
    cmd = [DOCKER, "run", "--rm", *(["-u", user] if user else []), IMAGE, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def container_run(base_dir, pipeline, native_run) -> NfResult:
    """`-profile test,docker` launched as uid 1234 (no passwd entry) with the docker group."""
    launch_dir = base_dir / "container"
    nxf_home = launch_dir / ".nxf_home"
    shutil.copytree((REPO / ".nxf_home").resolve(), nxf_home)
    for p in [launch_dir, *launch_dir.rglob("*")]:
        os.chown(p, UID, GID)
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    env = {**os.environ, "HOME": str(launch_dir), "NXF_HOME": str(nxf_home)}
    return launch(pipeline, launch_dir, "-profile", "test,docker", *PARAMS, env=env,
                  prefix=("setpriv", f"--reuid={UID}", f"--regid={GID}", f"--groups={docker_gid}", "--"))


# --------------------------------------------------------------------------------------------
# the image
# --------------------------------------------------------------------------------------------
def test_the_tested_image_is_the_configured_image():
    assert IMAGE == unquote(flat_config("docker")["process.container"])


def test_pip_freeze_all_in_the_image_equals_the_pinned_list():
    freeze = docker("pip", "freeze", "--all").stdout
    got = {}
    for line in freeze.splitlines():
        name, sep, version = line.partition("==")
        assert sep, f"not a pinned release in the image: {line}"
        got[_canon(name)] = version
    pins = read_pins(REPO / "requirements.txt")
    assert {"pip", "setuptools"} <= set(pins)
    assert got == pins


def test_pip_check_in_the_image():
    assert "No broken requirements found" in docker("pip", "check").stdout


def test_no_cache_folder_or_site_ca_is_baked_into_the_image():
    # /tmp (HOME) is empty, and no matplotlib/numba cache exists anywhere in the image.
    out = docker("sh", "-c", "ls -A /tmp; find / -xdev \\( -name '*.nbi' -o -name '*.nbc' -o "
                             "-name 'fontlist-*.json' -o -name mplconfig -o -name numba_cache -o "
                             "-path '*/.cache' -o -path '*/.config' \\) -print", user=None).stdout
    assert out.strip() == ""
    # The builder stage's site-CA folder does not reach the final image.
    assert docker("sh", "-c", "ls -A /usr/local/share/ca-certificates/site 2>/dev/null || true").stdout == ""


def test_a_non_root_uid_without_passwd_entry_imports_everything_silently():
    proc = docker("python", "-c", "import os, torch, scanpy, omicverse, matplotlib.pyplot; print(os.getuid())")
    assert proc.stdout.split()[-1] == str(UID)
    assert not CACHE_WARNING.search(proc.stderr), proc.stderr


# --------------------------------------------------------------------------------------------
# the pipeline in the image vs natively
# --------------------------------------------------------------------------------------------
def test_every_task_ran_in_the_image_as_the_non_root_uid(container_run):
    for d in task_dirs(container_run):
        run = (d / ".command.run").read_text()
        assert "docker run" in run and IMAGE in run, d
        assert (d / ".exitcode").read_text().strip() == "0", d
        assert (d / "versions.yml").stat().st_uid == UID, d


def test_fractions_are_identical(native_run, container_run):
    for name in ("fractions.csv", "sample_fractions.csv", "cell_targets.csv"):
        native = native_run.outdir / "estimate_fractions" / name
        assert sha256(native) == sha256(container_run.outdir / "estimate_fractions" / name), name


def test_weights_are_identical(native_run, container_run):
    native = native_run.outdir / "train_vae" / "vae.pth"
    assert native.stat().st_size > 1000
    assert sha256(native) == sha256(container_run.outdir / "train_vae" / "vae.pth")


@pytest.mark.parametrize("stage,suffix", [("generate", "generated"), ("filter", "filtered")])
def test_generated_matrices_are_identical(native_run, container_run, stage, suffix):
    for group in GROUPS:
        a = ad.read_h5ad(native_run.outdir / stage / f"{group}.{suffix}.h5ad")
        b = ad.read_h5ad(container_run.outdir / stage / f"{group}.{suffix}.h5ad")
        assert a.n_obs > 0 and a.shape == b.shape
        assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
        pd.testing.assert_frame_equal(a.obs, b.obs)
        np.testing.assert_array_equal(dense(a.X), dense(b.X))


def test_every_versions_yml_names_the_image_packages(container_run):
    image_python = docker("python", "-c", "import platform; print(platform.python_version())").stdout.strip()
    pins = read_pins(REPO / "requirements.txt")
    seen = set()
    for d in task_dirs(container_run):
        versions = yaml.safe_load((d / "versions.yml").read_text())
        (process, tools), = versions.items()
        seen.add(process.split(":")[-1])
        assert str(tools.pop("python")) == image_python, d
        tools.pop("b2s")
        assert tools, d
        for pkg, version in tools.items():
            assert str(version) == pins[_canon(pkg)], (d, pkg)
    assert {"TRAIN_VAE", "GENERATE", "QC", "REPORT"} <= seen, seen


@pytest.mark.parametrize("which", ["native", "container"])
def test_no_task_prints_cache_warnings(native_run, container_run, which):
    run = native_run if which == "native" else container_run
    for d in task_dirs(run):
        for log in (".command.err", ".command.log"):  # stderr; stdout and stderr as the task printed them
            text = (d / log).read_text()
            assert not CACHE_WARNING.search(text), f"{d}/{log}:\n{text[-3000:]}"
        # The caches live in the task's own folder (nextflow.config), written by the task's uid.
        for cache in (d / ".cache").glob("*"):
            assert cache.stat().st_uid == (UID if which == "container" else os.getuid()), cache

"""Head-node checks of files, folders and the device, run before any task starts.

Called by ``bin/validate_params.py`` after the schema checks (``b2s.head.params``), so a run that
would fail on an unreadable input, an unwritable ``--outdir`` or ``--checkpoint_dir`` or a
missing GPU stops before anything is published. Standard library only (the head node may have
a bare ``python3``). Every problem is ONE line: the parameter and value, what is wrong, the fix.

Checks that need the data (weights fitting the reference, columns, counts) stay with the stage
scripts or ``b2s.model.weights``; remote paths (``s3://``, ``gs://``, ...) are staged by Nextflow and
not checked here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SEE_HELP = "(see nextflow run . --help)"
_REMOTE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: Input files checked for readability (the schema already checks that they exist).
INPUT_FILES = ("bulk", "reference", "gene_map", "samplesheet", "markers", "vae_weights")
#: Executors whose tasks run on the head node itself (so its GPU is the tasks' GPU).
LOCAL_EXECUTORS = ("local", "")


def is_remote(path: str) -> bool:
    """True for paths with a URI scheme (object stores, http)."""
    return bool(_REMOTE_RE.match(str(path)))


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an output folder (None when it can).

    The folder may not exist yet: then its nearest existing parent must be a writable folder.
    Writability is probed by creating (and removing) a temporary entry, which also catches
    read-only file systems and ACLs that ``os.access`` misses (e.g. for root).
    """
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        return "exists and is a file, not a folder"
    base = p if p.exists() else _nearest_existing(p)
    if not base.is_dir():
        return f"cannot be created: {base} is a file, not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".b2s_write_probe_", dir=base)
    except OSError as err:
        where = "" if base == p else f" (its nearest existing parent {base} is not writable)"
        return f"is not writable: {err.strerror or err}{where}"
    os.rmdir(probe)
    return None


def file_problem(path: str | Path) -> str | None:
    """Why an existing input file cannot be read (None when it can, or when it does not exist:
    the schema reports missing files)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    try:
        with open(p, "rb") as fh:
            head = fh.read(1)
    except OSError as err:
        return f"cannot be read ({err.strerror or err}); fix its permissions or copy it somewhere readable"
    if not head:
        return "is empty (0 bytes); the file was not written completely: regenerate or copy it again"
    return None


def gpu_visible() -> bool:
    """True when this machine shows an NVIDIA GPU to new processes.

    ``CUDA_VISIBLE_DEVICES`` set to an empty value or ``-1`` hides every GPU (as CUDA does);
    otherwise ``nvidia-smi -L`` must list one, or ``/proc/driver/nvidia/gpus`` must hold one.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and "GPU" in out.stdout:
                return True
        except (OSError, subprocess.SubprocessError):
            pass
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def check(params: Mapping[str, Any], executor: str = "local", skip: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Head-node checks of a run's params: ``(errors, warnings)``, one line each, no prefix.

    ``executor`` is the process executor of the run (``local`` unless configured): with another
    executor the tasks do not run here, so ``--device cuda`` without a GPU on this machine is a
    warning, not an error. ``skip`` names parameters whose schema check already failed.
    """
    skip = skip or set()
    errors: list[str] = []
    warnings: list[str] = []
    for name in INPUT_FILES:
        value = params.get(name)
        if name in skip or not isinstance(value, str) or not value or is_remote(value):
            continue
        problem = file_problem(value)
        if problem:
            errors.append(f"--{name} {value}: {problem} {SEE_HELP}")

    outdir = params.get("outdir")
    if "outdir" not in skip and isinstance(outdir, str) and outdir and not is_remote(outdir):
        problem = folder_problem(outdir)
        if problem:
            errors.append(f"--outdir {outdir}: {problem}; choose a folder you can write to "
                          f"(or fix its permissions) {SEE_HELP}")

    ckpt = params.get("checkpoint_dir")
    if "checkpoint_dir" not in skip and isinstance(ckpt, str) and ckpt:
        if is_remote(ckpt):
            errors.append(f"--checkpoint_dir {ckpt}: object-store paths are not supported (training "
                          "checkpoints are written with POSIX file operations); give a folder on a "
                          f"file system the tasks see (local, NFS, Lustre) or leave it unset {SEE_HELP}")
        else:
            problem = folder_problem(ckpt)
            if problem:
                errors.append(f"--checkpoint_dir {ckpt}: {problem}; give a writable folder or leave it "
                              f"unset (then <workDir>/b2s_checkpoints is used) {SEE_HELP}")

    if "device" not in skip and str(params.get("device", "")).lower() == "cuda" and not gpu_visible():
        if (executor or "local").lower() in LOCAL_EXECUTORS:
            errors.append("--device cuda: no GPU is visible on this machine and the tasks run here "
                          "(local executor); use --device auto (CUDA when present, else CPU) or "
                          f"--device cpu, or run on a machine with a GPU and -profile gpu {SEE_HELP}")
        else:
            warnings.append(f"--device cuda: no GPU on this head node; not checked here because tasks run "
                            f"on the '{executor}' executor (TRAIN_VAE/GENERATE fail there if their node has none)")
    return errors, warnings

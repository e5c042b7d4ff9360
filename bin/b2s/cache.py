"""numba's on-disk cache for pipeline tasks: one per Nextflow work directory, not one per task.

scanpy's numba kernels take several seconds to compile; with a cache per task folder
(``NUMBA_CACHE_DIR=$PWD/.cache/numba`` alone) every FILTER/QC task would compile them again
(benchmarks/README.md, "numba cache shared across tasks"). The workflow's
config still sets that task-local folder (always writable, in or out of a container); when a
stage script imports :mod:`b2s`, :func:`share_numba_cache` replaces it, before numba is
imported, with the first usable of

1. ``$B2S_CACHE_DIR/numba`` (a per-user cache for every run, e.g. ``~/.cache/nf-bulk2single``;
   with the local executor tasks inherit it from the launching shell, containers need it in
   ``env`` and mounted),
2. ``<work dir>/.b2s_cache/numba``, when the task runs in its ``<work>/xx/yyyy...`` folder (the
   work directory is mounted in docker/singularity tasks like the task folder itself, and is
   shared by every task of every run launched with it),

and otherwise keeps the task-local folder (e.g. node-local scratch). numba's cache is safe with
concurrent writers (files are written to a temporary name and renamed) and its index is keyed
by the source file and its timestamp, so a cache shared by tasks of different runs or images is
never stale. A ``NUMBA_CACHE_DIR`` of the user's own (any other value) is kept.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

#: The task-local folder the config sets (relative to the task folder).
TASK_LOCAL = Path(".cache") / "numba"
_HASH_DIR = re.compile(r"^[0-9a-f]{2}$")
_HASH_REST = re.compile(r"^[0-9a-f]{30}$")


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe_", dir=path)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def task_work_root(cwd: Path) -> Path | None:
    """The Nextflow work directory when ``cwd`` is a task folder ``<work>/xx/<30 hex>``."""
    if (_HASH_DIR.match(cwd.parent.name) and _HASH_REST.match(cwd.name)
            and (cwd / ".command.sh").exists()):
        return cwd.parent.parent
    return None


def share_numba_cache(environ: MutableMapping[str, str] | None = None, cwd: str | Path | None = None) -> str | None:
    """Point ``NUMBA_CACHE_DIR`` at a cache shared across tasks (see the module docstring).

    Returns the folder chosen, or None when nothing was changed (numba already imported, not
    the pipeline's task-local default, or no shared folder usable).
    """
    environ = os.environ if environ is None else environ
    if "numba" in sys.modules:
        return None
    here = Path(cwd if cwd is not None else os.getcwd()).absolute()
    current = environ.get("NUMBA_CACHE_DIR")
    if not current or os.path.realpath(current) != os.path.realpath(here / TASK_LOCAL):
        return None
    candidates = []
    if environ.get("B2S_CACHE_DIR"):
        candidates.append(Path(environ["B2S_CACHE_DIR"]).expanduser() / "numba")
    root = task_work_root(here)
    if root is not None:
        candidates.append(root / ".b2s_cache" / "numba")
    for folder in candidates:
        if _writable_dir(folder):
            environ["NUMBA_CACHE_DIR"] = str(folder)
            return str(folder)
    return None

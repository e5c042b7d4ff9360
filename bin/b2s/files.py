"""Atomic file writes, the one helper every b2s module writes its outputs through.

Standard library only: :mod:`b2s.model.weights` uses it and the head node imports that module
with plain ``python3``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Marker in the name of a temporary file (``.<name>.tmp<pid>``, beside the file it becomes).
TMP_MARKER = ".tmp"


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary file :func:`atomic_write` writes before renaming it onto ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of ``path`` left by a writer killed mid-write (any process id)."""
    path = Path(path)
    return sorted(path.parent.glob(glob.escape(f".{path.name}{TMP_MARKER}") + "*"))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write through ``write(tmp_path)`` then rename onto ``path`` (its folder is created).

    Readers never see a half-written file, and the rename replaces a symlink at ``path`` instead
    of writing through it, so a staged input with the same name as an output (Nextflow work dirs)
    is never modified. The temporary file is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write` of a text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))

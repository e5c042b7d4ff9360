"""Publishing all or nothing: the staging folder ``<outdir>/<params.staging_folder>``.

Its name is the hidden parameter ``staging_folder`` (nextflow.config), the one place it is set.
Every task publishes there while the run goes on (``publishDir`` in conf/modules.config, the
workflow's ``collectFile`` ``storeDir``). At the end of the run ``bin/run_guard.py finish`` moves
it into ``--outdir`` when the run succeeded (:func:`move_tree`) and deletes it when it failed
(:func:`discard`), so a failed run leaves ``--outdir`` as it was. Standard library only (run on
the head node). Local and shared file systems; object-store outdirs are handled by the
workflow with Nextflow's own file API (subworkflows/local/utils_bulk2single_pipeline).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def staging_dir(outdir: Path, params: dict) -> Path:
    """``<outdir>/<params['staging_folder']>``; ValueError (a one-line message) unless the name is one
    folder name: the folder is deleted when a run fails, so it must never be ``--outdir`` or above it
    (checked here too, as ``--validate_params false`` skips the schema's pattern)."""
    name = str(params.get("staging_folder") or "")
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"--staging_folder '{name}': must be one folder name inside --outdir (no '/'), not '.' or "
                         "'..'; leave it unset")
    return Path(outdir) / name


def _files(root: Path) -> list[Path]:
    """Every entry below ``root`` that is not a folder (symlinks included, never followed)."""
    out = []
    for folder, dirs, names in os.walk(root):
        base = Path(folder)
        out.extend(base / n for n in names)
        # a symlink to a folder is listed among dirs, and not walked into (followlinks=False)
        out.extend(base / d for d in dirs if (base / d).is_symlink())
    return sorted(out)


def move_tree(source: Path, into: Path) -> int:
    """Move every file below ``source`` to the same relative path below ``into``; remove ``source``.

    Files in ``into`` are replaced, as ``publishDir`` overwrites them. On one file system each
    move is one rename; across file systems a copy and delete. Relative symlinks
    (``publish_dir_mode rellink``) are made again relative to their new folder. Returns the
    number of files moved.
    """
    source, into = Path(source), Path(into)
    files = _files(source)
    for path in files:
        target = into / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() and not os.path.isabs(os.readlink(path)):
            dest = os.path.normpath(path.parent / os.readlink(path))
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(os.path.relpath(dest, target.parent))
            path.unlink()
            continue
        try:
            os.replace(path, target)
        except OSError:  # another file system (or a folder in the way): copy, then delete
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            shutil.move(str(path), str(target))
    shutil.rmtree(source)
    return len(files)


def discard(staging: Path) -> bool:
    """Delete the staging folder (a failed run publishes nothing); True when there was one."""
    staging = Path(staging)
    if not staging.exists() and not staging.is_symlink():
        return False
    shutil.rmtree(staging, ignore_errors=True)
    return True

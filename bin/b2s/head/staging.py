"""Publishing all or nothing: the staging folder ``<outdir>/.nf-bulk2single.staging``.

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

#: Name of the folder inside ``--outdir``; conf/modules.config and the workflow spell it out too.
STAGING_NAME = ".nf-bulk2single.staging"


def staging_dir(outdir: Path) -> Path:
    """``<outdir>/.nf-bulk2single.staging``."""
    return Path(outdir) / STAGING_NAME


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

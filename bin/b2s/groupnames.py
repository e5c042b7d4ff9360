"""Bulk group names and their file-name-safe IDs (standard library only: the head node's parameter
checks, :mod:`b2s.head.params`, use them as the stage scripts do through :mod:`b2s.io.tables`)."""

from __future__ import annotations

import re
from collections.abc import Iterable


def group_slug(name: str) -> str:
    """The file-name-safe form of a group name: runs of characters other than letters, digits,
    '.', '_' and '-' become '_', leading/trailing '.', '_', '-' are dropped (``Day 0`` -> ``Day_0``,
    ``IFN-b/6h`` -> ``IFN-b_6h``); empty -> ``group``. Safe names are their own slug."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    return clean or "group"


def group_id(name: str | None, ids: Iterable[str]) -> str | None:
    """The group ID (file name) that ``name`` refers to, whether given as the samplesheet shows it
    (``Day 0``) or as its file name (``Day_0``); unchanged when it is neither (the caller says so)."""
    ids = {str(i) for i in ids}
    if name is None or str(name) in ids:
        return name
    return group_slug(name) if group_slug(name) in ids else name

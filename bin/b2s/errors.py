"""User-facing errors: one line naming the file or parameter, the problem and the fix."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

#: Every warning of this process, in order (stages copy them into their summary JSON).
WARNINGS: list[str] = []

#: The group a task processing several groups is working on (None: a one-group task).
_GROUP: str | None = None

#: Environment variable naming the file every warning line is also appended to: set for every
#: task in nextflow.config (``task_warnings.txt``, a declared output of each stage's process).
WARNINGS_FILE_ENV = "B2S_WARNINGS_FILE"


@contextlib.contextmanager
def warning_group(group: str | None) -> Iterator[None]:
    """Tag the warnings printed inside the block with ``group`` (see :func:`warning_line`).

    A task processing several groups (``--groups_per_task``) cannot be told apart by its task
    alone, so the workflow files each tagged line under its group; ``None`` leaves lines as they are.
    """
    global _GROUP
    before, _GROUP = _GROUP, group
    try:
        yield
    finally:
        _GROUP = before


def warning_line(msg: str) -> str:
    """``WARNING: <msg>`` as one line; inside :func:`warning_group` ``WARNING: [group=<g>] <msg>``."""
    line = " ".join(str(msg).split())
    return f"WARNING: [group={_GROUP}] {line}" if _GROUP is not None else f"WARNING: {line}"


def warn(msg: str, file: TextIO | None = None) -> None:
    """One ``WARNING: <msg>`` line on stderr (or ``file``): the single format of task warnings.

    ``msg`` is one line naming the file or parameter and what was done about it; it is also
    appended to :data:`WARNINGS` (untagged) and, in a pipeline task, to the task's warnings
    file (``$B2S_WARNINGS_FILE``), which the workflow collects for the console summary and the
    report (b2s.head.task_messages).
    """
    line = " ".join(str(msg).split())
    WARNINGS.append(line)
    out = warning_line(line)
    print(out, file=file or sys.stderr, flush=True)
    path = os.environ.get(WARNINGS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(out + "\n")


class InputError(Exception):
    """Bad input from the user. Printed as one line, without a traceback.

    The message must say what (file or parameter), what is wrong, and how to fix it, e.g.
    ``"--celltype_key 'cluster' is not a column of reference.h5ad obs (found: bulk_labels, ...); set --celltype_key to one of them"``.
    """


def run_cli(main: Callable[[], object]) -> None:
    """Run a stage script's ``main``; turn :class:`InputError` into ``ERROR: <line>`` and exit 2.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        main()
    except InputError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(2)

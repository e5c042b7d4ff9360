#!/usr/bin/env python3
"""The head node's run guards: what happens before the first task and after the last one.

Called by subworkflows/local/utils_bulk2single_pipeline (PIPELINE_INITIALISATION and
PIPELINE_COMPLETION) with one JSON file of the run's facts (``--facts``: ``params``, ``workflow``
metadata and, at the end, ``end``); the guards are b2s.head.guard.

    run_guard.py start  --facts F   checks of params and inputs, then the outdir lock; a leftover
                                    staging folder is deleted (exit 2: the run is refused)
    run_guard.py finish --facts F   the staging folder published or discarded, the task warnings and
                                    a failed task's error line, the lock released
    run_guard.py hold --lock L --session-id S --pid P
                                    keep the lock fresh while the Nextflow process P lives (started
                                    by ``start``, detached)

Lines on stderr are for Nextflow's log (``INFO:``, ``WARN:``, ``ERROR:`` lines); lines on stdout
(``finish``) are the run's last console lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("start", "finish"):
        sub.add_parser(name).add_argument("--facts", required=True, help="JSON file of the run's facts")
    hold = sub.add_parser("hold")
    hold.add_argument("--lock", required=True)
    hold.add_argument("--session-id", required=True)
    hold.add_argument("--pid", required=True, type=int)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status."""
    args = parse_args(argv)
    if args.command == "hold":
        import b2s.head.outdir_lock as lk

        lk.hold(Path(args.lock), {"session_id": args.session_id, "pid": args.pid})
        return 0
    import b2s.head.guard as guard

    facts = json.loads(Path(args.facts).read_text(encoding="utf-8"))
    return guard.start(facts) if args.command == "start" else guard.finish(facts)


if __name__ == "__main__":
    sys.exit(main())

"""One live run per ``--outdir``: the lock file ``<outdir>/.nf-bulk2single.lock``.

Run on the head node by ``bin/run_guard.py`` (standard library only: the head node may have a
bare ``python3``). The lock is a JSON object naming its run (run name, session id, the pid of the
Nextflow process, host, user, start). It is created in one step, failing when it exists, and
kept fresh by :func:`hold`, a small process started with it that touches the file every minute
while the Nextflow process lives and deletes it when that process is gone.

A lock found in place is taken over when its run is gone (:func:`stale_reason`): same session
(this run's ``-resume``); same host and its process is not running, or its pid now belongs to a
program started after the lock; any host and no heartbeat for :data:`STALE_SECONDS`. Of two runs
finding one stale lock at the same moment exactly one takes it (:func:`take_lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Name of the lock file inside ``--outdir``.
LOCK_NAME = ".nf-bulk2single.lock"
#: A lock not touched for this long is stale (its holder refreshes it every :data:`HEARTBEAT_SECONDS`).
STALE_SECONDS = 600
HEARTBEAT_SECONDS = 60
#: A takeover mutex older than this belongs to a run that died while taking over.
MUTEX_STALE_SECONDS = 60
#: A pid whose process started this long after the lock was written is not the lock's holder.
PID_REUSE_SLACK_MS = 5000


def host_name() -> str:
    """This machine's name, as written in the lock."""
    try:
        return socket.gethostname()
    except OSError:
        return os.environ.get("HOSTNAME", "unknown")


def parse_lock(text: str | None) -> dict[str, Any] | None:
    """The lock's JSON object, or None when ``text`` is missing or not a JSON object."""
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def read_text(path: Path) -> str | None:
    """The file's text, or None when it cannot be read (e.g. deleted meanwhile)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (owned by anyone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def process_start_ms(pid: int) -> int | None:
    """When process ``pid`` started (ms since the epoch), or None when this system does not say.

    Linux: ``/proc/<pid>/stat`` (clock ticks since boot) and the boot time in ``/proc/stat``;
    elsewhere psutil when installed.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return int((boot + ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        import psutil

        return int(psutil.Process(pid).create_time() * 1000)
    except Exception:  # noqa: BLE001  (no psutil, no such process, no permission: unknown)
        return None


def stale_reason(other: Mapping[str, Any] | None, age_s: float, me: Mapping[str, Any]) -> str | None:
    """Why the lock held by ``other`` may be taken over, or None when its run is alive.

    ``age_s``: seconds since the lock file was last touched; ``me``: this run's lock content.
    """
    if other is None:
        return f"unreadable lock untouched for {int(age_s // 60)} min" if age_s > STALE_SECONDS else None
    if other.get("session_id") and other.get("session_id") == me.get("session_id"):
        return "same session (-resume)"
    if other.get("host") == me.get("host") and other.get("pid"):
        try:
            pid = int(other["pid"])
        except (TypeError, ValueError):
            pid = -1
        if not pid_alive(pid):
            return f"its process {other['pid']} on {other['host']} is not running"
        start = process_start_ms(pid)
        try:
            started = int(other.get("started") or 0)
        except (TypeError, ValueError):
            started = 0
        if start is not None and started and start > started + PID_REUSE_SLACK_MS:
            return f"its process id {pid} now belongs to another program"
        return None
    if age_s > STALE_SECONDS:
        return f"no heartbeat from {other.get('host')} for {int(age_s // 60)} min"
    return None


def create_lock_file(lock: Path, text: str) -> bool:
    """Create ``lock`` holding ``text`` in one step; False when it exists.

    The text goes to a temporary file that is then hard-linked to the lock's name (fails when the
    name exists), so no run ever reads a half-written lock. File systems without hard links:
    created exclusively (``O_EXCL``), then written.
    """
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass  # no hard links here: two steps below
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True


def delete_if_unchanged(lock: Path, seen: str) -> bool:
    """Delete ``lock`` only if it still holds ``seen`` (the text judged stale).

    Under a takeover mutex (``<lock>.takeover``, created exclusively) so that of two runs finding
    one stale lock at the same moment only one deletes it; the other then finds the winner's new
    lock (or none) and never deletes it. A mutex older than :data:`MUTEX_STALE_SECONDS` belongs to
    a run that died mid-takeover and is removed.
    """
    mutex = lock.with_name(lock.name + ".takeover")
    try:
        os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - mutex.stat().st_mtime > MUTEX_STALE_SECONDS:
                mutex.unlink()
        return False
    try:
        if read_text(lock) == seen:
            lock.unlink()
            return True
        return False
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            mutex.unlink()


@dataclass
class TakeResult:
    """Outcome of :func:`take_lock`: taken, or the live holder (None after too many lost races)."""

    taken: bool
    holder: dict[str, Any] | None = None
    takeovers: list[str] = field(default_factory=list)


def take_lock(lock: Path, text: str, stale_why: Callable[[dict[str, Any] | None, float], str | None],
              attempts: int = 20) -> TakeResult:
    """Take ``lock`` for ``text``.

    ``stale_why(holder, age_s)`` says why a lock in place may be taken over (None: its run is
    alive, so this run is refused and the result names the holder). A stale lock is deleted (its
    run and the reason are added to ``takeovers``) and the creation retried; after ``attempts``
    lost races the result is neither taken nor held by a named run.
    """
    out = TakeResult(False)
    for _ in range(attempts):
        if create_lock_file(lock, text):
            out.taken = True
            return out
        seen = read_text(lock)
        if seen is None:
            continue
        try:
            age = time.time() - lock.stat().st_mtime
        except OSError:
            continue
        other = parse_lock(seen)
        why = stale_why(other, age)
        if why is None:
            out.holder = other or {}
            return out
        if delete_if_unchanged(lock, seen):
            out.takeovers.append(f"taking over the lock of run '{(other or {}).get('run_name') or '?'}' ({why})")
        else:
            time.sleep(0.02 + random.random() * 0.08)
    return out


def is_mine(lock: Path, me: Mapping[str, Any]) -> bool:
    """True when ``lock`` exists and names this run (its session id and pid)."""
    now = parse_lock(read_text(lock))
    return bool(now) and now.get("session_id") == me.get("session_id") and str(now.get("pid")) == str(me.get("pid"))


def release(lock: Path, me: Mapping[str, Any]) -> bool:
    """Delete ``lock`` when it is this run's; True when deleted."""
    if is_mine(lock, me):
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
            return True
    return False


def hold(lock: Path, me: Mapping[str, Any], poll_s: float = 2.0, heartbeat_s: float = HEARTBEAT_SECONDS) -> None:
    """Keep this run's ``lock`` fresh while its Nextflow process (``me['pid']``) lives.

    Touches the lock every ``heartbeat_s``; returns when the lock is no longer this run's
    (released at the end of the run, or taken over); when the Nextflow process is gone without
    releasing it (killed), deletes it.
    """
    pid = int(me["pid"])
    last = time.monotonic()
    while True:
        if not is_mine(lock, me):
            return
        if not pid_alive(pid):
            release(lock, me)
            return
        if time.monotonic() - last >= heartbeat_s:
            with contextlib.suppress(OSError):
                os.utime(lock)
            last = time.monotonic()
        time.sleep(poll_s)

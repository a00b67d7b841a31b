"""What a dead master's family leaves behind, cleared by the next cold start.

A SIGKILLed master cannot stop its children. They see it go (worker/main.py exits
within a second), but a new master may start sooner than that, or beside a child that
was frozen when its master died, and must never serve next to one: two families would
then share the listening ports. The family's stats file names every process of the
previous run (its slot table), so the new master finds the survivors there: a live
master means another proxyd owns this runtime dir (refuse); live workers are orphans
(signal them, wait, then SIGKILL).

The stats files of dead families (any base id, any runtime dir) stay in /dev/shm, 42 MB
each, until someone removes them: a cold start removes every one whose processes are
all gone.
"""
from __future__ import annotations

import os
import re
import signal
import time

import psutil

from proxyd.ipc import ORPHAN_SIGNAL
from proxyd.stats import IncompatibleStatsFile, StatsStore

ORPHAN_WAIT_S = 1.5              # a worker exits within a second of that signal
STALE_AFTER_S = 10.0             # younger files may belong to a master still starting
# What arbiter.stats_path names (base id, runtime dir hash), and create()'s temporary.
FAMILY_FILE = re.compile(r"proxyd-\d+-[0-9a-f]{10}\.stats(?:\.(\d+)\.tmp)?")


class MasterAlive(Exception):
    """A master of the previous run still runs (it does not answer on its control socket)."""

    def __init__(self, pid: int):
        super().__init__(pid)
        self.pid = pid


def _family_processes(path: str) -> list[dict]:
    """Live processes in the slot table of the stats file at `path`."""
    try:
        store = StatsStore.attach(path)
    except (OSError, IncompatibleStatsFile):
        return []
    try:
        return store.live_slots()
    finally:
        store.close()


def _is_ours(pid: int, path: str) -> bool:
    """The process still is a proxyd child of this family: its command line names the
    family's stats file (a reused pid would not)."""
    try:
        return path in psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def stop_orphans(path: str, log) -> list[int]:
    """Clear the family's survivors before a cold start; returns the orphans' pids.
    Raises MasterAlive if a master of the family still runs."""
    me = os.getpid()
    survivors = [e for e in _family_processes(path) if e["pid"] != me]
    for e in survivors:
        if e["role"] == "master":
            raise MasterAlive(e["pid"])
    orphans = [e["pid"] for e in survivors if _is_ours(e["pid"], path)]
    if not orphans:
        return []
    log.warning("orphans_found", pids=orphans, stats_file=path)
    for pid in orphans:
        _signal(pid, ORPHAN_SIGNAL)
    deadline = time.monotonic() + ORPHAN_WAIT_S
    left = orphans
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [pid for pid in left if _running(pid)]
    for pid in left:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [pid for pid in left if _running(pid)]
    log.warning("orphans_stopped", pids=orphans, killed=[p for p in orphans if p in left] or None)
    return orphans


def reclaim_stale_stats(directory: str, keep: str, log) -> list[str]:
    """Remove the stats files in `directory` (and temporary files of a master killed
    while creating one) whose processes are all gone; `keep` is our own file."""
    removed = []
    now = time.time()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = FAMILY_FILE.fullmatch(name)
        path = os.path.join(directory, name)
        if m is None or path == keep:
            continue
        if m.group(1) is not None:   # a master killed while creating its file
            stale = not psutil.pid_exists(int(m.group(1)))
        else:
            try:
                store = StatsStore.attach(path)
            except (OSError, IncompatibleStatsFile):
                continue   # not ours to read (another user, another layout version)
            try:
                stale = now - store.created_ns / 1e9 > STALE_AFTER_S and not store.live_slots()
            finally:
                store.close()
        if stale and _unlink(path):
            removed.append(path)
    if removed:
        log.info("stale_stats_reclaimed", files=len(removed), paths=removed)
    return removed


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False

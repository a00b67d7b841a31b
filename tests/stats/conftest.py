import os
import subprocess
import sys
import uuid

import pytest

WRITER = os.path.join(os.path.dirname(__file__), "stats_writer.py")


@pytest.fixture
def stats_path():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    path = os.path.join(base, f"proxyd-test-{uuid.uuid4().hex}.stats")
    yield path
    for leftover in (path,):
        if os.path.exists(leftover):
            os.unlink(leftover)


@pytest.fixture
def spawn_writer():
    """Start writer.py processes; any still running at the end are killed by pid."""
    procs = []

    def spawn(path, slot, mode, *args):
        proc = subprocess.Popen([sys.executable, WRITER, path, str(slot), mode, *map(str, args)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()

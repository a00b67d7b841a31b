"""envoyproxy/ratelimit (the standard Redis-backed global rate-limit service) as a test
peer: built once with the Go toolchain into a cache directory, then run on free ports
with a runtime config directory.

    exe, reason = binary()       # (path, "") or (None, "the Go toolchain is not installed")
    with EnvoyRatelimit(exe, redis_port, CONFIG_YAML) as svc: ... svc.grpc_port

The module has no tagged releases; VERSION pins the one commit resolved and built here.
`.ci/run` builds it before the tests (`cd tests && python -m peers.envoy_ratelimit`), so the
suite's time does not include the build. With Go present a failed build is an error,
never a skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import free_port, kill_group

MODULE = "github.com/envoyproxy/ratelimit/src/service_cmd"
VERSION = os.environ.get("PROXYD_RATELIMIT_VERSION", "v1.4.1-0.20260122083618-3fb702589d36")
CACHE = Path(os.environ.get("PROXYD_PEERS_CACHE",
                            Path(tempfile.gettempdir()) / "proxyd-peers"))


def _go() -> str | None:
    return shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",)
                                       if os.path.exists(p)), None)


def binary(timeout: float = 1200.0) -> tuple[str | None, str]:
    """The built service_cmd, building it on first use (minutes: many modules)."""
    out = CACHE / ("ratelimit-" + VERSION)
    exe = out / "bin" / "service_cmd"
    if exe.exists():
        return str(exe), ""
    go = _go()
    if go is None:
        return None, "the Go toolchain is not installed"
    env = dict(os.environ, GOPATH=str(out), GOCACHE=str(CACHE / "gocache"),
               GOFLAGS="-modcacherw")
    r = subprocess.run([go, "install", "%s@%s" % (MODULE, VERSION)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not exe.exists():
        raise RuntimeError("go install %s@%s failed: %s" % (MODULE, VERSION, r.stderr[-2000:]))
    return str(exe), ""


class EnvoyRatelimit:
    def __init__(self, exe: str, redis_port: int, config_yaml: str):
        self.dir = Path(tempfile.mkdtemp(prefix="envoy-ratelimit-"))
        (self.dir / "ratelimit" / "config").mkdir(parents=True)
        (self.dir / "ratelimit" / "config" / "config.yaml").write_text(config_yaml)
        self.port, self.grpc_port, self.debug_port = free_port(), free_port(), free_port()
        env = dict(os.environ, USE_STATSD="false", LOG_LEVEL="warn",
                   REDIS_SOCKET_TYPE="tcp", REDIS_URL="127.0.0.1:%d" % redis_port,
                   RUNTIME_ROOT=str(self.dir), RUNTIME_SUBDIRECTORY="ratelimit",
                   RUNTIME_WATCH_ROOT="false", RUNTIME_IGNOREDOTFILES="true",
                   HOST="127.0.0.1", GRPC_HOST="127.0.0.1", DEBUG_HOST="127.0.0.1",
                   PORT=str(self.port), GRPC_PORT=str(self.grpc_port),
                   DEBUG_PORT=str(self.debug_port))
        self.log = open(self.dir / "service.log", "wb")
        self.proc = subprocess.Popen([exe], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthcheck" % self.port,
                                            timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("envoyproxy/ratelimit did not start: %s"
                                   % (self.dir / "service.log").read_text()[-2000:])
            time.sleep(0.1)

    def stop(self) -> None:
        kill_group(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":   # .ci/run: build before the suite
    import sys
    exe, why = binary()
    print("envoyproxy/ratelimit:", exe or why)
    sys.exit(0)

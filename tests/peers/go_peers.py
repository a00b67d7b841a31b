"""The Go peers tests/peers/build.sh builds (Jaeger all-in-one, an OpenTelemetry Collector):
where they are, and running them on free loopback ports. A test that needs one skips with
the reason when Go is absent; when Go is there but the binary is not, it builds it (one
build at a time, under a lock) rather than skipping."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
JAEGER_VERSION = "v1.75.0"
OTELCOL_VERSION = "v0.165.0"


def peers_dir() -> Path:
    return Path(os.environ.get("PROXYD_PEERS_DIR") or Path.home() / ".cache" / "proxyd-peers")


def _go() -> str | None:
    return shutil.which("go") or ("/usr/local/go/bin/go"
                                  if os.access("/usr/local/go/bin/go", os.X_OK) else None)


def binary(name: str) -> Path:
    """The built peer ('jaeger' or 'otelcol'); skips when Go is absent and it is not built."""
    path = peers_dir() / (f"jaeger-all-in-one-{JAEGER_VERSION}" if name == "jaeger"
                          else f"otelcol-proxyd-{OTELCOL_VERSION}")
    if path.exists():
        return path
    if _go() is None:
        pytest.skip(f"no Go toolchain: cannot build the {name} test peer "
                    "(tests/peers/build.sh)")
    peers_dir().mkdir(parents=True, exist_ok=True)
    with open(peers_dir() / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            r = subprocess.run(["sh", str(HERE / "build.sh"), name], capture_output=True,
                               text=True, timeout=3600)
            if r.returncode != 0 or not path.exists():
                raise RuntimeError(f"tests/peers/build.sh {name} failed:\n{r.stderr[-4000:]}")
    return path


def _free_ports(n: int) -> list[int]:
    import socket
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Peer:
    def __init__(self, argv, directory: Path, name: str, env=None):
        self.log_path = Path(directory) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except urllib.error.HTTPError:
                return                      # it answers
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"peer not ready at {url}:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._log.close()


class Jaeger(Peer):
    """Jaeger all-in-one, in-memory storage: Zipkin v2 JSON on `zipkin_port`
    (/api/v2/spans), OTLP/HTTP on `otlp_http_port`, the query API on `query_port`."""

    def __init__(self, directory: Path):
        (self.zipkin_port, self.query_port, self.otlp_http_port, self.otlp_grpc_port,
         self.admin_port, self.grpc_port, self.col_http, self.col_grpc,
         self.qgrpc) = _free_ports(9)
        env = dict(os.environ, SPAN_STORAGE_TYPE="memory")
        argv = [str(binary("jaeger")),
                f"--collector.zipkin.host-port=127.0.0.1:{self.zipkin_port}",
                f"--collector.otlp.http.host-port=127.0.0.1:{self.otlp_http_port}",
                f"--collector.otlp.grpc.host-port=127.0.0.1:{self.otlp_grpc_port}",
                f"--collector.http-server.host-port=127.0.0.1:{self.col_http}",
                f"--collector.grpc-server.host-port=127.0.0.1:{self.col_grpc}",
                f"--query.http-server.host-port=127.0.0.1:{self.query_port}",
                f"--query.grpc-server.host-port=127.0.0.1:{self.qgrpc}",
                f"--admin.http.host-port=127.0.0.1:{self.admin_port}",
                ]
        super().__init__(argv, directory, "jaeger", env)
        self.wait_http(f"http://127.0.0.1:{self.query_port}/api/services")
        self.wait_http(f"http://127.0.0.1:{self.zipkin_port}/")

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.query_port}{path}",
                                    timeout=5) as r:
            return json.loads(r.read())

    def trace(self, trace_id: str):
        """The trace's spans from /api/traces/<id>, or None while Jaeger has none."""
        try:
            data = self.get(f"/api/traces/{trace_id}")["data"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        return data[0] if data else None


class Collector(Peer):
    """The OpenTelemetry Collector: OTLP/HTTP in on `http_port` (and gRPC on
    `grpc_port`), everything it accepts exported over OTLP/HTTP to `forward_to`."""

    def __init__(self, directory: Path, forward_to: str):
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        cfg = {
            "receivers": {"otlp": {"protocols": {
                "http": {"endpoint": f"127.0.0.1:{self.http_port}"},
                "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"}}}},
            "exporters": {"otlphttp": {"endpoint": forward_to, "compression": "none",
                                       "retry_on_failure": {"enabled": False},
                                       "sending_queue": {"enabled": False}},
                          "debug": {"verbosity": "basic"}},
            "service": {"pipelines": {"traces": {"receivers": ["otlp"],
                                                 "exporters": ["otlphttp", "debug"]}},
                        "telemetry": {"metrics": {"level": "none"}}},
        }
        path = Path(directory) / "otelcol.json"
        path.write_text(json.dumps(cfg))
        super().__init__([str(binary("otelcol")), "--config", f"file:{path}"], directory,
                         "otelcol")
        self.wait_http(f"http://127.0.0.1:{self.http_port}/v1/traces")

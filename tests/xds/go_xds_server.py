"""The go-control-plane management server of tests/peers/xds-server as a subprocess, and a
client for its HTTP control API (set a snapshot per node, read what each node sent)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from google.protobuf import any_pb2

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "peers" / "build_xds_server.sh"


def peers_dir() -> Path:
    return Path(os.environ.get("PROXYD_PEERS_DIR") or Path.home() / ".cache" / "proxyd-peers")


def go_binary() -> str | None:
    return shutil.which("go") or (os.path.exists("/usr/local/go/bin/go") and "/usr/local/go/bin/go") or None


def binary() -> tuple[str | None, str | None]:
    """(path of the built server, None) or (None, why it cannot be had). Builds it (pinned
    go.mod/go.sum, cached in $PROXYD_PEERS_DIR) when Go is here and the cache lacks it."""
    if go_binary() is None:
        return None, "no Go toolchain: tests/peers/xds-server (go-control-plane) cannot be built"
    out = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError("tests/peers/build_xds_server.sh failed:\n" + out.stderr)
    return out.stdout.strip().splitlines()[-1], None


class GoXdsServer:
    def __init__(self, exe: str, grpc_port: int = 0):
        self.exe = exe
        self.grpc_port = grpc_port
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GoXdsServer":
        self.proc = subprocess.Popen([self.exe, "-grpc", "127.0.0.1:%d" % self.grpc_port],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError("xds-server did not start: %r" % line)
        kv = dict(p.split("=") for p in line.split()[1:])
        self.grpc_port, self.http_port = int(kv["grpc"]), int(kv["http"])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None

    def _call(self, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.http_port, path), data=data,
                                     method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def set_snapshot(self, node: str, types: dict) -> None:
        """types: {type_url: (version, [protobuf message, ...])}."""
        out = {}
        for type_url, (version, msgs) in types.items():
            enc = []
            for m in msgs:
                a = any_pb2.Any()
                a.Pack(m)
                enc.append(base64.b64encode(a.SerializeToString()).decode())
            out[type_url] = {"version": version, "resources": enc}
        self._call("/snapshot", {"nodes": [node], "types": out})

    def requests(self, since: int = 0) -> list[dict]:
        return self._call("/requests?since=%d" % since)["requests"]

    def streams(self) -> list[dict]:
        return self._call("/streams")["open"]


def wait(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))

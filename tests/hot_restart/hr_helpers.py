"""Helpers for the hot-restart tests: configs, `proxyd reload`, process inspection,
stats-region reads, load generators (wrk, or Python keep-alive clients) and a fake
systemd notify socket. Everything works on real processes and sockets."""
from __future__ import annotations

import array
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from harness import Conn, bootstrap, cluster, free_port, listener, route, run_cli, write_config

RELOADED_RE = re.compile(r"new master pid (\d+), epoch (\d+)")


def pattern_body(n: int) -> bytes:
    """The body tests/upstream_server.py sends for `size=n`."""
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


# --- configs ------------------------------------------------------------------------------
def version_route(body: str) -> dict:
    return {"match": {"path": "/version"},
            "direct_response": {"status": 200, "body": {"inline_string": body}}}


def config(port: int, upstream_port: int, body: str = "v1", extra_listeners=(),
           extra_clusters=(), admin_port: int | None = None) -> dict:
    """One listener on `port`: /version answers `body` directly, the rest goes upstream."""
    routes = [version_route(body), route("/")]
    return bootstrap([listener(port, routes=routes)] + list(extra_listeners),
                     [cluster("upstream", [("127.0.0.1", upstream_port)])] + list(extra_clusters),
                     admin_port)


def rewrite(px, cfg) -> None:
    """Replace the config file the running proxyd was started with."""
    write_config(os.path.dirname(px.config_path), cfg, os.path.basename(px.config_path))


# --- reload / stop / processes ---------------------------------------------------------
class Reload:
    def __init__(self, cp: subprocess.CompletedProcess, seconds: float):
        self.rc = cp.returncode
        self.stdout = cp.stdout
        self.stderr = cp.stderr
        self.seconds = seconds
        m = RELOADED_RE.search(cp.stdout)
        self.pid = int(m.group(1)) if m else None
        self.epoch = int(m.group(2)) if m else None

    def __repr__(self):
        return "<Reload rc=%s out=%r err=%r>" % (self.rc, self.stdout, self.stderr)


def reload(px, timeout: float = 60.0) -> Reload:
    """`proxyd reload --runtime-dir` as an operator runs it."""
    t0 = time.monotonic()
    cp = run_cli("reload", "--runtime-dir", px.runtime_dir, timeout=timeout)
    return Reload(cp, time.monotonic() - t0)


def stop(px, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return run_cli("stop", "--runtime-dir", px.runtime_dir, "--timeout", timeout,
                   timeout=timeout + 10)


def pid_file_pid(px) -> int | None:
    try:
        return int(Path(px.runtime_dir, "proxyd.pid").read_text())
    except (OSError, ValueError):
        return None


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (zombies count as gone)."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def cmdline(pid: int) -> list[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st is not None and st[0] not in ("Z", "X") and int(st[1]) == pid:
                out.append(int(d))
    return out


def family_pids(px) -> list[int]:
    """Live proxyd masters and workers of this test's proxyd: masters name the runtime
    dir on their command line, workers the stats file."""
    marks = (px.runtime_dir, stats_file(px))
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            cl = cmdline(int(d))
            if any(m in cl for m in marks) and alive(int(d)):
                out.append(int(d))
    return out


def status(px) -> dict:
    from proxyd.master.control import request
    return request(px.runtime_dir, {"cmd": "status"}, timeout=5)


def wait_successor(master_pid: int, epoch: int, timeout: float = 20.0) -> int:
    """Poll /proc for `proxyd run ... --restart-epoch <epoch>` started by `master_pid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(master_pid):
            cl = cmdline(pid)
            if "--restart-epoch" in cl and cl[cl.index("--restart-epoch") + 1] == str(epoch):
                return pid
        time.sleep(0.002)
    raise TimeoutError("no successor of %d appeared" % master_pid)


# --- stats region ---------------------------------------------------------------------------
def stats_file(px) -> str:
    from proxyd.master.arbiter import stats_path

    class Opts:
        base_id = 0
        runtime_dir = px.runtime_dir
    return stats_path(Opts)


def counters(px, path: str | None = None) -> dict[str, int]:
    """Every counter's total, read straight from the shared stats file (at `path` if the
    test moved it away from the family's path)."""
    from proxyd.stats import StatsStore
    store = StatsStore.attach(path or stats_file(px))
    try:
        return {name: value for name, kind, value in store.items(include_internal=False)
                if kind == "counter"}
    finally:
        store.close()


def gauges(px) -> dict[str, int]:
    from proxyd.stats import StatsStore
    store = StatsStore.attach(stats_file(px))
    try:
        return {name: value for name, kind, value in store.items(include_internal=False)
                if kind == "gauge"}
    finally:
        store.close()


def decreased(before: dict, after: dict) -> dict:
    """{name: (before, after)} for counters that went down or vanished."""
    return {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1) < v}


def admin_counters(px) -> dict[str, int]:
    """Every counter as the admin endpoint's /stats?format=json shows it (which names are
    counters is read from the stats file's catalog)."""
    names = set(counters(px))
    with urllib.request.urlopen(px.admin_url + "/stats?format=json", timeout=10) as r:
        stats = json.loads(r.read())["stats"]
    return {e["name"]: e["value"] for e in stats if "value" in e and e["name"] in names}


class CounterWatch(threading.Thread):
    """Calls `read()` (-> {counter: value}) every `interval` seconds; records any counter
    that goes backwards between two consecutive samples, and any read that fails."""

    def __init__(self, read, interval: float = 0.05):
        super().__init__(daemon=True)
        self.read = read
        self.interval = interval
        self.samples = 0
        self.violations: list[dict] = []
        self.errors: list[str] = []
        self._done = threading.Event()

    def run(self):
        prev = self.read()
        while not self._done.wait(self.interval):
            try:
                cur = self.read()
            except (OSError, ValueError) as e:
                self.errors.append(repr(e))
                continue
            bad = decreased(prev, cur)
            if bad:
                self.violations.append(bad)
            self.samples += 1
            prev = cur

    def finish(self):
        self._done.set()
        self.join(10)


# --- load -----------------------------------------------------------------------------------
def percentile(values, p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


class PythonLoad:
    """`connections` threads, each looping GETs (pausing `think_s` between them) on a
    persistent connection and opening a new one when the server answers
    `Connection: close`. Any exception or non-200 is a
    failure; stop() lets every thread finish the request it has in flight."""

    def __init__(self, port: int, connections: int = 32, path: str = "/load",
                 think_s: float = 0.0):
        self.port = port
        self.path = path
        self.think_s = think_s
        self.completed = 0
        self.failures: list[str] = []
        self.connects = 0
        self.closes = 0
        self.samples: list[tuple[float, float]] = []     # (start, seconds)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(connections)]

    def start(self) -> "PythonLoad":
        for t in self.threads:
            t.start()
        return self

    def _run(self):
        conn = None
        done, samples = 0, []
        try:
            while not self._stop.is_set():
                if conn is None:
                    try:
                        conn = Conn(self.port, timeout=15)
                    except OSError as e:
                        self._fail("connect: %r" % e)
                        continue
                    with self._lock:
                        self.connects += 1
                t0 = time.monotonic()
                try:
                    r = conn.request("GET", self.path)
                except (OSError, ValueError, AssertionError) as e:
                    self._fail("request: %r" % e)
                    conn.close()
                    conn = None
                    continue
                samples.append((t0, time.monotonic() - t0))
                if r.status != 200:
                    self._fail("status %d: %r" % (r.status, r.body[:200]))
                else:
                    done += 1
                if (r.header("connection") or "").lower() == "close":
                    with self._lock:
                        self.closes += 1
                    conn.close()
                    conn = None
                if self.think_s:
                    time.sleep(self.think_s)
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self.completed += done
                self.samples.extend(samples)

    def _fail(self, what: str):
        with self._lock:
            self.failures.append(what)
        time.sleep(0.01)

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(30)

    def p99_ms(self) -> float:
        return percentile([d for _, d in self.samples], 99) * 1000.0


WRK_SCRIPT = """
delay = function()
  return DELAY_MS
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


class Wrk:
    """wrk on the proxy, each connection pausing `think_s` between requests (its
    Lua delay()); stop() interrupts it (SIGINT) and parses its summary."""

    def __init__(self, port: int, connections: int = 32, path: str = "/load",
                 think_s: float = 0.0, duration_s: int = 300):
        self.dir = tempfile.mkdtemp(prefix="wrk-")
        script = os.path.join(self.dir, "done.lua")
        Path(script).write_text(WRK_SCRIPT.replace("DELAY_MS", str(round(think_s * 1000))))
        self.proc = subprocess.Popen(
            ["wrk", "-t", "1", "-c", str(connections), "-d", "%ds" % duration_s, "--timeout", "20s",
             "-s", script, "http://127.0.0.1:%d%s" % (port, path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.result: dict | None = None
        self.output = ""

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.output, _ = self.proc.communicate(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        m = re.search(r"WRKJSON (\{.*\})", self.output)
        assert m, "no wrk summary in:\n" + self.output
        self.result = json.loads(m.group(1))
        r = self.result
        r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        r["p99_ms"] = r["p99_us"] / 1000.0
        return r


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


# --- a fake systemd notify socket ---------------------------------------------------------------
UCRED = struct.Struct("3i")


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET. Records
    (sender pid, {key: value}, number of fds, pids alive at receipt) per datagram; fds
    that come with a message (BARRIER=1) are closed at once, as systemd does."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ntf-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[dict] = []
        self.watch_pids: set[int] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        anc = socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(16 * 4)
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, anc)
            except socket.timeout:
                continue
            except OSError:
                return
            pid, fds = None, []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[:len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
                elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[:UCRED.size])[0]
            lines = data.decode(errors="replace").split("\n")
            fields = dict(line.partition("=")[::2] for line in lines if line)
            msg = {"pid": pid, "fields": fields, "nfds": len(fds), "t": time.monotonic(),
                   "now_usec": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                   "alive": {p for p in self.watch_pids if alive(p)}}
            for fd in fds:
                os.close(fd)
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()

    def env(self) -> dict:
        return {"NOTIFY_SOCKET": self.path}

    def wait_for(self, pred, timeout: float = 20.0) -> dict:
        """The first recorded message satisfying `pred`, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no such notify message; got %r" % self.summary())
                self._cond.wait(left)

    def summary(self) -> list:
        with self._cond:
            return [(m["pid"], sorted(m["fields"]), m["nfds"]) for m in self.messages]

    def close(self):
        self._stop.set()
        self.thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def take_port() -> tuple[socket.socket, int]:
    """A listening socket the test holds, so a proxyd bind on its port fails."""
    s = socket.socket()
    s.bind(("127.0.0.1", free_port()))
    s.listen(1)
    return s, s.getsockname()[1]

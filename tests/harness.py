"""Test harness: free ports, Envoy bootstrap builders, a real proxyd subprocess, a
scriptable upstream process, nginx, and a small raw HTTP/1.1 client.

Everything here starts real processes on real sockets; every process started is in its
own process group and is killed (group and all) on cleanup, also when a test fails.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream_server.py"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


# --- ports and files --------------------------------------------------------------
# Ports handed out come from below the kernel's ephemeral range (32768-60999 on Linux), so
# the source port of some outgoing connection cannot take one between free_port() and the
# bind that uses it; a test process goes through all of them before it reuses one.
_PORTS = list(range(20000, 32768))
random.shuffle(_PORTS)
_NEXT_PORT = itertools.cycle(_PORTS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now."""
    for _ in range(len(_PORTS)):
        port = next(_NEXT_PORT)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("free_port: no free port from 20000 to 32767")


def closed_port() -> int:
    """A port where a connect is refused (nothing listens, nothing will)."""
    return free_port()


def write_config(directory, config, name: str = "proxyd.yaml") -> Path:
    """Write `config` (a dict, or YAML/JSON text) into `directory`; return the path."""
    path = Path(directory) / name
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
    return path


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("nothing listening on %s:%d" % (host, port))
            time.sleep(0.02)


# --- Envoy v3 bootstrap builders ------------------------------------------------------
def billion_laughs():
    """The classic alias bomb: 10 levels of 9 aliases each, 9**9 strings from 0.8 KB."""
    lines = ['    lol0: &lol0 ["' + 'lol' * 8 + '"]']
    for i in range(1, 10):
        lines.append(f'    lol{i}: &lol{i} [' + ', '.join([f'*lol{i - 1}'] * 9) + ']')
    return 'node:\n  id: laughs\n  metadata:\n' + '\n'.join(lines) + '\nstatic_resources: {}\n'


def route(prefix: str | None = "/", cluster: str = "upstream", match: dict | None = None,
          name: str | None = None, **action) -> dict:
    """A route entry: `match` (default {prefix}) and a route action to `cluster`
    (extra keyword arguments go into the action, e.g. prefix_rewrite, timeout)."""
    r = {"match": match if match is not None else {"prefix": prefix},
         "route": dict({"cluster": cluster}, **action)}
    if name:
        r["name"] = name
    return r


def virtual_host(routes: list, domains=("*",), name: str = "vh", **extra) -> dict:
    return dict({"name": name, "domains": list(domains), "routes": routes}, **extra)


def hcm(virtual_hosts: list | None = None, routes: list | None = None,
        stat_prefix: str = "ingress_http", route_config_extra: dict | None = None,
        **extra) -> dict:
    """An HttpConnectionManager typed_config with an inline route_config."""
    if virtual_hosts is None:
        virtual_hosts = [virtual_host(routes if routes is not None else [route()])]
    rc = dict({"name": "local_route", "virtual_hosts": virtual_hosts}, **(route_config_extra or {}))
    return dict({"@type": HCM_TYPE, "stat_prefix": stat_prefix, "codec_type": "AUTO",
                 "route_config": rc,
                 "http_filters": [{"name": "envoy.filters.http.router",
                                   "typed_config": {"@type": ROUTER_TYPE}}]}, **extra)


def listener(port: int, name: str = "listener_0", address: str = "127.0.0.1", **hcm_kwargs) -> dict:
    return {"name": name,
            "address": {"socket_address": {"address": address, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm(**hcm_kwargs)}]}]}


def cluster(name: str, endpoints, type: str = "STATIC", connect_timeout: str = "1s",
            **extra) -> dict:
    """A cluster over `endpoints`: a list of (host, port) pairs."""
    return dict({"name": name, "type": type, "connect_timeout": connect_timeout,
                 "lb_policy": "ROUND_ROBIN",
                 "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                     for h, p in endpoints]}]}}, **extra)


def bootstrap(listeners: list, clusters: list = (), admin_port: int | None = None) -> dict:
    bs = {"node": {"id": "test", "cluster": "test"},
          "static_resources": {"listeners": list(listeners), "clusters": list(clusters)}}
    if admin_port is not None:
        bs = dict({"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": admin_port}}}}, **bs)
    return bs


def simple_config(port: int, upstream_port: int | None = None, routes: list | None = None,
                  clusters: list | None = None, admin_port: int | None = None, **hcm_kwargs) -> dict:
    """One listener on `port` routing everything (or `routes`) to cluster "upstream"."""
    if clusters is None:
        clusters = [cluster("upstream", [("127.0.0.1", upstream_port)])] if upstream_port else []
    return bootstrap([listener(port, routes=routes, **hcm_kwargs)], clusters, admin_port)


# --- process groups -----------------------------------------------------------------
def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Kill `proc`'s whole process group (it was started with start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def group_pids(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (read from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d))
    return out


# --- proxyd -------------------------------------------------------------------------
class ProxydError(Exception):
    pass


class Proxyd:
    """`python -m proxyd run` as a real subprocess in its own process group.

    `start()` returns once the master reports LIVE over its control socket (every worker
    applied its first snapshot). `stop()` is the graceful `proxyd stop`; `kill()` and
    `cleanup()` SIGKILL the whole group (master and workers)."""

    def __init__(self, config_path, concurrency: int = 1, drain_time_s: float = 5.0,
                 runtime_dir: str | None = None, extra_args=(), env: dict | None = None,
                 preexec_fn=None):
        self.config_path = str(config_path)
        self.concurrency = concurrency
        self.drain_time_s = drain_time_s
        self._own_rt = runtime_dir is None
        # A short path: the control socket must fit in sun_path (108 bytes).
        self.runtime_dir = runtime_dir or tempfile.mkdtemp(prefix="pxd-", dir="/tmp")
        self.extra_args = list(extra_args)
        self.env = env
        self.preexec_fn = preexec_fn  # run in the master before exec (resource limits)
        self.log_path = os.path.join(self.runtime_dir, "proxyd.log")
        self.proc: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()
        self.ports, self.admin_port = [], None
        try:  # best effort: broken configs are tested too
            cfg = yaml.safe_load(Path(config_path).read_text())
            lst = (cfg.get("static_resources") or {}).get("listeners") or []
            self.ports = [x["address"]["socket_address"]["port_value"] for x in lst]
            admin = (cfg.get("admin") or {}).get("address", {}).get("socket_address")
            self.admin_port = admin["port_value"] if admin else None
        except (AttributeError, KeyError, TypeError, yaml.YAMLError):
            pass

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def admin_url(self) -> str | None:
        return "http://127.0.0.1:%d" % self.admin_port if self.admin_port else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "proxyd", "run", "-c", self.config_path,
                "--concurrency", str(self.concurrency), "--runtime-dir", self.runtime_dir,
                "--drain-time-s", str(self.drain_time_s)] + self.extra_args

    def start(self, wait: bool = True, timeout: float = 20.0) -> "Proxyd":
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(REPO), env=env,
                                     start_new_session=True, preexec_fn=self.preexec_fn)
        if wait:
            self.wait_live(timeout)
        return self

    def status(self, timeout: float = 2.0) -> dict:
        """The master's `status` over the control socket: pid, state, workers."""
        from proxyd.master.control import request
        resp = request(self.runtime_dir, {"cmd": "status"}, timeout=timeout)
        self.seen_pids.update(resp.get("workers") or [])
        return resp

    def wait_live(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ProxydError("proxyd exited with %s during start-up:\n%s"
                                  % (self.proc.returncode, self.log()))
            try:
                st = self.status(timeout=1.0)
                if st.get("state") == "LIVE" and len(st.get("workers") or []) == self.concurrency:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ProxydError("proxyd not LIVE after %ss:\n%s" % (timeout, self.log()))
            time.sleep(0.03)

    def worker_pids(self) -> list[int]:
        return list(self.status()["workers"])

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful `proxyd stop --runtime-dir`; returns the master's exit status."""
        r = subprocess.run([sys.executable, "-m", "proxyd", "stop", "--runtime-dir", self.runtime_dir,
                            "--timeout", str(timeout)], capture_output=True, text=True,
                           cwd=str(REPO), timeout=timeout + 10)
        if r.returncode != 0:
            raise ProxydError("proxyd stop failed (%d): %s" % (r.returncode, r.stderr))
        return self.wait_exit(timeout)

    def signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)

    def cleanup(self) -> None:
        """Kill everything this proxyd started, whatever state it is in."""
        if self.proc is None:
            return
        if self.proc.poll() is None or group_pids(self.proc.pid):
            kill_group(self.proc)
        for pid in self.seen_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            from proxyd.master.arbiter import stats_path

            class _O:
                base_id = 0
                runtime_dir = self.runtime_dir
            os.unlink(stats_path(_O))
        except (OSError, ImportError):
            pass
        self._log.close()
        if self._own_rt:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.cleanup()


def run_cli(*args, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run `python -m proxyd ARGS...` to completion (check, stop, ...)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "proxyd", *map(str, args)], capture_output=True,
                          text=True, cwd=str(REPO), env=env, timeout=timeout)


# --- upstreams ----------------------------------------------------------------------
class Upstream:
    """tests/upstream_server.py in its own process (see its docstring for the query API)."""

    def __init__(self, name: str = "upstream", port: int | None = None):
        self.name = name
        self.port = port or free_port()
        self.proc = subprocess.Popen([sys.executable, str(UPSTREAM_SCRIPT), str(self.port), name],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            kill_group(self.proc)
            raise RuntimeError("upstream did not start")
        self.address = ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def _control(self, what: str):
        with urllib.request.urlopen(self.url + "/__upstream/" + what, timeout=5) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        """{"connections": n, "requests": n} since start or the last reset()."""
        return self._control("stats")

    def requests_log(self) -> list[dict]:
        return self._control("log")

    def reset(self) -> None:
        self._control("reset")

    def stop(self) -> None:
        kill_group(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location = /hello {{ return 200 "hello from nginx\\n"; }}
    }}
}}
"""


class Nginx:
    """nginx serving `files` ({name: bytes}) from a temporary root, as an upstream."""

    def __init__(self, files: dict[str, bytes] | None = None):
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if exe is None:
            raise FileNotFoundError("nginx is not installed")
        self.dir = tempfile.mkdtemp(prefix="nginx-", dir="/tmp")
        os.makedirs(os.path.join(self.dir, "www"))
        for name, data in (files or {}).items():
            Path(self.dir, "www", name).write_bytes(data)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        Path(conf).write_text(NGINX_CONF.format(dir=self.dir, port=self.port))
        self.proc = subprocess.Popen([exe, "-c", conf, "-p", self.dir], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)

    def stop(self) -> None:
        kill_group(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- a raw HTTP/1.1 client ----------------------------------------------------------------
class Response:
    def __init__(self, status: int, reason: str, version: str, headers: list, body: bytes):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers          # [(lower-case name, value)] in wire order
        self.body = body

    def header(self, name: str, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:200])


class Conn:
    """One client connection with a persistent read buffer, so several responses
    (keep-alive, pipelining) can be read from it in order."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.local_port = self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", path: str = "/", headers=(), body: bytes | None = None,
                host: str | None = "example.com", read: bool = True) -> Response | None:
        self.send(build_request(method, path, headers, body, host))
        return self.read_response(method) if read else None

    def read_response(self, method: str = "GET", skip_interim: bool = True) -> Response:
        while True:
            line = self.f.readline(65537)
            if not line:
                raise ConnectionError("connection closed before a response")
            version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
            code, _, reason = rest.partition(" ")
            status = int(code)
            headers = []
            while True:
                h = self.f.readline(65537)
                if not h:
                    raise ConnectionError("connection closed in the response head")
                if h == b"\r\n":
                    break
                assert h.endswith(b"\r\n"), h
                k, _, v = h.decode("latin-1").partition(":")
                headers.append((k.strip().lower(), v.strip()))
            if 100 <= status < 200 and skip_interim:
                continue
            resp = Response(status, reason, version, headers, b"")
            break
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te is not None:
            assert te.lower() == "chunked", te
            parts = []
            while True:
                size = int(self.f.readline(1024).split(b";")[0], 16)
                if size == 0:
                    assert self.f.readline(1024) == b"\r\n"
                    break
                parts.append(self._read_exact(size))
                assert self.f.read(2) == b"\r\n"
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._read_exact(int(cl))
        else:
            resp.body = self.f.read()
        return resp

    def _read_exact(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ConnectionError("short body: %d of %d bytes" % (len(data), n))
        return data

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True if the peer closes (EOF or reset) within `timeout` with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            data = self.f.read1(65536) if hasattr(self.f, "read1") else self.sock.recv(65536)
        except socket.timeout:
            return False
        except OSError:
            return True
        return data == b""

    def close(self) -> None:
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def build_request(method: str = "GET", path: str = "/", headers=(), body: bytes | None = None,
                  host: str | None = "example.com") -> bytes:
    lines = ["%s %s HTTP/1.1" % (method, path)]
    names = {k.lower() for k, _ in headers}
    if host is not None and "host" not in names:
        lines.append("Host: %s" % host)
    lines.extend("%s: %s" % kv for kv in headers)
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def http(port: int, method: str = "GET", path: str = "/", headers=(), body: bytes | None = None,
         host: str | None = "example.com", timeout: float = 10.0) -> Response:
    """One request on a new connection."""
    with Conn(port, timeout=timeout) as c:
        return c.request(method, path, headers, body, host)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `data`, read until the server closes or `timeout` passes.
    Returns (everything received, whether the server closed the connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = []
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return b"".join(out), False
            except ConnectionResetError:
                return b"".join(out), True
            if not chunk:
                return b"".join(out), True
            out.append(chunk)
    finally:
        s.close()


def process_rss(pids) -> int:
    """Sum of the resident set sizes of `pids` in bytes (gone processes count 0)."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


# --- the HTTP/1.1 request corpus (tests/corpus/http1/README.md) ------------------------
CORPUS_DIR = Path(__file__).resolve().parent / "corpus" / "http1"


def decode_corpus_text(text: str) -> bytes:
    out = bytearray()
    text = text.replace("\n", "")
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out += c.encode("latin-1")
            i += 1
            continue
        e = text[i + 1]
        if e == "x":
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
            continue
        out += {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\"}[e]
        i += 2
    return bytes(out)


def _expand(obj, expand: dict):
    if isinstance(obj, str):
        for token, (text, count) in expand.items():
            obj = obj.replace(token, text * count)
        return obj
    if isinstance(obj, list):
        return [_expand(x, expand) for x in obj]
    if isinstance(obj, dict):
        return {k: _expand(v, expand) for k, v in obj.items()}
    return obj


def http1_corpus(kind: str) -> list[tuple[str, bytes, dict]]:
    """[(case id like "invalid/003", raw request bytes, expected outcome)] for
    kind "valid" or "invalid"."""
    out = []
    for path in sorted((CORPUS_DIR / kind).glob("*.http")):
        expected = json.loads(path.with_suffix(".json").read_text())
        raw = decode_corpus_text(path.read_text())
        expand = expected.pop("expand", None)
        if expand:
            for token, (text, count) in expand.items():
                raw = raw.replace(token.encode(), text.encode("latin-1") * count)
            expected = _expand(expected, expand)
        out.append(("%s/%s" % (kind, path.stem), raw, expected))
    return out

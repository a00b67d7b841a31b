"""Access logs and tracing through real proxyd processes (master + workers) and a real
upstream: the Envoy default line, JSON lines with response flags, a full disk under a
request flood, logrotate's rename + SIGUSR1, several workers on one file, and B3/Zipkin
across two proxyd hops with a collector run by the test."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import orjson
import pytest

from harness import Conn, bootstrap, cluster, closed_port, free_port, http, listener, route

from .test_zipkin import Collector, check_zipkin_v2


FILE_AL = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


def file_log(path, json_format=None, text=None, **extra) -> dict:
    tc = {"@type": FILE_AL, "path": str(path)}
    if json_format is not None:
        tc["log_format"] = {"json_format": json_format}
    elif text is not None:
        tc["log_format"] = {"text_format_source": {"inline_string": text}}
    return dict({"name": "envoy.access_loggers.file", "typed_config": tc}, **extra)


def lines_of(path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path, n, timeout=6.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = lines_of(path)
        if len(lines) >= n:
            return lines
        assert time.monotonic() < deadline, f"{len(lines)} lines in {path}, wanted {n}"
        time.sleep(0.05)


def proxy_stats(px) -> dict:
    from proxyd.master.arbiter import stats_path
    from proxyd.stats import StatsStore

    class Opts:
        base_id = 0
        runtime_dir = px.runtime_dir
    store = StatsStore.attach(stats_path(Opts))
    try:
        return {name: value for name, _kind, value in store.items()}
    finally:
        store.close()


def test_default_line_through_the_proxy(upstream, proxyd_factory, tmp_path):
    log = tmp_path / "access.log"
    port = free_port()
    px = proxyd_factory(bootstrap([listener(port, access_log=[file_log(log)])],
                                  [cluster("upstream", [("127.0.0.1", upstream.port)])]))
    t0 = time.time()
    r = http(px.port, "POST", "/echo?x=1", body=b"hello",
             headers=[("User-Agent", "e2e/1.0"), ("X-Forwarded-For", "203.0.113.9"),
                      ("X-Request-Id", "rid-e2e-1")])
    assert r.status == 200
    [line] = wait_lines(log, 1)
    m = re.fullmatch(
        r'\[(?P<start>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] '
        r'"(?P<method>\S+) (?P<path>\S+) (?P<proto>\S+)" (?P<code>\d+) (?P<flags>\S+) '
        r'(?P<rx>\d+) (?P<tx>\d+) (?P<dur>\d+) (?P<ust>\S+) "(?P<xff>[^"]*)" "(?P<ua>[^"]*)" '
        r'"(?P<rid>[^"]*)" "(?P<authority>[^"]*)" "(?P<host>[^"]*)"', line)
    assert m, line
    f = m.groupdict()
    start = time.mktime(time.strptime(f["start"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(start - t0) < 5
    assert (f["method"], f["path"], f["proto"], f["code"], f["flags"]) == \
        ("POST", "/echo?x=1", "HTTP/1.1", "200", "-")
    assert (f["rx"], f["tx"]) == ("5", str(len(r.body)))
    assert int(f["dur"]) < 5000 and (f["ust"] == "-" or f["ust"].isdigit())
    assert (f["xff"], f["ua"], f["rid"], f["authority"], f["host"]) == \
        ("203.0.113.9", "e2e/1.0", "rid-e2e-1", "example.com", f"127.0.0.1:{upstream.port}")


def test_json_lines_with_response_flags(upstream, proxyd_factory, tmp_path):
    log = tmp_path / "access.json"
    port = free_port()
    fmt = {"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "path": "%REQ(:PATH)%",
           "details": "%RESPONSE_CODE_DETAILS%", "cluster": "%UPSTREAM_CLUSTER%",
           "duration": "%DURATION%", "route": "%ROUTE_NAME%"}
    routes = [route("/ok", name="ok"), route("/dead", cluster="dead"),
              route("/empty", cluster="empty")]
    px = proxyd_factory(bootstrap(
        [listener(port, routes=routes, access_log=[file_log(log, json_format=fmt)])],
        [cluster("upstream", [("127.0.0.1", upstream.port)]),
         cluster("dead", [("127.0.0.1", closed_port())]),
         cluster("empty", [])]))
    cases = [("/ok", 200, "-"), ("/dead", 503, "UF"), ("/nothing", 404, "NR"),
             ("/empty", 503, "UH")]
    for path, status, _ in cases:
        assert http(px.port, path=path).status == status, path
    docs = [orjson.loads(x) for x in wait_lines(log, len(cases))]
    assert [(d["path"], d["code"], d["flags"]) for d in docs] == cases
    assert docs[0]["cluster"] == "upstream" and docs[0]["route"] == "ok"
    assert docs[0]["details"] == "via_upstream" and isinstance(docs[0]["duration"], int)
    assert docs[2]["cluster"] is None and docs[2]["route"] is None
    assert list(docs[0]) == sorted(fmt)          # a Struct has no order: sorted, as Envoy


def test_route_timeout_is_logged_as_ut(upstream, proxyd_factory, tmp_path):
    log = tmp_path / "access.json"
    port = free_port()
    px = proxyd_factory(bootstrap(
        [listener(port, routes=[route("/slow", timeout="0.3s")], access_log=[file_log(
            log, json_format={"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
                              "duration": "%DURATION%"})])],
        [cluster("upstream", [("127.0.0.1", upstream.port)])]))
    assert http(px.port, path="/slow?delay=2").status == 504
    [doc] = [orjson.loads(x) for x in wait_lines(log, 1)]
    assert (doc["code"], doc["flags"]) == (504, "UT") and 300 <= doc["duration"] < 2000


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_flood_on_a_full_disk_fails_no_request_and_counts_drops(upstream, proxyd_factory,
                                                               tiny_tmpfs):
    log = tiny_tmpfs / "access.log"
    port = free_port()
    px = proxyd_factory(bootstrap([listener(port, access_log=[file_log(log)])],
                                  [cluster("upstream", [("127.0.0.1", upstream.port)])]),
                        concurrency=2)
    statuses = []

    def client():
        with Conn(px.port) as c:
            for _ in range(400):
                statuses.append(c.request("GET", "/flood", [("user-agent", "u" * 200)]).status)
    threads = [threading.Thread(target=client) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert statuses.count(200) == 1600, (len(statuses), set(statuses))
    # Every line's newline is either on the disk or counted as dropped (lines refused by
    # a full buffer, and the unwritten rest of a failed write, a torn last line included).
    deadline = time.monotonic() + 8
    while True:
        st = proxy_stats(px)
        with open(log, "rb") as f:
            on_disk = f.read().count(b"\n")
        dropped = st.get("access_log_file.lines_dropped", 0)
        if on_disk + dropped == 1600:
            break
        assert time.monotonic() < deadline, (on_disk, dropped)
        time.sleep(0.2)
    assert st["access_log_file.write_failed"] >= 1 and dropped > 1000
    assert os.path.getsize(log) <= 64 * 1024
    assert elapsed < 30


@pytest.mark.parametrize("reopen", ["SIGUSR1", "POST /reopen_logs"])
def test_logrotate_rename_then_reopen(upstream, proxyd_factory, tmp_path, reopen):
    log = tmp_path / "access.log"
    port = free_port()
    admin = free_port()
    px = proxyd_factory(bootstrap([listener(port, access_log=[file_log(log)])],
                                  [cluster("upstream", [("127.0.0.1", upstream.port)])],
                                  admin_port=admin),
                        concurrency=2)
    for _ in range(3):
        assert http(px.port, path="/before").status == 200
    wait_lines(log, 3)
    os.rename(log, str(log) + ".1")
    if reopen == "SIGUSR1":
        px.signal(signal.SIGUSR1)             # the master forwards it to every worker
    else:
        assert http(admin, method="POST", path="/reopen_logs").status == 200
    time.sleep(0.3)
    for _ in range(4):
        assert http(px.port, path="/after").status == 200
    new = wait_lines(log, 4)
    old = lines_of(str(log) + ".1")
    assert len(old) == 3 and all('"GET /before HTTP/1.1"' in x for x in old)
    assert len(new) == 4 and all('"GET /after HTTP/1.1"' in x for x in new)
    assert px.proc.poll() is None and len(px.worker_pids()) == 2


def test_workers_sharing_one_file_never_interleave(upstream, proxyd_factory, tmp_path):
    log = tmp_path / "access.log"
    port = free_port()
    px = proxyd_factory(bootstrap(
        [listener(port, access_log=[file_log(log, text="%REQ(USER-AGENT)% %RESPONSE_CODE%\n")])],
        [cluster("upstream", [("127.0.0.1", upstream.port)])]), concurrency=4)

    def client(i):
        ua = f"client{i}-" + chr(ord("a") + i) * 3000
        with Conn(px.port) as c:
            for _ in range(150):
                assert c.request("GET", "/x", [("user-agent", ua)]).status == 200
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    lines = wait_lines(log, 1200)
    assert len(lines) == 1200
    for line in lines:
        m = re.fullmatch(r"client(\d)-([a-h])+ 200", line)
        assert m and line.count(m.group(2)) == 3000 + (m.group(2) in "client"), line[:80]


def tracing():
    return {"random_sampling": {"value": 100}, "spawn_upstream_span": True,
            "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
                "@type": ZIPKIN, "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON"}}}


def test_b3_and_zipkin_across_two_proxyd_hops(upstream, proxyd_factory):
    col = Collector()
    try:
        zipkin_cluster = cluster("zipkin", [col.address])
        p2, p1 = free_port(), free_port()
        hop2 = bootstrap([listener(p2, tracing=tracing())],
                         [cluster("upstream", [("127.0.0.1", upstream.port)]), zipkin_cluster])
        hop2["node"] = {"id": "hop2-node", "cluster": "hop2"}
        hop1 = bootstrap([listener(p1, tracing=tracing())],
                         [cluster("upstream", [("127.0.0.1", p2)]), zipkin_cluster])
        hop1["node"] = {"id": "hop1-node", "cluster": "hop1"}
        proxyd_factory(hop2)
        proxyd_factory(hop1)
        seen = []
        for i in range(3):                    # 2 spans per hop per request: 6 >= 5 flushes
            r = http(p1, path=f"/traced/{i}")
            assert r.status == 200
            seen.append({k.lower(): v for k, v in r.json()["headers"]})
        incoming = "463ac35c9f6413ad48485a3953bb6124"
        r = http(p1, path="/continued", headers=[("x-b3-traceid", incoming),
                                                   ("x-b3-spanid", "a2fb4a1d1a96d312"),
                                                   ("x-b3-sampled", "1")])
        seen.append({k.lower(): v for k, v in r.json()["headers"]})
        deadline = time.monotonic() + 8
        while len(col.spans()) < 16:
            assert time.monotonic() < deadline, len(col.spans())
            time.sleep(0.05)
        spans = col.spans()
        now_us = int(time.time() * 1e6)
        for s in spans:
            check_zipkin_v2(s, now_us)
        by_trace = {}
        for s in spans:
            by_trace.setdefault(s["traceId"], []).append(s)
        for h in seen:
            trace = by_trace[h["x-b3-traceid"]]
            kinds = {(s["localEndpoint"]["serviceName"], s["kind"]): s for s in trace}
            assert len(kinds) == 4 and len(trace) == 4
            s1, c1 = kinds[("hop1", "SERVER")], kinds[("hop1", "CLIENT")]
            s2, c2 = kinds[("hop2", "SERVER")], kinds[("hop2", "CLIENT")]
            assert c1["parentId"] == s1["id"]
            assert s2["id"] == c1["id"] and s2["parentId"] == s1["id"] and s2["shared"] is True
            assert c2["parentId"] == s2["id"]
            # what the upstream saw is hop2's CLIENT span
            assert (h["x-b3-spanid"], h["x-b3-parentspanid"], h["x-b3-sampled"]) == \
                (c2["id"], s2["id"], "1")
            assert s1["tags"]["http.status_code"] == "200"
        root = [s for s in spans if s["traceId"] == seen[0]["x-b3-traceid"]
                and s["kind"] == "SERVER" and s["localEndpoint"]["serviceName"] == "hop1"][0]
        assert "parentId" not in root
        cont = by_trace[incoming]
        hop1_server = [s for s in cont if s["kind"] == "SERVER"
                       and s["localEndpoint"]["serviceName"] == "hop1"][0]
        assert hop1_server["id"] == "a2fb4a1d1a96d312" and hop1_server["shared"] is True
    finally:
        col.close()

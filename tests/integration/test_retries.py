"""Route retries as Envoy's router does them: which failures are retried, how often,
the replayed request body, per-try timeouts, URX, attempt counts and the retry stats,
against real upstreams that fail on cue, from HTTP/1 and HTTP/2 clients."""
import hashlib
import os
import sys
import time
import urllib.request
import uuid

from harness import closed_port, cluster, free_port, http, simple_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "http2"))
from h2client import H2Client  # noqa: E402
from h2server import H2Server  # noqa: E402

LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


def _start(proxyd_factory, tmp_path, policy, endpoints, **cluster_extra):
    admin = free_port()
    log = tmp_path / "access.log"
    vhost = {"name": "vh", "domains": ["*"], "include_attempt_count_in_response": True,
             "routes": [{"match": {"prefix": "/"},
                         "route": {"cluster": "upstream", "retry_policy": policy}}]}
    cfg = simple_config(free_port(), clusters=[cluster("upstream", endpoints, **cluster_extra)],
                        admin_port=admin, virtual_hosts=[vhost],
                        access_log=[{"name": "log", "typed_config": {
                            "@type": LOG_TYPE, "path": str(log),
                            "log_format": {"text_format": "%RESPONSE_FLAGS%\n"}}}])
    px = proxyd_factory(cfg)
    return px, admin, log


def _flags(log) -> str:
    """The access log's lines, once written (the logger flushes on its own schedule)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text:
            return text
        time.sleep(0.05)
    return ""


def _target(query: str) -> str:
    return "/%s?%s" % (uuid.uuid4().hex, query)  # fresh, so fail=N counts from zero


def test_a_503_is_retried_and_the_retry_answers(upstream, proxyd_factory, tmp_path):
    px, admin, log = _start(proxyd_factory, tmp_path, {"retry_on": "5xx"}, [upstream.address])
    r = http(px.port, path=_target("fail=1"))
    assert r.status == 200
    assert r.header("x-envoy-attempt-count") == "2"
    s = _stats(admin)
    assert s["cluster.upstream.upstream_rq_retry"] == "1"
    assert s["cluster.upstream.upstream_rq_retry_success"] == "1"
    assert s["cluster.upstream.upstream_rq_retry_backoff_exponential"] == "1"
    assert s["cluster.upstream.retry.upstream_rq_503"] == "1"
    assert s["cluster.upstream.upstream_rq_200"] == "1"
    assert s.get("cluster.upstream.upstream_rq_503", "0") == "0"  # final responses only
    assert _flags(log) == "-\n"


def test_retries_used_up_answer_the_last_response_with_urx(upstream, proxyd_factory,
                                                           tmp_path):
    """Envoy 1.40, 503 x3 with 2 retries: retry.upstream_rq_503 2, upstream_rq_503 1."""
    px, admin, log = _start(proxyd_factory, tmp_path,
                            {"retry_on": "gateway-error", "num_retries": 2},
                            [upstream.address])
    r = http(px.port, path=_target("fail=9"))
    assert r.status == 503 and r.header("x-envoy-attempt-count") == "3"
    s = _stats(admin)
    assert s["cluster.upstream.retry.upstream_rq_503"] == "2"
    assert s["cluster.upstream.upstream_rq_503"] == "1"
    assert s["cluster.upstream.upstream_rq_retry"] == "2"
    assert s["cluster.upstream.upstream_rq_retry_limit_exceeded"] == "1"
    assert s["cluster.upstream.upstream_rq_retry_success"] == "0"
    assert _flags(log) == "URX\n"


def test_a_status_outside_retry_on_is_not_retried(upstream, proxyd_factory, tmp_path):
    px, admin, _ = _start(proxyd_factory, tmp_path,
                          {"retry_on": "retriable-status-codes", "retriable_status_codes": [418]},
                          [upstream.address])
    assert http(px.port, path=_target("fail=1")).status == 503
    assert http(px.port, path=_target("status=418")).header("x-envoy-attempt-count") == "2"
    assert _stats(admin)["cluster.upstream.upstream_rq_retry"] == "1"


def test_the_request_body_is_replayed_to_the_retry(upstream, proxyd_factory, tmp_path):
    px, _, _ = _start(proxyd_factory, tmp_path, {"retry_on": "5xx"}, [upstream.address])
    body = os.urandom(200_000)
    r = http(px.port, "POST", _target("fail=1"), body=body)
    assert r.status == 200 and r.header("x-envoy-attempt-count") == "2"
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_body_over_the_buffer_limit_abandons_retries(upstream, proxyd_factory, tmp_path):
    px, admin, _ = _start(proxyd_factory, tmp_path, {"retry_on": "5xx"}, [upstream.address])
    r = http(px.port, "POST", _target("fail=1"), body=b"x" * (1024 * 1024 + 1))
    assert r.status == 503 and r.header("x-envoy-attempt-count") == "1"
    assert _stats(admin)["cluster.upstream.retry_or_shadow_abandoned"] == "1"


def test_connect_failures_go_to_another_host(upstream, proxyd_factory, tmp_path):
    px, admin, _ = _start(proxyd_factory, tmp_path, {"retry_on": "connect-failure"},
                          [("127.0.0.1", closed_port()), upstream.address])
    statuses = [http(px.port, path="/").status for _ in range(4)]
    assert statuses == [200] * 4
    assert int(_stats(admin)["cluster.upstream.upstream_rq_retry"]) >= 1


def test_per_try_timeout_retries_then_answers_504_ut(upstream, proxyd_factory, tmp_path):
    px, admin, log = _start(proxyd_factory, tmp_path,
                            {"retry_on": "5xx", "per_try_timeout": "0.2s"}, [upstream.address])
    r = http(px.port, path=_target("delay=2"))
    assert r.status == 504 and r.body == b"upstream request timeout"
    s = _stats(admin)
    assert s["cluster.upstream.upstream_rq_per_try_timeout"] == "2"
    assert s["cluster.upstream.upstream_rq_retry"] == "1"
    assert _flags(log) == "URX,UT\n"  # Envoy 1.40's order


def test_an_upstream_reset_is_retried_under_reset(upstream, proxyd_factory, tmp_path):
    px, _, log = _start(proxyd_factory, tmp_path, {"retry_on": "reset", "num_retries": 2},
                        [upstream.address])
    target = _target("close=1")
    r = http(px.port, path=target)
    assert r.status == 503
    assert sum(1 for e in upstream.requests_log() if e["path"] == target) == 3
    assert _flags(log) == "URX,UC\n"


def test_http2_client_gets_the_retried_answer(upstream, proxyd_factory, tmp_path):
    px, _, _ = _start(proxyd_factory, tmp_path, {"retry_on": "5xx"}, [upstream.address])
    with H2Client(px.port) as c:
        r = c.get(_target("fail=1"))
    assert r.status == 200 and r.header("x-envoy-attempt-count") == "2"


def test_http2_upstream_stream_resets_are_retried(proxyd_factory, tmp_path):
    h2 = H2Server()
    try:
        px, admin, log = _start(proxyd_factory, tmp_path,
                                {"retry_on": "reset", "num_retries": 2},
                                [("127.0.0.1", h2.port)],
                                http2_protocol_options={})
        with H2Client(px.port) as c:
            sid = c.request("POST", "/rst", body=b"payload")
            r = c.wait(sid)
        assert r.status == 503 and r.header("x-envoy-attempt-count") == "3"
        assert sum(1 for p in h2.paths if p.endswith("/rst")) == 3
        assert _stats(admin)["cluster.upstream.upstream_rq_retry"] == "2"
        assert _flags(log).startswith("URX")
    finally:
        h2.stop()


def _header_config(upstream, internal: bool):
    vhost = {"name": "vh", "domains": ["*"], "include_attempt_count_in_response": True,
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}
    extra = {"use_remote_address": True}
    if internal:
        extra["internal_address_config"] = {"cidr_ranges": [
            {"address_prefix": "127.0.0.1", "prefix_len": 32}]}
    return simple_config(free_port(), upstream.port, virtual_hosts=[vhost], **extra)


def test_an_internal_request_asks_for_retries_by_header(upstream, proxyd_factory):
    px = proxyd_factory(_header_config(upstream, internal=True))
    target = _target("fail=1")
    r = http(px.port, path=target, headers=[("x-envoy-retry-on", "5xx")])
    assert r.status == 200 and r.header("x-envoy-attempt-count") == "2"
    assert "x-envoy-retry-on" not in dict(r.json()["headers"])
    r = http(px.port, path=_target("fail=9"), headers=[
        ("x-envoy-retry-on", "gateway-error"), ("x-envoy-max-retries", "3")])
    assert r.status == 503 and r.header("x-envoy-attempt-count") == "4"
    r = http(px.port, path=_target("delay=2"), headers=[
        ("x-envoy-retry-on", "5xx"), ("x-envoy-upstream-rq-per-try-timeout-ms", "200")])
    assert r.status == 504 and r.header("x-envoy-attempt-count") == "2"


def test_retry_headers_of_external_requests_are_ignored(upstream, proxyd_factory):
    """Envoy 1.40: with no internal_address_config no request is internal."""
    px = proxyd_factory(_header_config(upstream, internal=False))
    r = http(px.port, path=_target("fail=1"), headers=[("x-envoy-retry-on", "5xx")])
    assert r.status == 503 and r.header("x-envoy-attempt-count") == "1"


def test_the_retry_circuit_breaker_refuses_with_uo(upstream, proxyd_factory, tmp_path):
    px, admin, log = _start(proxyd_factory, tmp_path, {"retry_on": "5xx"}, [upstream.address],
                            circuit_breakers={"thresholds": [{"max_retries": 0}]})
    r = http(px.port, path=_target("fail=1"))
    assert r.status == 503 and r.header("x-envoy-attempt-count") == "1"
    assert _stats(admin)["cluster.upstream.upstream_rq_retry_overflow"] == "1"
    assert _flags(log) == "UO\n"


def test_previous_hosts_steers_retries_off_the_failed_host(upstream, proxyd_factory, tmp_path):
    """A random-by-weight cluster (RING_HASH without a hash key) with a refusing host:
    without the predicate about a quarter of the retries would pick it again."""
    px, _, _ = _start(proxyd_factory, tmp_path, {
        "retry_on": "connect-failure", "host_selection_retry_max_attempts": 30,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                  "typed_config": {"@type": "type.googleapis.com/envoy."
                                                   "extensions.retry.host.previous_hosts.v3."
                                                   "PreviousHostsPredicate"}}]},
        [("127.0.0.1", closed_port()), upstream.address], lb_policy="RING_HASH")
    assert [http(px.port, path="/").status for _ in range(20)] == [200] * 20

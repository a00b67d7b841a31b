"""Retries beside Envoy 1.40 on one template: statuses, x-envoy-attempt-count, response
flags (and their order) and the cluster retry stats, the retry circuit breaker included."""
from __future__ import annotations

import time
import uuid

TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/access.log
              log_format: {text_format: "%RESPONSE_CODE% %RESPONSE_FLAGS%\\n"}
          route_config:
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              include_attempt_count_in_response: true
              retry_policy: {retry_on: "5xx", num_retries: 2, per_try_timeout: 0.3s}
              routes:
              - match: {prefix: "/closed"}
                route: {cluster: closed}
              - match: {prefix: "/tight"}
                route: {cluster: tight}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
  - name: tight
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {thresholds: [{max_retries: 0}]}
    load_assignment:
      cluster_name: tight
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
  - name: closed
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: closed
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $closed}}}}]}]
"""
CASES = ("fail=1", "fail=9", "delay=2", "closed", "tight", "post", "post-big")
BODY = {"post": b"b" * 200_000, "post-big": b"B" * (1024 * 1024 + 1)}  # replay buffer: 1 MiB
STATS = ("upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
         "upstream_rq_retry_backoff_exponential", "upstream_rq_per_try_timeout",
         "retry.upstream_rq_503", "upstream_rq_503", "upstream_rq_200", "upstream_rq_total",
         "upstream_rq_completed", "retry.upstream_rq_5xx", "upstream_rq_5xx", "upstream_rq_504",
         "upstream_rq_timeout", "upstream_rq_rx_reset", "upstream_rq_tx_reset", "upstream_cx_total",
         "upstream_cx_destroy_local", "upstream_cx_destroy_remote")


def _observe(side):
    out = []
    for q in CASES:
        path = ("/closed" if q == "closed" else "/tight/%s?fail=1" % uuid.uuid4().hex
                if q == "tight" else "/%s?fail=1" % uuid.uuid4().hex
                if q in BODY else "/%s?%s" % (uuid.uuid4().hex, q))
        if q in BODY:
            r = side.http(path, method="POST", body=BODY[q])
        else:
            r = side.http(path)
        out.append((r.status, r.header("x-envoy-attempt-count")))
        if r.status == 200:  # what the upstream was told
            out.append(sorted((k, v) for k, v in r.json()["headers"]
                              if k in ("x-envoy-expected-rq-timeout-ms", "x-envoy-attempt-count")))
    deadline = time.monotonic() + 10
    while side.read("access.log").count("\n") < len(CASES) and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode().splitlines()
                 if ": " in line)
    return (out, side.read("access.log").splitlines(),
            {n: stats.get("cluster.upstream." + n) for n in STATS},
            stats.get("cluster.closed.upstream_rq_retry"),
            stats.get("cluster.tight.upstream_rq_retry_overflow"),
            stats.get("cluster.upstream.retry_or_shadow_abandoned"))


def test_retries_match_envoy(pair_factory):
    envoy, proxyd = pair_factory(TEMPLATE).both(_observe)
    assert [o for o in envoy[0] if isinstance(o, tuple)] == [
        (200, "2"), (503, "3"), (504, "3"), (503, "3"), (503, "1"), (200, "2"), (503, "1")]
    assert proxyd == envoy

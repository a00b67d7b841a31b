"""envoy.tracers.opentelemetry and the HCM tracing settings, Envoy 1.40 and proxyd on one
bootstrap, each exporting OTLP/HTTP to its own receiver: the same requests must propagate
the same W3C headers (shape), export spans for the same requests, and export spans of the
same shape (name, kind, parent, trace state, attribute names and the values that do not
depend on the process: methods, statuses, clusters, custom tags), and count the same
`http.<sp>.tracing.*` reasons."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "observability"))
from otlp_receiver import Receiver  # noqa: E402

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")

TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
node: {id: node-1, cluster: front, locality: {zone: z1}}
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.min_flush_spans: 1
      tracing.opentelemetry.flush_interval_ms: 200
static_resources:
  listeners:
  - name: traced
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": %(hcm)s
          stat_prefix: ing
          use_remote_address: true
          internal_address_config:
            cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]
          tracing:
            random_sampling: {value: %(random)s}
            %(extra)s
            custom_tags:
            - {tag: lit, literal: {value: v}}
            - {tag: hdr, request_header: {name: x-h, default_value: dflt}}
            - {tag: env, environment: {name: PROXYD_TEST_TAG_ENV, default_value: none}}
            - tag: md
              metadata:
                kind: {request: {}}
                metadata_key: {key: ns, path: [{key: k}]}
                default_value: no-md
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": %(otel)s
                service_name: svc-a
                http_service:
                  http_uri: {uri: "http://otlp/v1/traces", cluster: otlp, timeout: 1s}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /dead}
                route: {cluster: dead}
              - match: {prefix: /}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $upstream}}}}]}]
  - name: dead
    connect_timeout: 1s
    load_assignment:
      cluster_name: dead
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $closed}}}}]}]
  - name: otlp
    connect_timeout: 1s
    load_assignment:
      cluster_name: otlp
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $otlp}}}}]}]
"""

PARENT = "0af7651916cd43dd8448eb211c80319c"
# (name, request headers, path)
REQUESTS = [
    ("fresh", [], "/p/a?q=1"),
    ("continued", [("traceparent", f"00-{PARENT}-b7ad6b7169203331-01"),
                   ("tracestate", "foo=bar,k=v")], "/p/b"),
    ("parent_unsampled", [("traceparent", f"00-{PARENT[:-1]}d-b7ad6b7169203331-00")], "/p/c"),
    ("invalid_parent", [("traceparent", "00-xyz-b7ad6b7169203331-01")], "/p/d"),
    ("not_a_uuid", [("x-request-id", "rid-1")], "/p/e"),
    ("header_tag", [("x-h", "hv"), ("user-agent", "tracing-test/1")], "/p/f"),
    ("forced", [("x-envoy-force-trace", "1")], "/p/g"),
    ("client", [("x-client-trace-id", "c1")], "/p/h"),
    ("upstream_down", [], "/dead"),
]
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# attribute values that depend on the process or the run, compared by shape
VOLATILE = {"guid:x-request-id", "http.url", "response_size", "upstream_address",
            "peer.address"}


def run(pair, monkeypatch=None):
    """Every request through each side; (upstream-seen headers, x-request-id, status) per
    request name, and the spans each side's receiver got."""
    out = {}
    for side in pair.sides:
        seen = {}
        for name, headers, path in REQUESTS:
            r = side.http(path, headers=headers)
            h = {k.lower(): v for k, v in r.json()["headers"]} if r.status == 200 else {}
            seen[name] = (h, r.status)
        out[side.name] = seen
    return out


def headers_of(name):
    return dict(next(h for n, h, _p in REQUESTS if n == name))


def exported_by(spans, seen):
    """request name -> its spans, matched on the trace id it propagated."""
    by_trace = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], []).append(s)
    out = {}
    for name, (h, _status) in seen.items():
        m = TRACEPARENT.match(h.get("traceparent", ""))
        if m and m.group(1) in by_trace:
            out[name] = by_trace[m.group(1)]
    return out


def shape(span):
    attrs = {k: (v if k not in VOLATILE else "<%s>" % type(v).__name__)
             for k, v in span["attributes"].items()}
    return {"name": span["name"], "kind": span["kind"], "has_parent": bool(span["parent_span_id"]),
            "trace_state": span["trace_state"], "attributes": attrs,
            "resource_keys": sorted(span["resource"]), "events": span["events"],
            "status": span["status"], "flags": span["flags"]}


def traced_pair(pair_factory, monkeypatch, extra="", random=100):
    monkeypatch.setenv("PROXYD_TEST_TAG_ENV", "from-env")
    template = TEMPLATE % {"hcm": HCM, "otel": OTEL, "extra": extra, "random": random}
    pair = pair_factory(template)
    receivers = {s.name: Receiver(port=s.ports["otlp"]) for s in pair.sides}
    return pair, receivers


@pytest.fixture
def receivers_cleanup():
    made = []
    yield made
    for r in made:
        r.close()


def _spans_settled(receivers, n):
    deadline = time.monotonic() + 20
    while True:
        counts = {k: len(r.spans()) for k, r in receivers.items()}
        if all(c >= n for c in counts.values()):
            time.sleep(0.5)           # nothing more is coming
            return {k: r.spans() for k, r in receivers.items()}
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)


def test_w3c_propagation_and_spans_match_envoy(pair_factory, monkeypatch, receivers_cleanup):
    pair, receivers = traced_pair(pair_factory, monkeypatch)
    receivers_cleanup.extend(receivers.values())
    seen = run(pair)
    # sampled: fresh, continued, header_tag, forced, client, upstream_down
    spans = _spans_settled(receivers, 6)
    env, pxd = seen["envoy"], seen["proxyd"]
    for name, _h, _p in REQUESTS:
        (eh, es), (ph, ps) = env[name], pxd[name]
        assert es == ps, name
        if es != 200:
            continue
        for key in ("traceparent", "tracestate"):
            assert (key in eh) == (key in ph), (name, key, eh.get(key), ph.get(key))
        if name == "invalid_parent":      # no span: forwarded as it came, nothing added
            assert eh["traceparent"] == ph["traceparent"] == headers_of(name)["traceparent"]
            assert "tracestate" not in ph
        elif "traceparent" in eh:
            em, pm = TRACEPARENT.match(eh["traceparent"]), TRACEPARENT.match(ph["traceparent"])
            assert em and pm, (name, eh["traceparent"], ph["traceparent"])
            assert em.group(3) == pm.group(3), (name, "sampled flag")
            assert (em.group(1) == PARENT) == (pm.group(1) == PARENT), name
            assert eh["tracestate"] == ph["tracestate"], name
        if name == "not_a_uuid":
            assert eh["x-request-id"] == ph["x-request-id"] == "rid-1"
        erid, prid = eh.get("x-request-id", ""), ph.get("x-request-id", "")
        if UUID.match(erid):
            assert UUID.match(prid) and erid[14] == prid[14], (name, erid, prid)
    e_by, p_by = exported_by(spans["envoy"], env), exported_by(spans["proxyd"], pxd)
    assert sorted(e_by) == sorted(p_by)
    assert sorted(e_by) == ["client", "continued", "forced", "fresh", "header_tag"]
    # the 503 (no upstream saw it): found by its URL
    for by, side in ((e_by, "envoy"), (p_by, "proxyd")):
        by["upstream_down"] = [s for s in spans[side]
                               if s["attributes"].get("http.url", "").endswith("/dead")]
        assert len(by["upstream_down"]) == 1, side
    for name in e_by:
        es = sorted((shape(s) for s in e_by[name]), key=lambda s: s["kind"])
        ps = sorted((shape(s) for s in p_by[name]), key=lambda s: s["kind"])
        assert ps == es, name
    # the exported span is the one whose id went upstream
    h = pxd["fresh"][0]
    [span] = p_by["fresh"]
    assert TRACEPARENT.match(h["traceparent"]).group(2) == span["span_id"]
    [cont] = p_by["continued"]
    assert cont["parent_span_id"] == "b7ad6b7169203331" and cont["trace_id"] == PARENT
    stats = {}
    for side in pair.sides:
        text = side.admin("/stats?filter=tracing").body.decode()
        stats[side.name] = {k: v for k, _, v in (line.partition(": ")
                            for line in text.splitlines()) if k.startswith("http.ing.tracing.")}
    assert stats["proxyd"] == stats["envoy"]


def test_spawn_upstream_span_and_verbose_match_envoy(pair_factory, monkeypatch,
                                                    receivers_cleanup):
    pair, receivers = traced_pair(pair_factory, monkeypatch,
                                  extra="spawn_upstream_span: true\n            verbose: true\n"
                                        "            max_path_tag_length: 4")
    receivers_cleanup.extend(receivers.values())
    seen = {}
    for side in pair.sides:
        r = side.http("/p/a?q=1")
        assert r.status == 200
        seen[side.name] = {"fresh": ({k.lower(): v for k, v in r.json()["headers"]}, 200)}
    spans = _spans_settled(receivers, 2)
    e_by = exported_by(spans["envoy"], seen["envoy"])
    p_by = exported_by(spans["proxyd"], seen["proxyd"])
    es = sorted((shape(s) for s in e_by["fresh"]), key=lambda s: s["kind"])
    ps = sorted((shape(s) for s in p_by["fresh"]), key=lambda s: s["kind"])
    assert [s["kind"] for s in ps] == ["CLIENT", "SERVER"]
    # the event lists: the same names (proxyd stamps fewer times: compared as sets)
    for e, p in zip(es, ps):
        assert set(p.pop("events")) <= set(e.pop("events")), (p["kind"])
    assert ps == es
    # the upstream got the CLIENT span's id
    client = [s for s in p_by["fresh"] if s["kind"] == "CLIENT"][0]
    server = [s for s in p_by["fresh"] if s["kind"] == "SERVER"][0]
    tp = TRACEPARENT.match(seen["proxyd"]["fresh"][0]["traceparent"])
    assert tp.group(2) == client["span_id"] and client["parent_span_id"] == server["span_id"]
    assert server["attributes"]["http.url"].endswith("/p/a")

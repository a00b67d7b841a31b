"""udp_proxy side by side with real Envoy 1.40, in front of one real UDP echo service:
the same answers per client session, the same drops (oversized datagrams either way), the
same idle timeout, and the same udp.*, cluster udp and listener stats."""
from __future__ import annotations

import socket
import time

import pytest

from udpecho import UdpEcho

TEMPLATE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @ECHO@}}}}]}]
  listeners:
  - name: u
    address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: $listener}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: svc
        idle_timeout: 1s
        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                cluster: echo
  - name: none
    address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: $other}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: none
        cluster: missing
"""


@pytest.fixture(scope="module")
def echo():
    e = UdpEcho()
    yield e
    e.stop()


def _stats(side):
    text = side.admin("/stats").body.decode()
    out = {}
    for ln in text.splitlines():
        k, _, v = ln.partition(": ")
        if (k.startswith(("udp.", "cluster.echo.udp.")) or k in (
                "cluster.echo.upstream_cx_rx_bytes_total", "cluster.echo.upstream_cx_tx_bytes_total",
                "cluster.echo.upstream_cx_total", "cluster.echo.upstream_cx_active")) and \
                "tunnel" not in k:
            out[k] = v
        prefix = "listener.127.0.0.1_%d.udp." % side.ports["listener"]
        if k.startswith(prefix):
            out["listener.udp." + k[len(prefix):]] = v
    return out


def _wait(side, name, value, deadline=10.0):
    end = time.monotonic() + deadline
    while _stats(side).get(name) != value and time.monotonic() < end:
        time.sleep(0.05)


def test_udp_proxy_matches_envoy(pair_factory, echo):
    pair = pair_factory(TEMPLATE.replace("@ECHO@", str(echo.port)))

    def run(side):
        port = side.ports["listener"]
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sources: dict = {}
        out = []

        def ask(s, data, expect=True):
            s.settimeout(3)
            s.sendto(data, ("127.0.0.1", port))
            if not expect:
                return
            reply, addr = s.recvfrom(65535)
            body, _, src = reply.partition(b" from ")
            out.append((body[:40], len(reply) if not src else None,
                        sources.setdefault(src, len(sources)) if src else None, addr[1] == port))

        ask(a, b"one")
        ask(a, b"two")
        ask(b, b"three")
        ask(a, b"")
        ask(a, b"silent", expect=False)
        ask(a, b"x" * 1501, expect=False)         # over 1500: dropped by the listener
        ask(a, b"big:1500")
        ask(a, b"big:9000")                       # upstream datagrams have no 1500 limit
        ask(b, b"four")
        side.raw_udp = None
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"nowhere", ("127.0.0.1", side.ports["other"]))
        s.close()
        _wait(side, "udp.none.downstream_sess_no_route", "1")
        before = _stats(side)
        _wait(side, "udp.svc.downstream_sess_active", "0")
        ask(a, b"again")
        a.close()
        b.close()
        return out, before, _stats(side)

    envoy, proxyd = pair.both(run)
    assert envoy[0][0] == (b"echo:one", None, 0, True)
    assert envoy[1]["udp.svc.downstream_sess_active"] == "2"
    assert envoy[2]["udp.svc.idle_timeout"] == "2"
    assert proxyd[0] == envoy[0]
    assert sorted(set(proxyd[1].items()) ^ set(envoy[1].items())) == []
    assert sorted(set(proxyd[2].items()) ^ set(envoy[2].items())) == []

"""udp_proxy on a UDP listener through a proxyd process (two workers): a real UDP echo
service and real DNS queries (dnslib client and server), sessions per client address,
idle timeout, no route, oversized datagrams, and Envoy's stats."""
from __future__ import annotations

import socket
import time

import pytest

from harness import free_port
from udpecho import DnsServer, UdpEcho

CONFIG = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: %(admin)d}}}
static_resources:
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %(echo)d}}}}]}]
  - name: dns
    connect_timeout: 1s
    load_assignment:
      cluster_name: dns
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %(dns)d}}}}]}]
  listeners:
  - name: echo
    address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: %(l_echo)d}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: echo
        idle_timeout: 1s
        cluster: echo
  - name: dns
    address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: %(l_dns)d}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: dns
        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                cluster: dns
  - name: nowhere
    address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: %(l_none)d}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: none
        cluster: missing
"""


@pytest.fixture
def peers():
    echo = UdpEcho()
    dns = DnsServer({"svc.example.test": "10.1.2.3", "db.example.test": "10.9.9.9"})
    yield echo, dns
    echo.stop()
    dns.stop()


@pytest.fixture
def px(proxyd_factory, peers):
    echo, dns = peers
    ports = {"admin": free_port(), "l_echo": free_port(), "l_dns": free_port(), "l_none": free_port()}
    p = proxyd_factory(CONFIG % dict(ports, echo=echo.port, dns=dns.port), concurrency=2)
    p.udp = ports
    return p


def stats(px) -> dict:
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % px.admin_port, timeout=5) as r:
        text = r.read().decode()
    return dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)


def wait_stat(px, name, value, deadline=10.0):
    end = time.monotonic() + deadline
    while True:
        v = stats(px).get(name)
        if v == str(value) or time.monotonic() > end:
            return v
        time.sleep(0.05)


def ask(sock, port, data, timeout=3.0):
    sock.settimeout(timeout)
    sock.sendto(data, ("127.0.0.1", port))
    reply, addr = sock.recvfrom(65535)
    assert addr == ("127.0.0.1", port)           # answered from the listener's address
    return reply


def test_sessions_per_client_through_echo(px, peers):
    echo = peers[0]
    port = px.udp["l_echo"]
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r1 = ask(a, port, b"one")
    r2 = ask(a, port, b"two")
    r3 = ask(b, port, b"three")
    src = lambda r: r.rsplit(b" from ", 1)[1]     # noqa: E731 - the upstream socket's address
    assert r1.startswith(b"echo:one ") and r2.startswith(b"echo:two ")
    assert src(r1) == src(r2) != src(r3)          # one upstream socket per client
    assert ask(a, port, b"") == b"echo: from " + src(r1)   # an empty datagram is one too
    a.sendto(b"x" * 2000, ("127.0.0.1", port))    # over max_rx_datagram_size: dropped
    assert ask(a, port, b"big:1400") == b"b" * 1400
    assert ask(a, port, b"big:9000") == b"b" * 9000   # no limit upstream unless configured
    assert ask(a, port, b"after").startswith(b"echo:after")
    s = stats(px)
    assert s["udp.echo.downstream_sess_total"] == "2"
    assert s["udp.echo.downstream_sess_active"] == "2"
    assert s["udp.echo.downstream_sess_rx_datagrams"] == "7"
    assert s["udp.echo.downstream_sess_tx_datagrams"] == "7"
    assert s["listener.127.0.0.1_%d.udp.downstream_rx_datagram_dropped" % port] == "1"
    assert s["cluster.echo.udp.sess_tx_datagrams"] == "7"
    assert s["cluster.echo.udp.sess_rx_datagrams_dropped"] == "0"
    assert s["cluster.echo.upstream_cx_tx_bytes_total"] == str(3 + 3 + 5 + 0 + 8 + 8 + 5)
    assert len(echo.senders) == 7
    # idle_timeout 1s: both sessions end, a new datagram opens a new one
    assert wait_stat(px, "udp.echo.downstream_sess_active", 0) == "0"
    assert stats(px)["udp.echo.idle_timeout"] == "2"
    assert src(ask(a, port, b"again")) != src(r1)
    assert stats(px)["udp.echo.downstream_sess_total"] == "3"
    a.close()
    b.close()


def test_dns_queries_through_udp_proxy(px):
    from dnslib import DNSRecord
    port = px.udp["l_dns"]
    for name, ip in (("svc.example.test", "10.1.2.3"), ("db.example.test", "10.9.9.9")):
        reply = DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=3))
        assert [str(rr.rdata) for rr in reply.rr] == [ip]
    reply = DNSRecord.parse(DNSRecord.question("nope.example.test").send("127.0.0.1", port,
                                                                          timeout=3))
    assert reply.header.rcode == 3
    s = stats(px)
    assert s["udp.dns.downstream_sess_total"] == "3"        # each query from a new port
    assert s["cluster.dns.udp.sess_rx_datagrams"] == "3"


def test_no_route(px):
    port = px.udp["l_none"]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"hello", ("127.0.0.1", port))
    s.close()
    assert wait_stat(px, "udp.none.downstream_sess_no_route", 1) == "1"
    assert stats(px)["udp.none.downstream_sess_total"] == "0"


def test_udp_listener_survives_a_hot_restart(px, peers):
    """`proxyd reload`: the new master inherits the UDP socket (udp://ip:port) and its
    worker 0 answers; the port never stops being bound."""
    from harness import run_cli
    port = px.udp["l_echo"]
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert ask(a, port, b"before").startswith(b"echo:before")
    cp = run_cli("reload", "--runtime-dir", px.runtime_dir, timeout=90)
    assert cp.returncode == 0, cp.stderr
    end = time.monotonic() + 20
    reply = None
    while reply is None and time.monotonic() < end:
        try:
            reply = ask(a, port, b"after", timeout=0.5)
        except socket.timeout:
            pass
    assert reply is not None and reply.startswith(b"echo:after")
    a.close()

"""Thrift peers: Python code generated at test time by Debian's thrift compiler from a
small IDL, servers from the `thrift` package in threads, and thrift_proxy configs."""
from __future__ import annotations

import importlib
import subprocess
import sys
import threading

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol, TBinaryProtocolFactory
from thrift.protocol.TCompactProtocol import TCompactProtocol, TCompactProtocolFactory
from thrift.protocol.THeaderProtocol import THeaderProtocol, THeaderProtocolFactory
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.server.TServer import TThreadedServer
from thrift.transport import TSocket
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID
from thrift.transport.TTransport import (TBufferedTransport, TBufferedTransportFactory,
                                         TFramedTransport, TFramedTransportFactory)

from harness import bootstrap, cluster, free_port, wait_port

THRIFT = "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.ThriftProxy"
IDL = """
namespace py calc
exception Oops { 1: string why }
service Calc {
  i32 add(1: i32 a, 2: i32 b) throws (1: Oops oops),
  void ping(),
  oneway void fire(1: string what),
  string echo(1: string s),
}
"""
# (transport, protocol) pairs a client and server can agree on
MODES = [("framed", "binary"), ("framed", "compact"), ("unframed", "binary"),
         ("unframed", "compact"), ("header", "binary"), ("header", "compact")]


@pytest.fixture(scope="session")
def calc(tmp_path_factory):
    """The generated `calc` package (Calc service and ttypes)."""
    out = tmp_path_factory.mktemp("gen")
    (out / "calc.thrift").write_text(IDL)
    subprocess.run(["thrift", "--gen", "py", "-out", str(out), str(out / "calc.thrift")], check=True)
    sys.path.insert(0, str(out))
    try:
        return (importlib.import_module("calc.Calc"), importlib.import_module("calc.ttypes"))
    finally:
        sys.path.remove(str(out))


class Handler:
    def __init__(self, name: str, ttypes):
        self.name, self.ttypes = name, ttypes
        self.fired: list[str] = []
        self.fired_event = threading.Event()

    def add(self, a, b):
        if a < 0:
            raise self.ttypes.Oops(why="negative %d" % a)
        return a + b

    def ping(self):
        pass

    def fire(self, what):
        self.fired.append(what)
        self.fired_event.set()

    def echo(self, s):
        return "%s:%s" % (self.name, s)


def _factories(transport: str, protocol: str):
    if transport == "header":
        return TBufferedTransportFactory(), THeaderProtocolFactory()
    tf = TFramedTransportFactory() if transport == "framed" else TBufferedTransportFactory()
    return tf, TCompactProtocolFactory() if protocol == "compact" else TBinaryProtocolFactory()


@pytest.fixture
def thrift_server(calc):
    """`thrift_server(transport, protocol, name)` -> (port, handler): a TThreadedServer."""
    Calc, ttypes = calc

    def make(transport: str, protocol: str, name: str = "s1"):
        handler = Handler(name, ttypes)
        port = free_port()
        tf, pf = _factories(transport, protocol)
        server = TThreadedServer(Calc.Processor(handler), TSocket.TServerSocket("127.0.0.1", port),
                                 tf, pf, daemon=True)
        threading.Thread(target=server.serve, daemon=True).start()
        wait_port(port)
        return port, handler
    return make


def client(calc, port: int, transport: str, protocol: str, service: str | None = None):
    """A connected Calc.Client and its transport (close it when done)."""
    Calc, _ = calc
    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(10000)
    if transport == "header":
        sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        proto = THeaderProtocol(sock, [THeaderClientType.HEADERS], sub)
        trans = proto.trans
    else:
        trans = TFramedTransport(sock) if transport == "framed" else TBufferedTransport(sock)
        proto = (TCompactProtocol if protocol == "compact" else TBinaryProtocol)(trans)
    if service:
        proto = TMultiplexedProtocol(proto, service)
    trans.open()
    return Calc.Client(proto), trans


def thrift_bootstrap(port: int, admin_port: int, routes: list, clusters: dict,
                     **thrift) -> dict:
    """One listener with thrift_proxy (AUTO transport and protocol unless given)."""
    cfg = dict({"@type": THRIFT, "stat_prefix": "th",
                "route_config": {"name": "routes", "routes": routes}}, **thrift)
    lst = {"name": "thrift", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.thrift_proxy",
                                           "typed_config": cfg}]}]}
    return bootstrap([lst], [cluster(n, [("127.0.0.1", p)]) for n, p in clusters.items()], admin_port)


def route(cluster_name: str, **match) -> dict:
    return {"match": match or {"method_name": ""}, "route": {"cluster": cluster_name}}

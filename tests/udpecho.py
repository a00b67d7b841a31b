"""Real UDP peers for the udp_proxy tests: an echo service and a small DNS server
(dnslib), each on its own thread and 127.0.0.1 port."""
from __future__ import annotations

import socket
import threading


class UdpEcho:
    """Answers each datagram with b"echo:" + data + b" from ip:port" (the sender as seen
    here, so a test can tell sessions apart); b"silent" gets no answer, b"big:N" an
    answer of N bytes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.senders: list = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            self.senders.append(addr)
            if data == b"silent":
                continue
            if data.startswith(b"big:"):
                self.sock.sendto(b"b" * int(data[4:]), addr)
                continue
            self.sock.sendto(b"echo:" + data + b" from " + ("%s:%d" % addr).encode(), addr)

    def stop(self) -> None:
        self._stop = True
        self.sock.close()


class DnsServer:
    """A dnslib DNS server over UDP answering A queries from `records` (name -> ip)."""

    def __init__(self, records: dict):
        from dnslib import QTYPE, RR, A
        from dnslib.server import BaseResolver, DNSServer

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                reply = request.reply()
                name = str(request.q.qname).rstrip(".")
                if request.q.qtype == QTYPE.A and name in records:
                    reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(records[name]), ttl=30))
                else:
                    reply.header.rcode = 3      # NXDOMAIN
                return reply

        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server = DNSServer(Resolver(), port=self.port, address="127.0.0.1",
                                logger=_QuietLogger())
        self.server.start_thread()

    def stop(self) -> None:
        self.server.stop()


class _QuietLogger:
    def __getattr__(self, name):
        return lambda *a, **k: None

"""TCP health check (HealthCheck.tcp_health_check): connect, write `send`, and pass
once every `receive` payload arrived, in order (Envoy's fuzzy match: other bytes may
sit between them). No `receive`: a connect is enough. With reuse_connection the
connection stays open between checks."""
from __future__ import annotations

import binascii

from proxyd.upstream.health_check import ACTIVE, NETWORK, SUCCESS
from proxyd.upstream.health_check._conn import connect


def _payload(p) -> bytes:
    if p.WhichOneof("payload") == "text":
        return binascii.unhexlify(p.text)
    return p.binary


def fuzzy_match(data: bytes, wanted: list) -> bool:
    pos = 0
    for w in wanted:
        i = data.find(w, pos)
        if i < 0:
            return False
        pos = i + len(w)
    return True


class TcpProbe:
    def __init__(self, settings, ip: str, port: int):
        hc = settings.msg.tcp_health_check
        self.ip, self.port = ip, port
        self.reuse = settings.reuse_connection
        self.send = _payload(hc.send) if hc.HasField("send") else b""
        self.receive = [_payload(r) for r in hc.receive]
        self.sock = None

    def check(self) -> int:
        try:
            if self.sock is None:
                self.sock = connect(self.ip, self.port)
            if self.send:
                self.sock.sendall(self.send)
            if self.receive:
                buf = b""
                while not fuzzy_match(buf, self.receive):
                    data = self.sock.recv(65536)
                    if not data:
                        self.close()
                        return ACTIVE if buf else NETWORK
                    buf += data
        except OSError:
            self.close()
            return NETWORK
        if not self.reuse:
            self.close()
        return SUCCESS

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

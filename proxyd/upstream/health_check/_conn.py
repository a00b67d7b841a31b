"""Connections for health-check probes: gevent sockets to an IP (no DNS), closed on
any error; the caller's gevent.Timeout bounds every call."""
from __future__ import annotations

import socket

from gevent import socket as gsocket


def connect(ip: str, port: int):
    sock = gsocket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.connect((ip, port))
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class H2Client:
    """One HTTP/2 client connection (jh2) for HTTP/2 and gRPC health checks: one
    request at a time, answered with (status, headers, body, trailers)."""

    def __init__(self, sock, authority: str):
        from jh2.config import H2Configuration
        from jh2.connection import H2Connection
        self.sock = sock
        self.authority = authority
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="latin-1"))
        self.conn.initiate_connection()
        self._flush()
        self.closed = False

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, headers: list, body: bytes = b""):
        from jh2 import events as ev
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", self.authority),
                (":path", path)] + headers
        self.conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self._flush()
        status, rheaders, chunks, trailers = 0, [], [], []
        while True:
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
                raise ConnectionError("connection closed")
            for e in self.conn.receive_data(data):
                if isinstance(e, ev.ResponseReceived) and e.stream_id == sid:
                    rheaders = [(k if isinstance(k, str) else k.decode("latin-1"),
                                 v if isinstance(v, str) else v.decode("latin-1"))
                                for k, v in e.headers]
                    for k, v in rheaders:
                        if k == ":status":
                            status = int(v)
                elif isinstance(e, ev.TrailersReceived) and e.stream_id == sid:
                    trailers = [(k if isinstance(k, str) else k.decode("latin-1"),
                                 v if isinstance(v, str) else v.decode("latin-1"))
                                for k, v in e.headers]
                elif isinstance(e, ev.DataReceived) and e.stream_id == sid:
                    chunks.append(e.data)
                    self.conn.acknowledge_received_data(e.flow_controlled_length, sid)
                elif isinstance(e, ev.StreamReset) and e.stream_id == sid:
                    raise ConnectionError("stream reset")
                elif isinstance(e, ev.ConnectionTerminated):
                    self.closed = True
                    raise ConnectionError("GOAWAY")
                elif isinstance(e, ev.StreamEnded) and e.stream_id == sid:
                    self._flush()
                    return status, rheaders, b"".join(chunks), trailers
            self._flush()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

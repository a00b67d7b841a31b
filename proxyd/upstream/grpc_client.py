"""Envoy's `envoy_grpc` client: gRPC calls from a worker to a named cluster, over the
async client's HTTP/2 streams (`proxyd/upstream/async_client.py`), so through the
cluster's own HTTP/2 pool, TLS and stats. No grpcio here: workers are gevent processes.

    client = GrpcClient.from_config(grpc_service_msg, cluster_manager)
    reply = client.unary("/envoy.service.auth.v3.Authorization/Check", request, CheckResponse)
    s = client.stream("/pkg.Svc/Bidi", Reply); s.send(msg); s.recv(); s.close_send()

Failures raise `GrpcError(status, message)`: the peer's grpc-status, or the status Envoy's
gRPC client gives a local failure (UNAVAILABLE for no cluster, no host, a connect
failure or a reset; DEADLINE_EXCEEDED for the timeout; INTERNAL for a malformed
response; an HTTP status other than 200 mapped as gRPC maps it).
"""
from __future__ import annotations

import struct
from urllib.parse import unquote

from proxyd.http import grpc
from proxyd.upstream import async_client as ac
from proxyd.upstream.async_client import AsyncClient, AsyncClientError

_PREFIX = struct.Struct(">BI")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_STATUS_OF = {ac.TIMEOUT: grpc.DEADLINE_EXCEEDED, ac.PROTOCOL_ERROR: grpc.INTERNAL,
              ac.TOO_LARGE: 8}  # RESOURCE_EXHAUSTED


class GrpcError(Exception):
    def __init__(self, status: int, message: str = ""):
        super().__init__("gRPC status %d%s" % (status, ": " + message if message else ""))
        self.status = status
        self.message = message


def _error(e: AsyncClientError) -> GrpcError:
    return GrpcError(_STATUS_OF.get(e.reason, grpc.UNAVAILABLE), str(e))


def _duration(d) -> float:
    return d.seconds + d.nanos / 1e9


def frame(msg) -> bytes:
    data = msg.SerializeToString()
    return _PREFIX.pack(0, len(data)) + data


class GrpcClient:
    """Calls to one cluster (a GrpcService's envoy_grpc)."""

    def __init__(self, cluster_manager, cluster_name: str, authority: str | None = None,
                 timeout: float | None = None, initial_metadata=()):
        self.http = AsyncClient(cluster_manager)
        self.cluster_name = cluster_name
        self.authority = authority or cluster_name
        self.timeout = timeout
        self.initial_metadata = list(initial_metadata)

    @classmethod
    def from_config(cls, grpc_service, cluster_manager, default_timeout: float | None = None):
        """From an envoy.config.core.v3.GrpcService with envoy_grpc; its `timeout`
        (when set) is each call's deadline, else `default_timeout`."""
        if grpc_service.WhichOneof("target_specifier") != "envoy_grpc":
            raise ValueError("only envoy_grpc gRPC services are supported")
        eg = grpc_service.envoy_grpc
        timeout = (_duration(grpc_service.timeout) if grpc_service.HasField("timeout")
                   else default_timeout)
        md = [(h.key.lower(), h.value) for h in grpc_service.initial_metadata]
        return cls(cluster_manager, eg.cluster_name, eg.authority or None, timeout, md)

    def _headers(self, timeout, metadata) -> list:
        h = [("content-type", "application/grpc"), ("te", "trailers")]
        if timeout:
            h.append(("grpc-timeout", grpc.format_timeout(timeout)))
        h.extend(self.initial_metadata)
        h.extend((k.lower(), v) for k, v in metadata)
        return h

    def stream(self, method: str, response_type, timeout: float | None = -1.0,
               metadata=()) -> "GrpcStream":
        """A streaming call; `method` is "/package.Service/Method". `timeout` -1: the
        client's; None or 0: none."""
        if timeout == -1.0:
            timeout = self.timeout
        try:
            s = self.http.start_stream(self.cluster_name, method, self._headers(timeout, metadata),
                                       timeout, self.authority)
        except AsyncClientError as e:
            raise _error(e) from None
        return GrpcStream(s, response_type)

    def unary(self, method: str, request, response_type, timeout: float | None = -1.0,
              metadata=()):
        """Send `request`, return the one response message (or raise GrpcError)."""
        s = self.stream(method, response_type, timeout, metadata)
        try:
            s.send(request, end_stream=True)
            reply = s.recv()
            if reply is None:
                s.finish()
                raise GrpcError(grpc.INTERNAL, "no response message")
            while s.recv() is not None:   # a unary call has one; read to the status
                pass
            s.finish()
            return reply
        finally:
            s.close()


class GrpcStream:
    def __init__(self, s, response_type):
        self._s = s
        self._type = response_type
        self._buf = bytearray()
        self._checked = False
        self.status: int | None = None
        self.message = ""
        self.trailing_metadata = None
        self.initial_metadata = None

    def send(self, msg, end_stream: bool = False) -> None:
        try:
            self._s.send(frame(msg), end_stream)
        except AsyncClientError as e:
            raise _error(e) from None

    def close_send(self) -> None:
        try:
            self._s.send(b"", True)
        except AsyncClientError as e:
            raise _error(e) from None

    def _head(self) -> None:
        if self._checked:
            return
        try:
            status, headers = self._s.response_headers()
        except AsyncClientError as e:
            raise _error(e) from None
        self._checked = True
        self.initial_metadata = headers
        if status != 200:
            self.status = grpc.status_from_http(status)
            self._s.close()
            raise GrpcError(self.status, "upstream answered HTTP %d" % status)
        ct = headers.get("content-type") or ""
        if not ct.startswith("application/grpc") and self._s.trailers is None:
            self._s.close()
            raise GrpcError(grpc.INTERNAL, "content-type %r is not gRPC" % ct)

    def recv(self):
        """The next response message, or None when the server has finished (then
        `status` is set; a non-OK status raises GrpcError)."""
        self._head()
        buf = self._buf
        while True:
            if len(buf) >= 5:
                flag, n = _PREFIX.unpack_from(buf)
                if n > MAX_MESSAGE_BYTES:
                    self._s.close()
                    raise GrpcError(8, "message of %d bytes" % n)
                if len(buf) >= 5 + n:
                    if flag:
                        self._s.close()
                        raise GrpcError(grpc.INTERNAL, "compressed message without encoding")
                    data = bytes(buf[5:5 + n])
                    del buf[:5 + n]
                    msg = self._type()
                    msg.ParseFromString(data)
                    return msg
            try:
                data = self._s.recv_data()
            except AsyncClientError as e:
                raise _error(e) from None
            if data is None:
                if buf:
                    raise GrpcError(grpc.INTERNAL, "truncated message")
                self.finish()
                return None
            buf += data

    def finish(self) -> int:
        """The call's status from the trailers; raises GrpcError unless OK."""
        if self.status is None:
            t = self._s.trailers
            if t is None:
                self.status, self.message = grpc.INTERNAL, "no grpc-status"
            else:
                self.trailing_metadata = t
                v = t.get("grpc-status")
                self.status = int(v) if v is not None and v.isdigit() else grpc.UNKNOWN
                self.message = unquote(t.get("grpc-message") or "")
        if self.status != grpc.OK:
            raise GrpcError(self.status, self.message)
        return self.status

    def close(self) -> None:
        """Cancel the call unless it is over."""
        self._s.close()

"""Protocol-neutral request/response heads and the per-stream record (StreamInfo).

Codecs (HTTP/1.1, HTTP/2) produce and consume these; HTTP filters, the router, access
logs and tracing read them. Nothing here does I/O.
"""
from __future__ import annotations

import time

from proxyd.http.headers import Headers


class _HeaderMap:
    """A head read and written like Envoy's header map: pseudo-headers (`:path`,
    `:status`, ...) are the head's attributes, other names its `headers`."""
    __slots__ = ()
    _PSEUDO: dict = {}
    _CHUNKED_WITHOUT_LENGTH = False

    def get(self, name: str, default=None):
        attr = self._PSEUDO.get(name)
        if attr is not None:
            v = getattr(self, attr)
            return default if v is None else str(v)
        return self.headers.get(name, default)

    def set(self, name: str, value: str) -> None:
        attr = self._PSEUDO.get(name)
        if attr is None:
            self.headers.set(name, value)
            if name == "content-length":
                self.content_length = int(value)
        else:
            setattr(self, attr, int(value) if attr == "status" else value)

    def add(self, name: str, value: str) -> None:
        self.headers.add(name, value)

    def remove(self, name: str) -> None:
        """Removing content-length also drops the framing it gave (the codec re-frames)."""
        self.headers.remove(name)
        if name == "content-length" and self.content_length is not None:
            if self._CHUNKED_WITHOUT_LENGTH and self.content_length:
                self.chunked = True   # a request body keeps going upstream, chunked
            self.content_length = None

    def get_all(self, name: str) -> list:
        return self.headers.get_all(name)

    def __contains__(self, name: str) -> bool:
        return name in self._PSEUDO or name in self.headers


class RequestHead(_HeaderMap):
    _PSEUDO = {":method": "method", ":path": "path", ":authority": "authority",
               ":scheme": "scheme"}
    _CHUNKED_WITHOUT_LENGTH = True
    __slots__ = ("method", "path", "authority", "scheme", "version", "headers",
                 "keep_alive", "expect_continue", "chunked", "content_length", "upgrade")

    def __init__(self, method: str, path: str, authority: str, scheme: str, version: str,
                 headers: Headers):
        self.method = method
        self.path = path            # origin-form target, query included
        self.authority = authority  # Host header (HTTP/1) or :authority (HTTP/2)
        self.scheme = scheme
        self.version = version      # "HTTP/1.0", "HTTP/1.1", "HTTP/2"
        self.headers = headers
        self.keep_alive = True
        self.expect_continue = False
        self.chunked = False
        self.content_length: int | None = None
        # an HTTP/1.1 upgrade the codec saw (the Upgrade value, or "CONNECT"): the bytes
        # after the head belong to the upgraded protocol, not to a next request
        self.upgrade: str | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead(_HeaderMap):
    _PSEUDO = {":status": "status"}
    __slots__ = ("status", "reason", "version", "headers", "keep_alive", "chunked",
                 "content_length")

    def __init__(self, status: int, headers: Headers, reason: str = "", version: str = "HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None


class StreamInfo:
    """What happened to one request; the access log and tracer read it after the stream ends.

    Times are `time.monotonic()` seconds except `start_time` (unix seconds, for
    %START_TIME%). Durations are derived by the formatter, so the hot path only stamps.
    """
    __slots__ = (
        "start_time", "start_mono", "request_end_mono", "upstream_start_mono",
        "response_start_mono", "end_mono", "protocol", "request", "response",
        "response_trailers", "response_code", "response_code_details", "response_flags",
        "bytes_received", "bytes_sent", "upstream_host", "upstream_cluster",
        "upstream_local_address", "downstream_remote_address", "downstream_local_address",
        "downstream_direct_remote_address",
        "route_name", "connection_id", "request_id", "is_health_check", "trace",
        "attempt_count",
        "_dynamic_metadata", "_filter_state",
    )

    def __init__(self, connection_id: int, downstream_remote_address: str,
                 downstream_local_address: str, protocol: str,
                 downstream_direct_remote_address: str | None = None):
        self.start_time = time.time()
        self.start_mono = time.monotonic()
        self.request_end_mono: float | None = None     # last request byte received
        self.upstream_start_mono: float | None = None  # request sent upstream
        self.response_start_mono: float | None = None  # first response byte from upstream
        self.end_mono: float | None = None             # last response byte sent
        self.protocol = protocol
        self.request: RequestHead | None = None
        self.response: ResponseHead | None = None
        self.response_trailers: Headers | None = None
        self.response_code = 0                         # 0: nothing was sent downstream
        self.response_code_details = ""
        self.response_flags: list[str] = []            # Envoy short flags: "NR", "UF", "UT", ...
        self.bytes_received = 0                        # request body bytes
        self.bytes_sent = 0                            # response body bytes
        self.upstream_host: str | None = None          # "ip:port"
        self.upstream_cluster: str | None = None
        self.upstream_local_address: str | None = None
        self.downstream_remote_address = downstream_remote_address
        # the physical peer (differs when proxy_protocol supplied the remote address)
        self.downstream_direct_remote_address = downstream_direct_remote_address \
            or downstream_remote_address
        self.downstream_local_address = downstream_local_address
        self.route_name: str | None = None
        self.connection_id = connection_id
        self.request_id: str | None = None
        self.is_health_check = False
        self.attempt_count = 0                         # upstream attempts (retries + 1)
        self.trace = None                              # tracing span context, when traced
        self._dynamic_metadata = None
        self._filter_state = None

    @classmethod
    def for_connection(cls, conn, protocol):
        """A StreamInfo for a request or session on downstream connection `conn` (a
        listener's DownstreamConnection or a network filter chain's view of one): its
        addresses, and for an L4 session the metadata its listener filters set."""
        down = getattr(conn, "downstream", conn)
        info = cls(conn.id, conn.remote_address, conn.local_address, protocol,
                   getattr(down, "direct_remote_address", None))
        md = getattr(down, "dynamic_metadata", None)
        if md and protocol is None:
            info._dynamic_metadata = {k: dict(v) for k, v in md.items()}
        return info

    @property
    def dynamic_metadata(self) -> dict:
        """Envoy's dynamic metadata: namespace (a filter's name) -> {key: value};
        %DYNAMIC_METADATA(ns:key)% in access logs."""
        d = self._dynamic_metadata
        if d is None:
            d = self._dynamic_metadata = {}
        return d

    def set_dynamic_metadata(self, namespace: str, values: dict) -> None:
        self.dynamic_metadata.setdefault(namespace, {}).update(values)

    @property
    def filter_state(self) -> dict:
        """Envoy's filter state: name -> object shared by the stream's filters;
        %FILTER_STATE(name)% in access logs (str() of the object, or its serialize())."""
        d = self._filter_state
        if d is None:
            d = self._filter_state = {}
        return d

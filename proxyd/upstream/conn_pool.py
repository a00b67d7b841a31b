"""The protocol-neutral upstream connection-pool interface (Envoy's
`Http::ConnectionPool::Instance` and the codec client's request/response stream).

A pool of either protocol hands out one `UpstreamStream` per request with `new_stream()`;
the router's `UpstreamRequest` drives it without knowing whether HTTP/1.1 or HTTP/2 is
under it:

    us = pool.new_stream()                        # UpstreamConnectError, Overflow
    us.encode_headers(request, headers, end)      # StreamReset
    us.encode_data(chunk, end) / us.encode_trailers(trailers)
    kind, *payload = us.next_event()              # HEAD, DATA, TRAILERS, END; StreamReset,
                                                  # UpstreamProtocolError
    us.reset()                                    # abandon it (timeout, client gone)
    us.done()                                     # the exchange is over: free the slot

The response is normalised by the codec client: interim 1xx heads are dropped (proxyd
answers 100-continue itself), the body of a HEAD request, 204 or 304 is dropped, and an
HTTP/2 DATA frame is acknowledged upstream when the next event is asked for, i.e. after
the router handed the previous one downstream (so a slow client throttles the upstream
at its window). Trailers end the response; END follows them.

Implementations: `proxyd/upstream/codec_client_http1.py` (one exchange at a time on a
pooled keep-alive connection from `Http1Pool`) and `proxyd/upstream/codec_client_http2.py`
(a stream on a multiplexed connection from `Http2Pool`). The pools keep their own
lower-level API (`Http1Pool.acquire()/release(conn)` for raw connections, as tcp_proxy
uses; `Http2Pool.new_stream()`).

Nothing here imports the rest of proxyd.
"""
from __future__ import annotations

from typing import Protocol

# response events, as next_event() returns them (the values of the HTTP/1 codec's own
# events, so its DATA events pass through as they are)
HEAD = 0      # (HEAD, ResponseHead, end_stream)
DATA = 1      # (DATA, bytes)
END = 2       # (END, None)
TRAILERS = 3  # (TRAILERS, Headers): the response ends with them

CONNECTION_GONE = -1  # StreamReset code: the connection closed under the stream


class StreamReset(Exception):
    """The upstream ended the stream before its response was complete: an HTTP/2
    RST_STREAM (`code` is its error code) or the connection closing (CONNECTION_GONE).
    `replayable`: nothing of the request was processed upstream (a refused stream, or a
    reused keep-alive connection closed before any response byte), so a bodiless request
    may be sent again on a fresh connection."""

    def __init__(self, code: int = CONNECTION_GONE, replayable: bool = False):
        super().__init__(code)
        self.code = code
        self.replayable = replayable


class UpstreamProtocolError(Exception):
    """The upstream's response broke the protocol (502 UPE)."""


class UpstreamStream(Protocol):
    """One request/response exchange with an upstream host."""

    multiplexed: bool           # request body and response may interleave (HTTP/2)
    local_address: str | None   # %UPSTREAM_LOCAL_ADDRESS%
    events: object              # truthy while next_event() has something without waiting
                                # (a deque: the hot path reads it instead of pending())

    def encode_headers(self, request, headers, end_stream: bool) -> None:
        """Send the request head: `request` is the RequestHead (method, path, authority,
        framing), `headers` the Headers the router prepared for the upstream."""

    def encode_data(self, data: bytes, end_stream: bool) -> None: ...

    def encode_trailers(self, trailers) -> None: ...

    def next_event(self) -> tuple:
        """The next response event (blocks the calling greenlet)."""

    def pending(self) -> bool:
        """Whether another event is ready without waiting (the caller flushes
        downstream when none is)."""

    def interrupt(self, exc: BaseException) -> None:
        """Have a waiting next_event() raise `exc` (a request pump saw the client go)."""

    def reset(self, cancel: bool = True) -> None:
        """Abandon the exchange; idempotent. `cancel`: the downstream went away (rather
        than a timeout or a retry), which HTTP/1 counts as upstream_rq_tx_reset."""

    def done(self) -> None:
        """The exchange is over (or abandoned): release what it holds; idempotent."""


class ConnPool(Protocol):
    """A per-worker, per-host pool of upstream connections of one protocol."""

    def new_stream(self) -> UpstreamStream:
        """A stream ready for encode_headers (raises UpstreamConnectError when the host
        cannot be reached, Overflow when a circuit breaker refuses)."""

    def close_idle(self) -> None: ...

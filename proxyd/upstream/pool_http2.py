"""Per-worker, per-host multiplexed HTTP/2 upstream pool.

Streams share a connection up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS (until a new
connection's SETTINGS arrive: the host's last advertised value, else 100, the RFC's
recommended floor) and while at least half of its receive window is free (a client
that stops reading holds what its stream took, so one stalled client cannot hold up
the others); a full pool opens another connection. A GOAWAY takes the connection out of the pool at once, so new streams go
to a fresh connection, while streams at or below its last_stream_id finish on it.

The connections and their streams (the codec client) are in
`proxyd/upstream/codec_client_http2.py`; `new_stream()` is the ConnPool interface of
`proxyd/upstream/conn_pool.py`.
"""
from __future__ import annotations

from gevent.event import AsyncResult

from proxyd.http.codec import http2 as h2c
from proxyd.proto import unpack
from proxyd.upstream.codec_client_http2 import (UNSETTLED_MAX_STREAMS, Http2ClientConnection,
                                                Http2Stream)
from proxyd.upstream.resource_manager import Overflow


# What one upstream stream may receive ahead of its client (its window) unless the
# cluster sets initial_stream_window_size: Envoy's per-stream buffer limit (the default
# per_connection_buffer_limit_bytes). The response DATA of a stream whose client stopped
# reading waits in the worker, so this bounds what each such stream costs; the
# connection window (16 MiB) stays, so such streams hold a share of it, not all of it.
UPSTREAM_STREAM_WINDOW = 1024 * 1024


def _upstream_options(msg) -> h2c.Http2Options:
    opts = h2c.Http2Options(msg)
    if msg is None or not msg.HasField("initial_stream_window_size"):
        opts.initial_stream_window_size = UPSTREAM_STREAM_WINDOW
    return opts


UPSTREAM_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster_common_http_options(config):
    """The cluster's HttpProtocolOptions.common_http_protocol_options (idle_timeout,
    max_stream_duration, max_requests_per_connection), or None."""
    any_msg = config.typed_extension_protocol_options.get(UPSTREAM_HTTP_OPTIONS)
    if any_msg is None:
        return None
    opts = unpack(any_msg)
    return opts.common_http_protocol_options \
        if opts.HasField("common_http_protocol_options") else None


def cluster_http2_options(config):
    """(mode, Http2Options) from a Cluster's typed_extension_protocol_options
    (envoy.extensions.upstreams.http.v3.HttpProtocolOptions) or its deprecated
    http2_protocol_options: mode is "h2" (always), "downstream" (same protocol as the
    downstream request) or None (HTTP/1.1)."""
    any_msg = config.typed_extension_protocol_options.get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    if any_msg is not None:
        opts = unpack(any_msg)
        which = opts.WhichOneof("upstream_protocol_options")
        if which == "explicit_http_config":
            e = opts.explicit_http_config
            if e.WhichOneof("protocol_config") == "http2_protocol_options":
                return "h2", _upstream_options(e.http2_protocol_options)
        elif which == "use_downstream_protocol_config":
            d = opts.use_downstream_protocol_config
            return "downstream", _upstream_options(
                d.http2_protocol_options if d.HasField("http2_protocol_options") else None)
        return None, None
    if config.HasField("http2_protocol_options"):
        return "h2", _upstream_options(config.http2_protocol_options)
    return None, None


class Http2Pool:
    __slots__ = ("host", "cluster", "options", "conns", "_connecting", "peer_max_streams")

    def __init__(self, host, cluster, options: h2c.Http2Options):
        self.host = host
        self.cluster = cluster
        self.options = options
        self.conns: list[Http2ClientConnection] = []
        self._connecting: AsyncResult | None = None
        self.peer_max_streams = UNSETTLED_MAX_STREAMS

    def new_stream(self) -> Http2Stream:
        """The ConnPool interface: a stream on a connection with room, within the
        cluster's max_requests (raises Overflow, or UpstreamConnectError)."""
        cluster = self.cluster
        requests = cluster.resources.requests
        if not requests.can_create():
            cluster.stats.upstream_rq_active_overflow.inc()
            raise Overflow()
        requests.inc()
        try:
            return Http2Stream(self._pick(), requests)
        except BaseException:
            requests.dec()
            raise

    def _pick(self) -> Http2ClientConnection:
        while True:
            for c in self.conns:
                if c.available:
                    return c
            pending = self._connecting
            if pending is not None:
                c = pending.get()  # re-raises the connect error for every waiter
                if c.available:
                    return c
                continue
            pending = self._connecting = AsyncResult()
            try:
                c = Http2ClientConnection(self.cluster.connect(self.host), self)
            except Exception as e:
                pending.set_exception(e)
                raise
            finally:
                self._connecting = None
            self.conns.append(c)
            pending.set(c)
            return c

    def retire(self, conn) -> None:
        """No new streams on `conn` (GOAWAY, closed, ids exhausted)."""
        try:
            self.conns.remove(conn)
        except ValueError:
            pass

    def close_idle(self) -> None:
        for c in list(self.conns):
            if not c.streams:
                self.retire(c)
                c.close()


def create(config, ctx):
    """Registry entry for HttpProtocolOptions: clusters read it through
    `cluster_http2_options`; this returns the HTTP/2 options it carries, if any."""
    e = config.explicit_http_config
    if e.HasField("http2_protocol_options"):
        return h2c.Http2Options(e.http2_protocol_options)
    return None

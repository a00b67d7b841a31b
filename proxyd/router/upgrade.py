"""HTTP upgrades and CONNECT: whether one is allowed, and the byte tunnel an accepted one
becomes (Envoy's `upgrade_configs` on the HCM and on routes).

- WebSocket (any Upgrade) over HTTP/1.1: after the upstream's 101 went downstream, both
  connections carry the upgraded protocol (`tunnel`): bytes go both ways unparsed, a FIN
  from one side is passed on as a half-close (the other direction goes on), and the
  tunnel ends when both directions ended, on an error, or after the stream idle timeout
  with nothing moving.
- WebSocket over HTTP/2 (RFC 8441 extended CONNECT, `:protocol websocket`, accepted when
  the HCM's http2_protocol_options.allow_connect is set): the HTTP/2 connection turns it
  into an HTTP/1.1 Upgrade request as Envoy's codec does; the upstream's 101 goes down
  as a 200, and the stream's DATA is the tunnel (`relay_stream`), END_STREAM its FIN.
- CONNECT (HTTP/1.1 authority-form, or HTTP/2 without :protocol), routed by
  `connect_matcher`: without a route `connect_config` it is proxied upstream like any
  request (over HTTP/1.1, or as an HTTP/2 CONNECT to an HTTP/2 cluster, whose stream
  then carries the tunnel: `relay_upstream_stream`), and a 2xx answer starts the
  tunnel; with one, proxyd
  terminates it: a new TCP connection to the cluster's host (`TcpUpstream`), a 200
  downstream once it is up, then the payload both ways (`connect_config.allow_post`
  does the same for POST, with the request body upstream and the upstream's bytes as
  the response body).
"""
from __future__ import annotations

import socket
import time

import gevent

from proxyd.network.splice import PumpError, copy_pump, splice_pump
from proxyd.transport.tls import is_tls
from proxyd.upstream.pool_http1 import UpstreamConnection

RECV_SIZE = 65536


def terminates(route, req) -> bool:
    """Whether the router terminates this request as a CONNECT (route connect_config)."""
    cc = route.connect_config
    return cc is not None and (req.method == "CONNECT" or (cc.allow_post and req.method == "POST"))


class TcpUpstream:
    """A terminated CONNECT's upstream: a new TCP connection to the host (Envoy's TCP
    connection pool), with the part of the UpstreamStream interface the router's tunnel
    uses. Raises UpstreamConnectError as the pools do."""
    __slots__ = ("conn", "stats", "local_address", "events")
    multiplexed = False

    def __init__(self, cluster, host):
        self.stats = cluster.stats
        self.stats.upstream_rq_pending_total.inc()
        self.conn = UpstreamConnection(cluster.connect(host, final=True), host, cluster)
        self.local_address = self.conn.local_address
        self.events = ()

    def detach(self):
        return self.conn.sock, b""

    def reset(self, cancel: bool = True) -> None:
        self.done()

    def done(self, remote: bool = False) -> None:
        """Close; `remote`: the upstream's FIN ended the tunnel (as Envoy counts it)."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            if conn.sock is not None:
                conn.close()
                (self.stats.upstream_cx_destroy_remote if remote
                 else self.stats.upstream_cx_destroy_local).inc()


CONNECT_ERROR = 0xa  # HTTP/2 (RFC 9113 7)


def relay_stream(stream, up, up_rest: bytes, on_up_tx, on_up_rx, close_resets: bool) -> str:
    """A tunnel carried by one HTTP stream (an HTTP/2 CONNECT or extended CONNECT, or a
    POST with allow_post): the stream's request body goes to the upstream socket (its end
    as a FIN), the upstream's bytes come back as the response body (its FIN as the
    stream's end). The stream's own timers (HTTP/2 stream_idle_timeout) watch it; a
    downstream reset raises DownstreamGone. Returns "upstream_closed" or
    "downstream_closed" (whose end came first), or "error" (the upstream reset; the
    stream is reset too). `close_resets`: the upstream is an HTTP connection (a proxied
    CONNECT, an upgrade), whose close Envoy's codec takes as a reset: the stream is reset
    with CONNECT_ERROR and this returns "upstream_reset"."""
    first = []

    def upward() -> None:
        try:
            while True:
                data = stream.read_body()
                if data is None:
                    if not first:
                        first.append("downstream_closed")
                    up.shutdown(socket.SHUT_WR)
                    return
                on_up_tx(len(data))
                up.sendall(data)
        except BaseException:
            # the client went away (or the upstream did): wake the reading side
            try:
                up.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise

    pump = gevent.spawn(upward)
    try:
        try:
            if up_rest:
                on_up_rx(len(up_rest))
                stream.send_data(up_rest, False)
                stream.flush()
            while True:
                data = up.recv(RECV_SIZE)
                if not data:
                    break
                on_up_rx(len(data))
                stream.send_data(data, False)
                stream.flush()
        except OSError:
            stream.reset()
            return "error"
        if close_resets:
            stream.reset(CONNECT_ERROR)
            return "upstream_reset"
        if not first:
            first.append("upstream_closed")
        stream.send_data(b"", True)
        stream.flush()
        pump.join()  # the downstream's end (or its reset, or the stream's idle timeout)
        if pump.exception is not None and not isinstance(pump.exception, OSError):
            raise pump.exception
        return first[0]
    finally:
        if not pump.dead:
            pump.kill(block=False)


def allowed(hcm_upgrades: dict, route_upgrades: dict | None, upgrade: str) -> bool:
    """Envoy's createUpgradeFilterChain: a route that names the type decides (disabled:
    refused; enabled: allowed even if the HCM does not list it); otherwise the HCM's
    upgrade_configs entry for it (case-insensitive), which must exist and be enabled."""
    kind = upgrade.lower()
    if route_upgrades is not None:
        enabled = route_upgrades.get(kind)
        if enabled is not None:
            return enabled
    return hcm_upgrades.get(kind, False)


def tunnel(down, down_rest: bytes, up, up_rest: bytes, idle_timeout: float | None,
           on_down_rx, on_up_rx) -> str:
    """Relay between the downstream and upstream sockets until both directions end.
    `*_rest`: bytes each side sent after its HTTP head (they go first). `on_down_rx(n)`
    / `on_up_rx(n)` count bytes read from each side. Returns why it ended:
    "upstream_closed" or "downstream_closed" (the side whose FIN came first), "error"
    or "idle"."""
    last = [time.monotonic()]

    def down_rx(n: int) -> None:
        last[0] = time.monotonic()
        on_down_rx(n)

    def up_rx(n: int) -> None:
        last[0] = time.monotonic()
        on_up_rx(n)

    def noop() -> None:
        pass

    try:
        if down_rest:
            on_down_rx(len(down_rest))
            up.sendall(down_rest)
        if up_rest:
            on_up_rx(len(up_rest))
            down.sendall(up_rest)
    except OSError:
        return "error"
    # behind network filters (a ChainSocket) the tunnel's bytes go through them too
    pump = copy_pump if (is_tls(down) or is_tls(up) or getattr(down, "through_chain", False)) \
        else splice_pump
    pumps = [gevent.spawn(pump, down, up, down_rx, noop),
             gevent.spawn(pump, up, down, up_rx, noop)]
    why = None
    alive = list(pumps)
    try:
        while alive:
            wait = None
            if idle_timeout:
                wait = max(0.0, last[0] + idle_timeout - time.monotonic())
            done = gevent.wait(alive, timeout=wait, count=1)
            if done:
                for g in done:
                    alive.remove(g)
                    if not g.successful():
                        why = "error"  # a reset on one side: the other cannot go on
                    elif why is None:
                        why = "downstream_closed" if g is pumps[0] else "upstream_closed"
                if why == "error":
                    break
                continue  # one direction ended (its FIN passed on): the other goes on
            if idle_timeout and time.monotonic() - last[0] >= idle_timeout:
                why = "idle"
                break
    finally:
        for g in alive:
            g.kill(block=False)
        gevent.joinall(pumps, timeout=1.0, raise_error=False)
    for p in pumps:
        if p.exception is not None and not isinstance(p.exception, (PumpError, OSError,
                                                                    gevent.GreenletExit)):
            raise p.exception
    return why


def relay_upstream_stream(down_read, down_write, down_end, us) -> str:
    """A tunnel whose upstream side is an HTTP/2 stream (a CONNECT proxied to an HTTP/2
    cluster): `down_read()` gives the downstream's next bytes (None at its end),
    `down_write(data)` / `down_end()` send and end toward it; the upstream stream `us`
    carries DATA both ways, END_STREAM as each side's FIN. Returns "upstream_closed" or
    "downstream_closed" (whose end came first), or "upstream_reset" (the upstream reset
    its stream: StreamReset is not raised, the caller resets the downstream)."""
    from proxyd.http.stream_errors import DownstreamGone
    from proxyd.upstream.conn_pool import DATA, StreamReset
    first = []

    def upward() -> None:
        try:
            while True:
                data = down_read()
                if data is None:
                    if not first:
                        first.append("downstream_closed")
                    us.encode_data(b"", True)
                    return
                us.encode_data(data, False)
        except BaseException as e:  # the client went away: wake the reading side
            us.interrupt(e if isinstance(e, DownstreamGone) else DownstreamGone())
            raise

    pump = gevent.spawn(upward)
    try:
        try:
            while True:
                ev = us.next_event()
                if ev[0] == DATA:
                    down_write(ev[1])
                else:  # its END_STREAM (with trailers or not)
                    break
        except StreamReset:
            return "upstream_reset"
        if not first:
            first.append("upstream_closed")
        down_end()
        pump.join()
        if pump.exception is not None and not isinstance(pump.exception, OSError):
            raise pump.exception
        return first[0]
    finally:
        if not pump.dead:
            pump.kill(block=False)

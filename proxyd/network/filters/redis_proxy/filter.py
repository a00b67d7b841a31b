"""The redis_proxy read filter: decode requests, answer or split them as Envoy's command
splitter does, and write the replies back in request order.

Each request gets a slot in `pending`; a slot is filled when its reply (or Envoy's error
for it) is known, and replies go out from the head while filled, so pipelined replies
keep their order although upstream fragments complete in any order. Replies filled by
one upstream read go out in one write.
"""
from __future__ import annotations

import random
import time
from collections import deque

import gevent

from proxyd.network.filter import ConnectionEvent, FilterStatus
from proxyd.network.filters.redis_proxy import codec, commands
from proxyd.network.filters.redis_proxy.codec import Error, Simple
from proxyd.network.filters.redis_proxy.config import upstream_auth
from proxyd.network.filters.redis_proxy.upstream import UpstreamClient

STOP = FilterStatus.STOP_ITERATION
INVALID_REQUEST = Error(b"invalid request")
NO_UPSTREAM_HOST = Error(b"no upstream host")
UPSTREAM_FAILURE = Error(b"upstream failure")
UPSTREAM_PROTOCOL_ERROR = Error(b"upstream protocol error")
FAULT_ERROR = Error(b"Fault Injected: Error")
NOAUTH = Error(b"NOAUTH Authentication required.")
NOPROTO = Error(b"NOPROTO unsupported protocol version")
PONG = b"+PONG\r\n"
OK = b"+OK\r\n"
_now = time.monotonic


def _hello_fields(proto: int) -> dict:
    """Envoy's HELLO reply (a client that checks `proto` sees the one it asked for)."""
    return {b"server": b"envoy-redis-proxy", b"version": b"6.0.0", b"proto": proto, b"id": 0,
            b"mode": b"standalone", b"role": b"master", b"modules": []}


def _wrong_args(args) -> Error:
    return Error(b"wrong number of arguments for '%s' command" % args[0])


class Request:
    """One downstream request's slot; `reply` is its encoded reply once known."""

    __slots__ = ("proxy", "reply", "stats", "start", "close_after", "delay")

    def __init__(self, proxy):
        self.proxy = proxy
        self.reply = None
        self.stats = None
        self.start = 0.0
        self.close_after = False
        self.delay = 0.0

    def finish(self, reply: bytes, success: bool):
        if self.delay:
            gevent.spawn_later(self.delay, self._finish_late, reply, success)
            self.delay = 0.0
            return None
        stats = self.stats
        if stats is not None:
            (stats.success if success else stats.error).inc()
            d = _now() - self.start
            stats.latency.record(d * 1e6 if self.proxy.config.latency_in_micros else d * 1e3)
        self.reply = reply
        return self.proxy.flush_replies

    def _finish_late(self, reply: bytes, success: bool) -> None:
        self.finish(reply, success)
        self.proxy.flush_replies()


class Forwarded(Request):
    """A request sent to one host as it is; the reply goes downstream as it came, after
    following a MOVED/ASK redirection when `enable_redirection` asks for it."""

    __slots__ = ("raw", "upstream", "redirected")

    def __call__(self, reply):
        if reply is None:
            return self.finish(codec.encode(UPSTREAM_FAILURE), False)
        if reply[:1] == b"-" and self.proxy.config.redirection and not self.redirected:
            if self.proxy.redirect(self, reply):
                return None
        return self.finish(reply, True)


class Fragment:
    """One key's share of a split request (MGET, MSET, DEL, ...)."""

    __slots__ = ("parent", "index", "raw", "upstream", "redirected")

    def __init__(self, parent, index: int):
        self.parent = parent
        self.index = index
        self.redirected = False

    def __call__(self, reply):
        if reply is None:
            return self.parent.child(self.index, UPSTREAM_FAILURE)
        proxy = self.parent.proxy
        if reply[:1] == b"-" and proxy.config.redirection and not self.redirected:
            if proxy.redirect(self, reply):
                return None
        return self.parent.child(self.index, codec.parse(reply)[0])


class Split(Request):
    """A request split into fragments; `merge()` builds the reply once all are in."""

    __slots__ = ("kind", "values", "left")

    def child(self, index: int, value):
        self.values[index] = value
        self.left -= 1
        if self.left:
            return None
        return self.merge()

    def merge(self):
        kind, values, resp3 = self.kind, self.values, self.proxy.resp3
        if kind == "mget":
            out, errors = [], 0
            for v in values:
                if isinstance(v, Error):
                    errors += 1
                elif v is not None and type(v) is not bytes:
                    v = UPSTREAM_PROTOCOL_ERROR
                    errors += 1
                out.append(v)
            return self.finish(codec.encode(out, resp3), errors == 0)
        if kind == "mset":
            errors = sum(1 for v in values if not (isinstance(v, Simple) and v == b"OK"))
            if errors:
                return self.finish(codec.encode(Error(b"finished with %d error(s)" % errors)), False)
            return self.finish(OK, True)
        if kind == "sum":
            errors = sum(1 for v in values if type(v) is not int)
            if errors:
                return self.finish(codec.encode(Error(b"finished with %d error(s)" % errors)), False)
            return self.finish(b":%d\r\n" % sum(values), True)
        # every shard: keys concatenates; others answer with the first error, else the first reply
        errs = [v for v in values if isinstance(v, Error)]
        if errs:
            return self.finish(codec.encode(errs[0]), False)
        if kind == "keys":
            return self.finish(codec.encode([x for v in values if type(v) is list for x in v],
                                            resp3), True)
        return self.finish(codec.encode(values[0], resp3), True)


class Scan(Split):
    """SCAN on one host; the reply's cursor says which host (and where) to go on."""

    __slots__ = ("shard", "hosts")

    def merge(self):
        v = self.values[0]
        if type(v) is not list or len(v) != 2:
            return self.finish(codec.encode(v if isinstance(v, Error)
                                            else UPSTREAM_PROTOCOL_ERROR), False)
        host_cursor, n = int(v[0]), self.hosts
        if host_cursor == 0:
            nxt = 0 if self.shard + 1 == n else self.shard + 1
        else:
            nxt = host_cursor * n + self.shard
        return self.finish(codec.encode([b"%d" % nxt, v[1]], self.proxy.resp3), True)


class Transaction:
    """MULTI ... EXEC (or WATCH ... UNWATCH) on an upstream connection of its own, pinned
    to the first key's host: other clients' commands must not land inside it."""

    __slots__ = ("client",)

    def __init__(self):
        self.client = None


class ProxyFilter:
    def __init__(self, config):
        self.config = config
        self.stats = config.stats
        self.decoder = codec.Decoder()
        self.pending: deque[Request] = deque()
        self.authenticated = not config.auth_required
        self.resp3 = False
        self.closed = False
        self.tx = None
        self.watch = None
        self.connection = None

    # --- ReadFilter ------------------------------------------------------------------
    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.connection = callbacks.connection
        self.connection.add_connection_callbacks(self)

    def on_new_connection(self) -> FilterStatus:
        self.stats.downstream_cx_total.inc()
        self.stats.downstream_cx_active.inc()
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        stats = self.stats
        if data:
            stats.downstream_cx_rx_bytes_total.inc(len(data))
            decoder = self.decoder
            decoder.feed(data)
            try:
                while not self.closed:
                    item = decoder.next_request()
                    if item is None:
                        break
                    stats.downstream_rq_total.inc()
                    stats.downstream_rq_active.inc()
                    self.dispatch(item[0], item[1])
            except codec.ProtocolError:
                stats.downstream_cx_protocol_error.inc()
                self.connection.close()
                return STOP
            self.flush_replies()
        return STOP

    def on_event(self, event: ConnectionEvent) -> None:
        """The downstream closed: replies still to come are dropped."""
        self.closed = True
        self.stats.downstream_cx_active.dec()
        if self.pending:
            self.stats.downstream_rq_active.dec(len(self.pending))
            self.pending.clear()
        for tx in (self.tx, self.watch):
            if tx is not None and tx.client is not None:
                tx.client.close()

    # --- replies -----------------------------------------------------------------------
    def flush_replies(self) -> None:
        pending = self.pending
        if self.closed or not pending or pending[0].reply is None:
            return
        out = []
        close = False
        n = 0
        while pending and pending[0].reply is not None:
            r = pending.popleft()
            out.append(r.reply)
            n += 1
            if r.close_after:
                close = True
                break
        data = b"".join(out) if n > 1 else out[0]
        self.stats.downstream_rq_active.dec(n)
        self.stats.downstream_cx_tx_bytes_total.inc(len(data))
        connection = self.connection
        connection.write(data)
        if close:
            connection.close()
        elif not pending and connection.draining and self._drain_close_enabled():
            # Envoy's redis drain: close once nothing is outstanding
            self.stats.downstream_cx_drain_close.inc()
            connection.close()

    def _drain_close_enabled(self) -> bool:
        runtime = getattr(self.config.ctx, "runtime", None)
        return runtime is None or runtime.feature_enabled("redis.drain_close_enabled", 100)

    def local(self, reply: bytes, stats=None, success: bool = True) -> None:
        r = Request(self)
        if stats is not None:
            r.stats = stats
            r.start = _now()
        self.pending.append(r)
        r.finish(reply, success)

    def error(self, err: Error, stats=None) -> None:
        self.local(codec.encode(err), stats, False)

    # --- the command splitter --------------------------------------------------------------
    def dispatch(self, args, raw) -> None:
        stats = self.stats
        if args is None:
            stats.invalid_request.inc()
            return self.error(INVALID_REQUEST)
        cmd = args[0].lower().decode("latin-1")
        if cmd == "hello":
            return self.hello(args)
        cs = stats.commands.get(cmd)
        if cs is None and cmd not in commands.LOCAL:
            stats.unsupported_command.inc()
            first = args[1] if len(args) > 1 else b""
            return self.error(Error(b"ERR unknown command '%s', with args beginning with: %s"
                                    % (args[0], first)))
        if len(args) < 2 and cmd not in commands.WITHOUT_ARGS and cmd not in commands.TRANSACTION:
            stats.invalid_request.inc()
            return self.error(INVALID_REQUEST)
        if cmd == "auth":
            return self.auth(args[1:])
        if not self.authenticated:
            return self.error(NOAUTH)
        if cs is None:
            return self.answer_locally(cmd, args)
        if self.tx is not None:
            cs = stats.commands["multi"]  # Envoy counts a transaction's commands under multi
        cs.total.inc()
        for fault in self.config.faults:
            if fault.applies(cmd, getattr(self.config.ctx, "runtime", None)):
                if fault.error:
                    cs.error_fault.inc()
                    return self.error(FAULT_ERROR, cs)
                # Envoy's DelayFaultRequest: the request goes now, its reply is held
                # `delay` after it arrives; later replies on the connection wait behind it.
                cs.delay_fault.inc()
                self.route(cmd, args, raw, cs)
                self.pending[-1].delay = fault.delay
                return None
        self.route(cmd, args, raw, cs)

    def route(self, cmd: str, args, raw, cs) -> None:
        if self.tx is not None and cmd not in ("exec", "discard", "multi"):
            return self.in_transaction(cmd, args, raw, cs)
        if cmd in commands.SIMPLE:
            return self.forward(args, 1, raw, cs)
        if cmd in commands.EVAL:
            if len(args) < 4:
                return self.error(_wrong_args(args), cs)
            return self.forward(args, 3, raw, cs)
        if cmd in commands.OBJECT:
            if len(args) < 3:
                return self.error(_wrong_args(args), cs)
            return self.forward(args, 2, raw, cs)
        if cmd == "mget":
            return self.split("mget", [(args[i], [b"get", args[i]])
                                       for i in range(1, len(args))], cs)
        if cmd == "mset":
            if len(args) % 2 == 0:
                return self.error(_wrong_args(args), cs)
            return self.split("mset", [(args[i], [b"set", args[i], args[i + 1]])
                                       for i in range(1, len(args), 2)], cs)
        if cmd in commands.SUM:
            return self.split("sum", [(args[i], [args[0], args[i]])
                                      for i in range(1, len(args))], cs)
        if cmd in commands.ALL_SHARDS:
            return self.every_shard(cmd, args, cs)
        if cmd in commands.RANDOM_SHARD:
            if cmd == "cluster" and args[1].lower() not in commands.CLUSTER_SUBCOMMANDS:
                return self.error(Error(b"ERR cluster subcommand '%s' is not supported"
                                        % args[1].lower()), cs)
            return self.one_shard(args, cs, None)
        if cmd == "info.shard":
            if not args[1].isdigit():
                return self.error(Error(b"ERR invalid shard_id - must be a numeric shard index"),
                                  cs)
            return self.one_shard([b"info"] + args[2:], cs, int(args[1]))
        if cmd == "scan":
            return self.scan(args, cs)
        return self.transaction(cmd, args, raw, cs)

    # --- one host -------------------------------------------------------------------------
    def forward(self, args, key_index: int, raw, cs) -> None:
        key = args[key_index]
        route, upstream_key = self.config.router.route(key)
        r = Forwarded(self)
        r.stats, r.start, r.redirected = cs, _now(), False
        self.pending.append(r)
        if route is None:
            r.finish(codec.encode(NO_UPSTREAM_HOST), False)
            return
        if upstream_key is not key or raw is None:
            args = list(args)
            args[key_index] = upstream_key
            raw = codec.encode_command(args)
        r.raw, r.upstream = raw, route.upstream
        client = route.upstream.client_for(upstream_key, self.resp3)
        if client is None:
            r.finish(codec.encode(NO_UPSTREAM_HOST), False)
            return
        client.request(raw, r)
        if route.mirrors:
            self.mirror(route, args[0].lower().decode("latin-1"), upstream_key, raw)

    def mirror(self, route, cmd: str, key: bytes, raw: bytes) -> None:
        """Fire and forget to each mirror cluster (request_mirror_policy)."""
        for m in route.mirrors:
            if m.should_mirror(cmd):
                client = m.upstream.client_for(key, self.resp3)
                if client is not None:
                    client.request(raw, _ignore)

    def redirect(self, req, reply: bytes) -> bool:
        """Follow `-MOVED slot host:port` / `-ASK slot host:port` once; False when the
        error is neither (or names no usable address) and goes downstream as it is."""
        parts = reply[1:].split()
        if len(parts) != 3 or parts[0] not in (b"MOVED", b"ASK"):
            return False
        host, _, port = parts[2].rpartition(b":")
        upstream = req.upstream
        cluster = upstream.cluster()
        if cluster is None or not port.isdigit():
            return False
        stats = _redirect_stats(cluster)
        ip, port = host.decode(), int(port)
        client = upstream.pool.client(cluster, upstream.pool.host_at(cluster, ip, port),
                                      self.resp3)
        req.redirected = True
        if parts[0] == b"MOVED":
            upstream.moved(cluster, int(parts[1]), ip, port)
        if parts[0] == b"ASK":
            client.request(codec.encode_command([b"ASKING"]), _ignore)
        client.request(req.raw, req)
        stats[0].inc()
        return True

    # --- several hosts ----------------------------------------------------------------------
    def split(self, kind: str, pieces, cs) -> None:
        """One upstream request per key; `pieces` are (key, command args)."""
        parent = Split(self)
        parent.stats, parent.start, parent.kind = cs, _now(), kind
        parent.values = [None] * len(pieces)
        parent.left = len(pieces)
        self.pending.append(parent)
        router, resp3 = self.config.router, self.resp3
        for i, (key, cmd_args) in enumerate(pieces):
            route, upstream_key = router.route(key)
            client = route.upstream.client_for(upstream_key, resp3) if route is not None else None
            if client is None:
                parent.child(i, NO_UPSTREAM_HOST)
                continue
            if upstream_key is not key:
                cmd_args = list(cmd_args)
                cmd_args[1] = upstream_key
            frag = Fragment(parent, i)
            frag.raw = codec.encode_command(cmd_args)
            frag.upstream = route.upstream
            client.request(frag.raw, frag)
            if route.mirrors:
                self.mirror(route, cmd_args[0].decode("latin-1").lower(), upstream_key, frag.raw)

    def every_shard(self, cmd: str, args, cs) -> None:
        route, _ = self.config.router.route(b"")
        clients = route.upstream.all_clients(self.resp3) if route is not None else []
        if not clients:
            return self.error(NO_UPSTREAM_HOST, cs)
        parent = Split(self)
        parent.stats, parent.start = cs, _now()
        parent.kind = "keys" if cmd == "keys" else "shards"
        parent.values = [None] * len(clients)
        parent.left = len(clients)
        self.pending.append(parent)
        raw = codec.encode_command(args)
        for i, client in enumerate(clients):
            frag = Fragment(parent, i)
            frag.raw, frag.upstream, frag.redirected = raw, route.upstream, True
            client.request(raw, frag)

    def one_shard(self, args, cs, shard) -> None:
        route, _ = self.config.router.route(b"")
        clients = route.upstream.all_clients(self.resp3) if route is not None else []
        if shard is not None and clients and shard >= len(clients):
            return self.error(Error(b"ERR shard_id %d out of range (0-%d)"
                                    % (shard, len(clients) - 1)), cs)
        if not clients:
            return self.error(NO_UPSTREAM_HOST, cs)
        client = clients[shard if shard is not None else random.randrange(len(clients))]
        r = Forwarded(self)
        r.stats, r.start, r.redirected = cs, _now(), True
        r.raw, r.upstream = codec.encode_command(args), route.upstream
        self.pending.append(r)
        client.request(r.raw, r)

    def scan(self, args, cs) -> None:
        """SCAN over every host in turn: the cursor proxyd returns is the host's cursor
        times the number of hosts plus the host's index, so it stays one integer."""
        route, _ = self.config.router.route(b"")
        clients = route.upstream.all_clients(self.resp3) if route is not None else []
        if not clients:
            return self.error(NO_UPSTREAM_HOST, cs)
        try:
            cursor = int(args[1])
        except ValueError:
            return self.error(Error(b"ERR invalid cursor"), cs)
        n = len(clients)
        shard, host_cursor = cursor % n, cursor // n
        parent = Scan(self)
        parent.stats, parent.start = cs, _now()
        parent.kind, parent.values, parent.left = "scan", [None], 1
        parent.shard, parent.hosts = shard, n
        self.pending.append(parent)
        frag = Fragment(parent, 0)
        frag.raw = codec.encode_command([b"scan", b"%d" % host_cursor] + list(args[2:]))
        frag.upstream, frag.redirected = route.upstream, True
        clients[shard].request(frag.raw, frag)

    # --- transactions -----------------------------------------------------------------------
    def transaction(self, cmd: str, args, raw, cs) -> None:
        if cmd == "multi":
            if self.tx is not None:
                return self.error(Error(b"MULTI calls can not be nested"), cs)
            self.tx = Transaction()
            if self.watch is not None:
                self.tx.client, self.watch = self.watch.client, None
                self.tx.client.request(codec.encode_command([b"MULTI"]), _ignore)
            return self.local(OK, cs)
        if cmd in ("exec", "discard"):
            tx = self.tx
            if tx is None:
                return self.error(Error(b"%s without MULTI" % args[0].upper()), cs)
            self.tx = None
            if tx.client is None:
                return self.local(b"*0\r\n" if cmd == "exec" else OK, cs)
            return self._send_pinned(tx.client, args, cs, done=True)
        if cmd == "watch":
            if self.watch is None:
                route, key = self.config.router.route(args[1])
                pinned = self._pinned_client(route, key)
                if pinned is None:
                    return self.error(NO_UPSTREAM_HOST, cs)
                self.watch = Transaction()
                self.watch.client = pinned
            return self._send_pinned(self.watch.client, args, cs)
        # unwatch
        if self.watch is None:
            return self.local(OK, cs)
        w, self.watch = self.watch, None
        return self._send_pinned(w.client, args, cs, done=True)

    def in_transaction(self, cmd: str, args, raw, cs) -> None:
        if cmd not in commands.SIMPLE and cmd not in commands.EVAL:
            return self.error(Error(b"'%s' command is not supported within transaction"
                                    % args[0]), cs)
        tx = self.tx
        key = args[3] if cmd in commands.EVAL else args[1]
        route, upstream_key = self.config.router.route(key)
        if tx.client is None:
            tx.client = self._pinned_client(route, upstream_key)
            if tx.client is None:
                return self.error(NO_UPSTREAM_HOST, cs)
            tx.client.request(codec.encode_command([b"MULTI"]), _ignore)
        self._send_pinned(tx.client, args, cs)

    def _pinned_client(self, route, key):
        if route is None:
            return None
        cluster, host = route.upstream.host_for(key)
        if host is None:
            return None
        return UpstreamClient(cluster, host, self.resp3, upstream_auth(cluster),
                              self.config.op_timeout)

    def _send_pinned(self, client, args, cs, done: bool = False) -> None:
        r = Forwarded(self)
        r.stats, r.start, r.redirected = cs, _now(), True
        r.raw, r.upstream = codec.encode_command(args), None
        self.pending.append(r)
        if done:
            def finished(reply, r=r, client=client):
                out = r(reply)
                gevent.spawn(client.close)
                return out
            client.request(r.raw, finished)
        else:
            client.request(r.raw, r)

    # --- answered here --------------------------------------------------------------------
    def answer_locally(self, cmd: str, args) -> None:
        if cmd == "ping":
            return self.local(PONG)
        if cmd == "echo":
            if len(args) != 2:
                self.stats.invalid_request.inc()
                return self.error(INVALID_REQUEST)
            return self.local(codec.encode(args[1]))
        if cmd == "time":
            t = time.time()
            return self.local(codec.encode([b"%d" % int(t), b"%d" % int(t * 1e6)], self.resp3))
        if cmd == "quit":
            self.local(OK)
            self.pending[-1].close_after = True
            return None
        # client: the connection-setup subcommands clients send are accepted, no others
        sub = args[1].lower()
        if sub in (b"setname", b"setinfo"):
            if len(args) != (3 if sub == b"setname" else 4):
                return self.error(Error(b"ERR wrong number of arguments for 'client|%s' command"
                                        % sub))
            return self.local(OK)
        return self.error(Error(b"ERR CLIENT subcommand '%s' is not supported by the proxy"
                                % args[1]))

    def auth(self, params) -> None:
        config = self.config
        if not config.auth_required:
            if len(params) == 1:
                return self.error(Error(b"ERR Client sent AUTH, but no password is set"))
            return self.error(Error(b"ERR Client sent AUTH, but no username-password pair is set"))
        err = self._check_auth(params)
        if err is not None:
            return self.error(err)
        self.authenticated = True
        self.local(OK)

    def _check_auth(self, params):
        config = self.config
        if len(params) == 1:
            if config.username is None and params[0] in config.passwords:
                return None
            return Error(b"ERR invalid password")
        if len(params) == 2:
            user, password = params
            if user == (config.username or b"default") and password in config.passwords:
                return None
            return Error(b"WRONGPASS invalid username-password pair")
        return Error(b"ERR wrong number of arguments for 'auth' command")

    def hello(self, args) -> None:
        """HELLO [2|3 [AUTH user pass] [SETNAME name]]. Envoy answers only 2 (NOPROTO for
        3, which breaks RESP3 clients such as redis-py 8 by default); proxyd also speaks
        3: later requests go upstream on connections opened with HELLO 3, so the replies
        are Redis' own RESP3 ones, passed through."""
        stats = self.stats
        cs = stats.commands["hello"]
        cs.total.inc()
        proto = 3 if self.resp3 else 2
        if len(args) > 1:
            if args[1] not in (b"2", b"3"):
                stats.downstream_rq_noproto.inc()
                return self.error(NOPROTO, cs)
            proto = int(args[1])
        i = 2
        while i < len(args):
            opt = args[i].lower()
            if opt == b"auth" and i + 2 < len(args):
                if not self.config.auth_required:
                    return self.error(Error(b"ERR Client sent AUTH, but no username-password "
                                            b"pair is set"), cs)
                err = self._check_auth(args[i + 1:i + 3])
                if err is not None:
                    return self.error(err, cs)
                self.authenticated = True
                i += 3
            elif opt == b"setname" and i + 1 < len(args):
                i += 2
            else:
                return self.error(Error(b"ERR Syntax error in HELLO option '%s'" % args[i]), cs)
        if not self.authenticated:
            return self.error(NOAUTH, cs)
        self.resp3 = proto == 3
        self.local(codec.encode(_hello_fields(proto), self.resp3), cs)


def _ignore(_reply):
    return None


def _redirect_stats(cluster):
    """`cluster.<name>.upstream_internal_redirect_succeeded_total` (and failed)."""
    stats = getattr(cluster, "redis_redirect_stats", None)
    if stats is None:
        store, p = cluster._store, "cluster.%s." % cluster.name
        stats = (store.counter(p + "upstream_internal_redirect_succeeded_total"),
                 store.counter(p + "upstream_internal_redirect_failed_total"))
        cluster.redis_redirect_stats = stats
    return stats

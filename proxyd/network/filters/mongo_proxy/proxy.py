"""envoy.filters.network.mongo_proxy: a sniffing filter in front of tcp_proxy.

It decodes both directions, counts, logs and can delay requests; it never changes a
byte. As Envoy: a decoding error (or an opcode it cannot read, such as OP_COMPRESSED)
counts `decoding_error` and ends sniffing for the connection, while bytes keep flowing.
Beyond Envoy, OP_MSG is parsed (Envoy issue 5036), so the stats move with current
drivers: an OP_MSG request counts as the same command sent as OP_QUERY to `<db>.$cmd`
(`op_query`, then `find` → `collection.<c>.query.*`, else `cmd.<name>.*`), and its
OP_MSG reply as an OP_REPLY (`op_reply`, `_valid_cursor` for a live cursor,
`_query_failure` for ok != 1, `_cursor_not_found` for code 43). OP_UPDATE and OP_DELETE
(which Envoy cannot decode) are logged and delayed like other writes, with no counter.
`emit_dynamic_metadata` is not supported: nothing in proxyd reads connection metadata yet.
"""
from __future__ import annotations

import time

import gevent

from proxyd.network.filter import ConnectionEvent, FilterStatus

from . import codec
from .access_log import MongoAccessLog
from .query_info import MULTI_GET, SCATTER_GET, QueryInfo, QueryInfoError

DEFAULT_COMMANDS = ("delete", "insert", "update")
CURSOR_NOT_FOUND = 43
_DENOMINATORS = {0: 100, 1: 10000, 2: 1000000}


class MongoStats:
    COUNTERS = ("cx_destroy_local_with_active_rq", "cx_destroy_remote_with_active_rq",
                "cx_drain_close", "decoding_error", "delays_injected", "op_command",
                "op_command_reply", "op_get_more", "op_insert", "op_kill_cursors", "op_query",
                "op_query_await_data", "op_query_exhaust", "op_query_multi_get",
                "op_query_no_cursor_timeout", "op_query_no_max_time", "op_query_scatter_get",
                "op_query_tailable_cursor", "op_reply", "op_reply_cursor_not_found",
                "op_reply_query_failure", "op_reply_valid_cursor")

    def __init__(self, store, prefix: str, commands):
        self.store = store
        self.prefix = "mongo.%s." % prefix
        for n in self.COUNTERS:
            setattr(self, n, store.counter(self.prefix + n))
        self.op_query_active = store.gauge(self.prefix + "op_query_active")
        self.commands = frozenset(commands)

    def command_scope(self, command: str) -> str:
        """`cmd.<name>.` for a listed command, else `cmd.unknown_command.`."""
        return "%scmd.%s." % (self.prefix, command if command in self.commands else "unknown_command")

    def collection_scopes(self, info: QueryInfo) -> list[str]:
        base = "%scollection.%s." % (self.prefix, info.collection)
        scopes = [base + "query."]
        if info.callsite:
            scopes.append("%scallsite.%s.query." % (base, info.callsite))
        return scopes

    def inc(self, name: str) -> None:
        self.store.counter(name).inc()

    def record(self, name: str, value: float) -> None:
        self.store.histogram(name).record(value)


class MongoProxyConfig:
    """One filter chain's mongo_proxy settings and stats, shared by its connections."""

    def __init__(self, config, ctx):
        self.runtime = ctx.runtime
        self.stats = MongoStats(ctx.stats, config.stat_prefix,
                                list(config.commands) or DEFAULT_COMMANDS)
        self.access_log = MongoAccessLog(config.access_log, ctx.stats) if config.access_log else None
        self.delay = None
        if config.HasField("delay") and config.delay.HasField("fixed_delay"):
            d = config.delay.fixed_delay
            pct = config.delay.percentage
            self.delay = (d.seconds * 1000 + d.nanos // 1000000,
                          pct.numerator if config.delay.HasField("percentage") else 100,
                          _DENOMINATORS.get(pct.denominator, 100))

    def __call__(self, filter_manager) -> None:
        filter_manager.add_filter(MongoProxyFilter(self))

    def feature(self, key: str, default: int = 100) -> bool:
        return self.runtime.feature_enabled(key, default)

    def delay_ms(self) -> int:
        """The delay to inject now (0: none), with Envoy's runtime overrides."""
        if self.delay is None:
            return 0
        ms, num, den = self.delay
        if not self.runtime.fractional_percent_enabled("mongo.fault.fixed_delay.percent", num, den):
            return 0
        return self.runtime.get_int("mongo.fault.fixed_delay.duration_ms", ms)


class _ActiveQuery:
    __slots__ = ("info", "start")

    def __init__(self, info: QueryInfo):
        self.info = info
        self.start = time.monotonic()


class MongoProxyFilter:
    """One connection: a read filter (requests) and a write filter (replies)."""

    def __init__(self, config: MongoProxyConfig):
        self.config = config
        self.stats = config.stats
        self.callbacks = None
        self.sniffing = True
        self.requests = codec.MongoDecoder()
        self.replies = codec.MongoDecoder()
        self.active: list[_ActiveQuery] = []
        self.delay_timer = None
        self.log = config.access_log if config.access_log and \
            config.feature("mongo.connection_logging_enabled") else None

    # --- the filter contract -----------------------------------------------------
    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks
        callbacks.connection.add_connection_callbacks(self)

    def on_new_connection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self._decode(self.requests, data)
        return FilterStatus.STOP_ITERATION if self.delay_timer else FilterStatus.CONTINUE

    def on_write(self, data: bytes, end_stream: bool) -> FilterStatus:
        self._decode(self.replies, data)
        return FilterStatus.CONTINUE

    def on_event(self, event) -> None:
        if self.delay_timer is not None:
            self.delay_timer.kill(block=False)
            self.delay_timer = None
        if self.active:
            if event is ConnectionEvent.REMOTE_CLOSE:
                self.stats.cx_destroy_remote_with_active_rq.inc()
            else:
                self.stats.cx_destroy_local_with_active_rq.inc()
            self.stats.op_query_active.dec(len(self.active))
            self.active.clear()

    # --- decoding ----------------------------------------------------------------
    def _decode(self, decoder, data: bytes) -> None:
        if not self.sniffing or not data or not self.config.feature("mongo.proxy_enabled"):
            return
        try:
            for m in decoder.receive_data(data):
                self._on_message(m)
        except (codec.DecodeError, QueryInfoError):
            self.stats.decoding_error.inc()
            self.sniffing = False
            self.requests = self.replies = None

    def _on_message(self, m) -> None:
        s = self.stats
        if isinstance(m, codec.Query):
            self._delay()
            s.op_query.inc()
            self._log(m, True)
            for flag, stat in ((codec.QUERY_TAILABLE_CURSOR, s.op_query_tailable_cursor),
                               (codec.QUERY_NO_CURSOR_TIMEOUT, s.op_query_no_cursor_timeout),
                               (codec.QUERY_AWAIT_DATA, s.op_query_await_data),
                               (codec.QUERY_EXHAUST, s.op_query_exhaust)):
                if m.flags & flag:
                    stat.inc()
            self._query(QueryInfo.from_query(m))
        elif isinstance(m, codec.Reply):
            s.op_reply.inc()
            self._log(m, False)
            if m.cursor_id:
                s.op_reply_valid_cursor.inc()
            if m.flags & codec.REPLY_CURSOR_NOT_FOUND:
                s.op_reply_cursor_not_found.inc()
            if m.flags & codec.REPLY_QUERY_FAILURE:
                s.op_reply_query_failure.inc()
            self._reply(m.response_to, m.documents, sum(d.size for d in m.documents))
        elif isinstance(m, codec.Msg):
            if m.response_to:
                self._msg_reply(m)
            else:
                self._msg_request(m)
        elif isinstance(m, (codec.GetMore, codec.Insert, codec.KillCursors, codec.Command,
                            codec.Update, codec.Delete)):
            self._delay()
            if isinstance(m, codec.Insert):
                s.op_insert.inc()
            elif isinstance(m, codec.GetMore):
                s.op_get_more.inc()
            elif isinstance(m, codec.KillCursors):
                s.op_kill_cursors.inc()
            elif isinstance(m, codec.Command):
                s.op_command.inc()
            self._log(m, True)
        elif isinstance(m, codec.CommandReply):
            self._delay()
            s.op_command_reply.inc()
            self._log(m, True)
        else:
            raise codec.DecodeError("invalid mongo op %d" % m.opcode)

    def _msg_request(self, m: codec.Msg) -> None:
        s = self.stats
        self._delay()
        info = QueryInfo.from_msg(m)
        s.op_query.inc()
        self._log(m, True)
        body = m.body
        for field, stat in (("tailable", s.op_query_tailable_cursor),
                            ("noCursorTimeout", s.op_query_no_cursor_timeout),
                            ("awaitData", s.op_query_await_data)):
            if body.get(field) is True:
                stat.inc()
        if m.flags & codec.MSG_EXHAUST_ALLOWED:
            s.op_query_exhaust.inc()
        self._query(info, expects_reply=not m.flags & codec.MSG_MORE_TO_COME)

    def _msg_reply(self, m: codec.Msg) -> None:
        s = self.stats
        s.op_reply.inc()
        self._log(m, False)
        if m.cursor_id:
            s.op_reply_valid_cursor.inc()
        if not m.ok:
            s.op_reply_query_failure.inc()
            if m.error_code == CURSOR_NOT_FOUND:
                s.op_reply_cursor_not_found.inc()
        docs = m.batch if m.cursor is not None else [m.body]
        size = m.body.size + sum(d.size for seq in m.sequences.values() for d in seq)
        self._reply(m.response_to, docs, size)

    def _query(self, info: QueryInfo, expects_reply: bool = True) -> None:
        s = self.stats
        if info.command:
            s.inc(s.command_scope(info.command) + "total")
        else:
            for scope in s.collection_scopes(info):
                s.inc(scope + "total")
                if info.type in (SCATTER_GET, MULTI_GET):
                    s.inc(scope + info.type)
            if info.max_time < 1:
                s.op_query_no_max_time.inc()
            if info.type == SCATTER_GET:
                s.op_query_scatter_get.inc()
            elif info.type == MULTI_GET:
                s.op_query_multi_get.inc()
        if expects_reply:
            self.active.append(_ActiveQuery(info))
            s.op_query_active.inc()

    def _reply(self, response_to: int, docs, size: int) -> None:
        for i, q in enumerate(self.active):
            if q.info.request_id != response_to:
                continue
            s = self.stats
            info = q.info
            scopes = [s.command_scope(info.command)] if info.command else s.collection_scopes(info)
            elapsed_ms = (time.monotonic() - q.start) * 1000.0
            for scope in scopes:
                s.record(scope + "reply_num_docs", len(docs))
                s.record(scope + "reply_size", size)
                s.record(scope + "reply_time_ms", int(elapsed_ms))
            del self.active[i]
            s.op_query_active.dec()
            return

    # --- helpers -------------------------------------------------------------------
    def _log(self, m, full: bool) -> None:
        if self.log is not None and self.config.feature("mongo.logging_enabled"):
            self.log.log(m, full, self.callbacks.upstream_host)

    def _delay(self) -> None:
        if self.delay_timer is not None:
            return
        ms = self.config.delay_ms()
        if ms > 0:
            self.delay_timer = gevent.spawn_later(ms / 1000.0, self._delay_done)
            self.stats.delays_injected.inc()

    def _delay_done(self) -> None:
        self.delay_timer = None
        self.callbacks.continue_reading()


def create(config, ctx) -> MongoProxyConfig:
    return MongoProxyConfig(config, ctx)

"""The Lua filter on the chain: envoy_on_request / envoy_on_response run as coroutines,
as Envoy's lua_filter.cc runs them.

headers():get/add/replace/remove/pairs, body() (the whole body: the script waits, the
chain buffers it; setBytes replaces it), bodyChunks(), trailers(), metadata() (route
metadata: none here), logTrace..logCritical (proxyd's log), respond() on the request path
(a local reply through the encoder filters, the script stops there), streamInfo():
protocol() and dynamicMetadata():get/set, connection():ssl() (nil on plaintext). A script
error is logged, counts `http.<prefix>.lua.errors` (`lua.<stat_prefix>.errors` with
stat_prefix) and the stream goes on, as in Envoy; `lua.executions` counts the scripts
run. Objects a script got before it waited for a body are dead after (Envoy's "object
used outside of proper scope"). Per route, `LuaPerRoute` disables the
filter, names one of `source_codes`, or gives its own `source_code`.
"""
from __future__ import annotations

from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus, \
    StreamFilter
from proxyd.observability.logging import get_logger

from .runtime import Script

_log = get_logger("lua")


def data_source_bytes(ds) -> bytes:
    which = ds.WhichOneof("specifier")
    if which == "inline_string":
        return ds.inline_string.encode()
    if which == "inline_bytes":
        return ds.inline_bytes
    if which == "filename":
        with open(ds.filename, "rb") as f:
            return f.read()
    return b""
_LEVELS = ("debug", "debug", "info", "warning", "error", "critical")
_PSEUDO_REQ = (":method", ":path", ":authority", ":scheme")


def _header_pairs(head, pseudo) -> list:
    pairs = [(k, head.get(k)) for k in pseudo if head.get(k) is not None]
    return pairs + list(head.headers.items)


class _Side:
    """One direction's script state, and the one callable Lua calls back into:
    `side(op, kind, a, b)`, kind "h" (the head) or "t" (trailers)."""

    def __init__(self, f, script, head, pseudo, callbacks, request: bool):
        self.f, self.script, self.head, self.cb = f, script, head, callbacks
        self.pseudo, self.request = pseudo, request
        self.co = None
        self.done = True
        self.waiting = False
        self.body_complete = False
        self.buf = bytearray()   # the body the script sees
        self.body_changed = False
        self.trailers_head = None
        self._pairs = None

    def __call__(self, op, kind=None, a=None, b=None, c=None):
        return getattr(self, "op_" + op)(kind, a, b, c)

    # -- headers and trailers -------------------------------------------------------------
    def _map(self, kind):
        return self.head if kind == "h" else self.trailers_head

    def op_get(self, kind, k, _b, _c):
        k = str(k).lower()
        m = self._map(kind)
        if kind == "t":
            return m.get(k)
        v = m.get(k)
        if v is None or k.startswith(":"):
            return v
        vals = m.get_all(k)
        return ",".join(vals) if len(vals) > 1 else v

    def op_num_values(self, kind, k, _b, _c):
        k = str(k).lower()
        m = self._map(kind)
        if k.startswith(":"):
            return 1 if m.get(k) is not None else 0
        return len(m.get_all(k))

    def op_at_index(self, kind, k, i, _c):
        vals = self._map(kind).get_all(str(k).lower())
        i = int(i)
        return vals[i] if 0 <= i < len(vals) else None

    def op_add(self, kind, k, v, _c):
        k = str(k).lower()
        m = self._map(kind)
        if k.startswith(":"):
            m.set(k, str(v))
        else:
            m.add(k, str(v))

    def op_replace(self, kind, k, v, _c):
        self._map(kind).set(str(k).lower(), str(v))

    def op_remove(self, kind, k, _b, _c):
        self._map(kind).remove(str(k).lower())

    def op_count(self, kind, _a, _b, _c):
        m = self._map(kind)
        self._pairs = _header_pairs(m, self.pseudo) if kind == "h" else list(m.items)
        return len(self._pairs)

    def op_key(self, kind, i, _b, _c):
        return self._pairs[int(i) - 1][0]

    def op_value(self, kind, i, _b, _c):
        return self._pairs[int(i) - 1][1]

    def op_has_trailers(self, _k, _a, _b, _c):
        return self.trailers_head is not None

    # -- body -----------------------------------------------------------------------------
    def op_body_done(self, _k, _a, _b, _c):
        return self.body_complete

    def op_has_body(self, _k, always_wrap, _b, _c):
        return bool(self.buf) or bool(always_wrap)

    def op_length(self, _k, _a, _b, _c):
        return len(self.buf)

    def op_get_bytes(self, _k, i, n, _c):
        i, n = int(i), int(n)
        return bytes(self.buf[i:i + n])

    def op_set_bytes(self, _k, data, _b, _c):
        b = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        self.buf = bytearray(b)
        self.body_changed = True
        return len(b)

    # -- the rest -------------------------------------------------------------------------
    def op_respond(self, _k, flat, body, _c):
        if not self.request:
            raise RuntimeError("respond() is not supported in envoy_on_response")
        vals = list(flat.values()) if flat is not None else []
        items = [(str(vals[i]).lower(), str(vals[i + 1])) for i in range(0, len(vals) - 1, 2)]
        status = next((v for k, v in items if k == ":status"), None)
        if status is None or not status.isdigit():
            raise RuntimeError(":status must be specified and a valid unsigned long")
        body = body.encode("latin-1") if isinstance(body, str) else (body or b"")
        self.f.responded = True
        self.cb.send_local_reply(int(status), body, "lua_respond",
                                 headers=[kv for kv in items if not kv[0].startswith(":")])

    def op_log(self, _k, level, msg, _c):
        getattr(_log, _LEVELS[int(level)])("script log", message=str(msg))

    def op_protocol(self, _k, _a, _b, _c):
        return self.cb.request.version

    def op_dynamic_get(self, _k, ns, _b, _c):
        d = self.cb.stream_info.dynamic_metadata.get(str(ns))
        return self.script.table_from({str(k): v for k, v in d.items()}) if d else None

    def op_dynamic_set(self, _k, ns, k, v):
        self.cb.stream_info.set_dynamic_metadata(str(ns), {str(k): v})

    # -- driving -------------------------------------------------------------------------
    def start(self, fn) -> str:
        self.f.config.stats.executions.inc()
        self.done = False
        self.co = self.script.start(fn, self.__call__)
        return self.step()

    def step(self) -> str:
        try:
            r = self.co.send(None)
        except StopIteration:
            r = "done"
        except Exception as e:  # noqa: BLE001 - a script error: logged, counted, stream goes on
            self.f.script_error(e)
            r = "done"
        if r == "done":
            self.done = True
        self.waiting = r == "body"
        return r


class LuaFilter(StreamFilter):
    def __init__(self, config):
        self.config = config
        self.req = self.resp = None
        self.script = None
        self.responded = False

    def script_error(self, e) -> None:
        self.config.stats.errors.inc()
        _log.error("script error", error="%s: %s" % (type(e).__name__, e))

    def _pick(self, cb):
        route = cb.per_route_config()
        if isinstance(route, RouteScript):
            if route.disabled:
                return None
            if route.script is not None:
                return route.script
            return self.config.named.get(route.name)
        return self.config.default

    # -- request --------------------------------------------------------------------------
    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        self.script = self._pick(cb)
        if self.script is None or self.script.on_request is None:
            return FilterHeadersStatus.CONTINUE
        s = self.req = _Side(self, self.script, headers, _PSEUDO_REQ, cb, True)
        s.body_complete = end_stream
        r = s.start(self.script.on_request)
        while r == "body" and s.body_complete:
            r = s.step()
        if r == "respond":
            return FilterHeadersStatus.STOP_ITERATION
        return FilterHeadersStatus.STOP_ITERATION if r == "body" else FilterHeadersStatus.CONTINUE

    def decode_data(self, data, end_stream: bool):
        s = self.req
        if s is None or s.done or self.responded:
            return FilterDataStatus.CONTINUE if not self.responded else \
                FilterDataStatus.STOP_ITERATION_NO_BUFFER
        s.buf += data
        if not end_stream:
            return FilterDataStatus.STOP_ITERATION_NO_BUFFER
        return self._finish_body(s, data, True)

    def _finish_body(self, s, data, as_data: bool):
        s.body_complete = True
        r = "body"
        while r == "body" and not s.done:
            r = s.step()
        if self.responded:
            return FilterDataStatus.STOP_ITERATION_NO_BUFFER if as_data else \
                FilterTrailersStatus.STOP_ITERATION
        if data is not None:
            data[:] = s.buf   # the whole body goes on in this last call
        return FilterDataStatus.CONTINUE if as_data else FilterTrailersStatus.CONTINUE

    def decode_trailers(self, trailers):
        s = self.req
        if s is None or s.done:
            return FilterTrailersStatus.CONTINUE
        s.trailers_head = trailers
        s.body_complete = True
        r = "body"
        while r == "body" and not s.done:
            r = s.step()
        if self.responded:
            return FilterTrailersStatus.STOP_ITERATION
        if s.buf:
            self.decoder_callbacks.add_decoded_data(bytes(s.buf))
        return FilterTrailersStatus.CONTINUE

    # -- response -------------------------------------------------------------------------
    def encode_headers(self, headers, end_stream: bool):
        if self.script is None or self.script.on_response is None:
            return FilterHeadersStatus.CONTINUE
        s = self.resp = _Side(self, self.script, headers, (":status",),
                              self.encoder_callbacks, False)
        s.body_complete = end_stream
        r = s.start(self.script.on_response)
        while r == "body" and s.body_complete:
            r = s.step()
        return FilterHeadersStatus.STOP_ITERATION if r == "body" else FilterHeadersStatus.CONTINUE

    def encode_data(self, data, end_stream: bool):
        s = self.resp
        if s is None or s.done:
            return FilterDataStatus.CONTINUE
        s.buf += data
        if not end_stream:
            return FilterDataStatus.STOP_ITERATION_NO_BUFFER
        s.body_complete = True
        while not s.done and s.step() == "body":
            pass
        data[:] = s.buf   # the whole body goes on in this last call
        return FilterDataStatus.CONTINUE

    def encode_trailers(self, trailers):
        s = self.resp
        if s is None or s.done:
            return FilterTrailersStatus.CONTINUE
        s.trailers_head = trailers
        s.body_complete = True
        while not s.done and s.step() == "body":
            pass
        if s.buf:
            self.encoder_callbacks.add_encoded_data(bytes(s.buf))
        return FilterTrailersStatus.CONTINUE


class RouteScript:
    def __init__(self, msg):
        which = msg.WhichOneof("override")
        self.disabled = which == "disabled" and msg.disabled
        self.name = msg.name if which == "name" else None
        self.script = Script(data_source_bytes(msg.source_code).decode(), "LuaPerRoute") \
            if which == "source_code" else None


class Config:
    def __init__(self, msg, ctx):
        code = msg.inline_code
        if msg.HasField("default_source_code"):
            code = data_source_bytes(msg.default_source_code).decode()
        self.default = Script(code) if code else None
        self.named = {k: Script(data_source_bytes(v).decode(), "source_codes[%s]" % k)
                      for k, v in msg.source_codes.items()}
        prefix = "lua.%s." % msg.stat_prefix if msg.stat_prefix else "lua."
        self.stats = ctx.scope(prefix, counters=("errors", "executions"))


def create(msg, ctx):
    config = Config(msg, ctx)
    return lambda chain: chain.add_stream_filter(LuaFilter(config))


def create_route_config(msg, factory):
    """A name not among the filter's source_codes leaves the filter out on that route."""
    return RouteScript(msg)

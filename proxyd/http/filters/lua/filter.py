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


class LuaHeaders:
    """headers() of a request or response head (pseudo-headers included)."""

    def __init__(self, head, script, pseudo):
        self.head, self.script, self.pseudo = head, script, pseudo

    def get(self, k):
        k = str(k).lower()
        v = self.head.get(k)
        if v is None or k.startswith(":"):
            return v
        vals = self.head.get_all(k)
        return ",".join(vals) if len(vals) > 1 else v

    def num_values(self, k):
        k = str(k).lower()
        return 1 if k.startswith(":") and self.head.get(k) is not None else \
            len(self.head.get_all(k))

    def at_index(self, k, i):
        vals = self.head.get_all(str(k).lower())
        return vals[int(i)] if 0 <= int(i) < len(vals) else None

    def add(self, k, v):
        k = str(k).lower()
        if k.startswith(":"):
            self.head.set(k, str(v))
        else:
            self.head.add(k, str(v))

    def replace(self, k, v):
        self.head.set(str(k).lower(), str(v))

    def remove(self, k):
        self.head.remove(str(k).lower())

    def items(self):
        pairs = [(k, self.head.get(k)) for k in self.pseudo if self.head.get(k) is not None]
        pairs += list(self.head.headers.items)
        return self.script.table(*[self.script.table(k, v) for k, v in pairs])


class LuaTrailers(LuaHeaders):
    def get(self, k):
        return self.head.get(str(k).lower())

    def items(self):
        return self.script.table(*[self.script.table(k, v) for k, v in self.head.items])


class LuaBody:
    def __init__(self, side):
        self.side = side

    def length(self):
        return len(self.side.buf)

    def get_bytes(self, i, n):
        i, n = int(i), int(n)
        return bytes(self.side.buf[i:i + n])

    def set_bytes(self, s):
        b = s.encode("latin-1") if isinstance(s, str) else bytes(s)
        self.side.buf = bytearray(b)
        self.side.buf_changed = True
        return len(b)


class _Side:
    """One direction's script state: the stream handle Lua calls back into."""

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

    # -- what Lua calls (names in runtime.ALLOWED) ---------------------------------------
    def headers(self):
        return LuaHeaders(self.head, self.script, self.pseudo)

    def body_done(self):
        return self.body_complete

    def body(self, always_wrap=False):
        if not self.buf and not always_wrap:
            return None
        return LuaBody(self)

    def trailers(self):
        return LuaTrailers(self.trailers_head, self.script, ()) \
            if self.trailers_head is not None else None

    def metadata(self):
        return _NoMetadata()

    def respond(self, headers, body):
        if not self.request:
            raise RuntimeError("respond() is not supported in envoy_on_response")
        items = [(str(k).lower(), str(v)) for k, v in headers.items()] \
            if headers is not None else []
        status = next((v for k, v in items if k == ":status"), None)
        if status is None or not status.isdigit():
            raise RuntimeError(":status must be specified and a valid unsigned long")
        body = body.encode("latin-1") if isinstance(body, str) else (body or b"")
        self.f.responded = True
        self.cb.send_local_reply(int(status), body, "lua_respond",
                                 headers=[kv for kv in items if not kv[0].startswith(":")])

    def log(self, level, msg):
        getattr(_log, _LEVELS[int(level)])("script log", message=str(msg))

    def protocol(self):
        v = self.cb.request.version
        return {"HTTP/1.0": "HTTP/1.0", "HTTP/1.1": "HTTP/1.1", "HTTP/2": "HTTP/2"}.get(v, v)

    def dynamic_get(self, ns):
        d = self.cb.stream_info.dynamic_metadata.get(str(ns))
        return self.script.table(**{str(k): v for k, v in d.items()}) if d else None

    def dynamic_set(self, ns, k, v):
        self.cb.stream_info.set_dynamic_metadata(str(ns), {str(k): v})

    def ssl(self):
        return None

    # -- driving -------------------------------------------------------------------------
    def start(self, fn) -> str:
        self.f.config.stats.executions.inc()
        self.done = False
        self.co = self.script.start(fn, self)
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


class _NoMetadata:
    def get(self, k):
        return None


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

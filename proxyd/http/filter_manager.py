"""One stream's HTTP filter chain: Envoy's FilterManager, iteration state and callbacks.

The chain itself never blocks: every filter call returns a status and the manager
remembers where iteration stopped (`_Chain`). The stream's greenlet (`drive`) feeds it
request data from the codec and runs the terminal filter's exchange (the router's
`serve`); a filter resuming from a timer or another greenlet only posts to that greenlet
(`post`), so codec writes always happen in the stream's own greenlet.

Buffering follows Envoy: one buffer per direction, held at the filter that stopped;
above the buffer limit a StopIterationAndBuffer answers 413 (request) or 500 (response),
a watermark status pauses reading instead.
"""
from __future__ import annotations

import gevent
from gevent.event import Event

from proxyd.http import grpc
from proxyd.http.headers import Headers
from proxyd.http.message import ResponseHead
from proxyd.http.stream_errors import STREAM_CONTROL, LocalReplySent, StreamIdleTimeout
from proxyd.observability.logging import get_logger

_log = get_logger("http.filter")

# per-filter iteration state (the values of FilterHeadersStatus, data stops map to _STOP)
_GO = 0
_STOP = 1            # this filter holds iteration; it still gets data/trailers
_STOP_ALL = 2        # this filter and the rest wait; data is buffered for it
_STOP_ALL_WM = 3     # same, with reads paused above the limit

# What filters may buffer per stream: Envoy's per_connection_buffer_limit_bytes default
# (route per_request_buffer_limit_bytes is the router's retry buffer, not this one)
DEFAULT_BUFFER_LIMIT = 1 << 20
_UNSET = object()
_END = object()      # raw request end without trailers (reader queue item)


class FilterSpec:
    """One `http_filters` entry of an HCM, built once per config."""
    __slots__ = ("name", "factory", "disabled", "errors", "stats")

    def __init__(self, name: str, factory, disabled: bool, errors, stats=None):
        self.name = name
        self.factory = factory
        self.disabled = disabled   # HttpFilter.disabled: off unless a route enables it
        self.errors = errors       # counter of exceptions raised by this filter
        self.stats = stats         # the handles its factory declared (callbacks.stats)


class _Entry:
    """One filter's place in one direction of the chain, and the callbacks it is given
    (Envoy's ActiveStreamDecoderFilter / ActiveStreamEncoderFilter)."""
    state = _GO
    headers_continued = False

    def __init__(self, fm, chain, f, spec, index):
        self.fm = fm
        self.chain = chain
        self.filter = f
        self.spec = spec
        self.index = index

    # -- shared callbacks ---------------------------------------------------------------

    @property
    def stream_info(self):
        return self.fm.stream.info

    @property
    def request(self):
        return self.fm.stream.request

    @property
    def response(self):
        return self.fm.enc.head

    @property
    def connection_id(self) -> int:
        return self.fm.stream.info.connection_id

    @property
    def stream_id(self):
        return self.fm.stream.info.request_id

    @property
    def runtime(self):
        return self.fm.stream.hcm.ctx.runtime

    @property
    def stats(self):
        return self.spec.stats

    @property
    def dispatcher(self):
        return gevent.get_hub().loop

    def route(self):
        return self.fm.route()

    def clear_route_cache(self) -> None:
        self.fm.clear_route_cache()

    def per_route_config(self):
        """The most specific `typed_per_filter_config` for this filter (route, then
        virtual host, then route configuration), or None."""
        r = self.fm.route()
        return r.per_filter_config.get(self.spec.name) if r is not None else None

    def per_route_configs(self) -> list:
        """Every level's config for this filter, least specific first (for merging)."""
        r = self.fm.route()
        return list(r.per_filter_levels.get(self.spec.name, ())) if r is not None else []

    def send_local_reply(self, status: int, body=b"", details: str = "", headers=None,
                         grpc_status: int | None = None) -> None:
        if isinstance(body, str):
            body = body.encode()
        self.fm.send_local_reply(status, body, details or "filter_local_reply", None, headers,
                                 grpc_status)

    def reset_stream(self) -> None:
        self.fm.reset()

    def run_blocking(self, fn, done) -> None:
        """Run `fn()` in its own greenlet (library calls may block there); `done(result,
        error)` then runs in the stream's greenlet."""
        fm = self.fm

        def call():
            try:
                r, err = fn(), None
            except Exception as e:  # noqa: BLE001 - handed to done()
                r, err = None, e
            fm.post(lambda: fm.guard(self, done, r, err))
        if not fm.helpers:
            fm.helpers = []
        fm.helpers.append(gevent.spawn(call))

    def set_buffer_limit(self, limit: int) -> None:
        self.fm.buffer_limit = limit

    def buffer_limit(self) -> int:
        return self.fm.buffer_limit

    # -- direction-specific (both names exist; each chain uses its own) -------------------

    def continue_decoding(self) -> None:
        self.fm.post(lambda: self.chain.resume(self))

    continue_encoding = continue_decoding

    def decoding_buffer(self):
        return self.chain.buffer

    encoding_buffer = decoding_buffer

    def add_decoded_data(self, data: bytes, streaming: bool = False) -> None:
        self.chain.add_data(self, data)

    add_encoded_data = add_decoded_data

    def modify_decoding_buffer(self, fn) -> None:
        if self.chain.buffer is not None:
            fn(self.chain.buffer)

    modify_encoding_buffer = modify_decoding_buffer

    def add_decoded_trailers(self):
        """Trailers for a request that has none; only while its last data is decoded."""
        ch = self.chain
        if ch.trailers is None:
            ch.trailers = Headers()
        return ch.trailers

    add_encoded_trailers = add_decoded_trailers

    # a decoder filter answering with a response of its own (Envoy's encodeHeaders on
    # the decoder callbacks): it runs through the encoder filters
    def encode_headers(self, headers, end_stream: bool) -> None:
        self.fm.begin_response()
        self.fm.enc.headers(0, headers, end_stream)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        self.fm.enc.data(0, data, end_stream)

    def encode_trailers(self, trailers) -> None:
        self.fm.enc.trailers_(0, trailers)


class _Chain:
    """Iteration over one direction (decoder or encoder) of one stream's filters.

    Class attributes are the defaults: a stream sets only what it changes."""
    head = None
    trailers = None
    buffer: bytearray | None = None
    complete = False        # end_stream entered this chain
    aborted = False         # a local reply or an error ended iteration
    above_limit = False     # watermark: the buffer is over the limit
    trailers_held = None    # the entry trailers wait at
    in_call = None          # (entry, "headers"|"data"|"trailers", arg) during a call

    def __init__(self, fm, encoder: bool):
        self.fm = fm
        self.entries: list[_Entry] = []
        self.encoder = encoder

    def _call(self, e: _Entry, kind: str, fn, *args):
        self.in_call = (e, kind, args[0])
        try:
            status = fn(*args)
        except STREAM_CONTROL:
            self.in_call = None
            raise
        except Exception as exc:  # noqa: BLE001 - a filter's bug answers 500, never more
            self.in_call = None
            self.fm.filter_raised(e, exc)
            return None
        self.in_call = None
        return status

    # -- headers ------------------------------------------------------------------------

    def headers(self, start: int, head, end_stream: bool) -> None:
        if self.aborted:
            return
        self.head = head
        if end_stream:
            self.complete = True
        entries = self.entries
        added_by = None
        for i in range(start, len(entries)):
            e = entries[i]
            f = e.filter
            status = self._call(e, "headers", f.encode_headers if self.encoder
                                else f.decode_headers, head, end_stream)
            if self.aborted or status is None:
                return
            if self.buffer and end_stream and added_by is None:
                added_by = i            # add_*_data while end_stream: body follows
                end_stream = False
            if status:
                e.state = status   # FilterHeadersStatus values are the iteration states
                break
            e.headers_continued = True
        else:
            self.terminal_headers(head, end_stream)
        if added_by is not None and not self.aborted:
            data, self.buffer = self.buffer, None
            self.data(added_by + 1, data, True)

    # -- data ---------------------------------------------------------------------------

    def data(self, start: int, data, end_stream: bool) -> None:
        """Body data from filter `start` on. Filters get a bytearray they may change in
        place (Envoy's mutable Buffer); with only the terminal filter, the bytes as read."""
        if self.aborted:
            return
        if end_stream:
            self.complete = True
        entries = self.entries
        n = len(entries)
        if n > start + (0 if self.encoder else 1) and type(data) is not bytearray:
            data = bytearray(data)
        i = start
        no_trailers = end_stream and self.trailers is None
        added_by = None   # the filter that added trailers while decoding the last data
        while i < n:
            e = entries[i]
            if e.state >= _STOP_ALL:
                if added_by is not None:
                    self.trailers_held = e
                self.hold(data, e.state == _STOP_ALL_WM, end_stream)
                return
            f = e.filter
            held = self.buffer   # a later filter's held data, if any, is not this call's
            held_len = len(held) if held is not None else 0
            status = self._call(e, "data", f.encode_data if self.encoder else f.decode_data,
                                data, end_stream)
            if self.aborted or status is None:
                return
            if no_trailers and added_by is None and self.trailers is not None:
                added_by = i      # add_*_trailers: the data no longer ends the stream
                end_stream = False
            if status == 0 and e.state == _GO and self.buffer is not None:
                buf = self.buffer   # data added during the call goes on with this data
                if buf is not held:
                    data, self.buffer = data + buf, None
                elif len(buf) > held_len:
                    data = data + buf[held_len:]
                    del buf[held_len:]
            if status == 0:
                if e.state == _STOP:
                    if added_by is not None:
                        self.trailers_held = e
                    self.hold(data, False, end_stream)
                    self.resume(e)
                    return
            else:
                e.state = _STOP
                if status != 3:   # STOP_ITERATION_NO_BUFFER drops it
                    self.hold(data, status == 2, end_stream)
                elif end_stream and self.buffer is None:
                    self.buffer = bytearray()  # so that resuming still ends the stream
                if added_by is not None:
                    if i == n - 1 and not self.aborted:   # the last filter (Envoy's rule)
                        self.trailers_(added_by + 1, self.trailers)
                    else:
                        self.trailers_held = e
                return
            i += 1
        self.terminal_data(data, end_stream)
        if added_by is not None and not self.aborted:
            self.trailers_(added_by + 1, self.trailers)

    def hold(self, data: bytes, watermark: bool, end_stream: bool) -> None:
        """Keep `data` for the stopped filter (an empty buffer still marks the end)."""
        if not data and not end_stream:
            return
        buf = self.buffer
        if buf is None:
            buf = self.buffer = bytearray()
        buf += data
        if len(buf) > self.fm.buffer_limit:
            if watermark:
                self.above_limit = True
            else:
                self.fm.buffer_overflow(self.encoder)

    def add_data(self, e: _Entry, data: bytes) -> None:
        call = self.in_call
        if call is not None and call[1] == "trailers" and call[0] is e:
            self.data(e.index + 1, data, False)  # before the trailers, to the next filters
            return
        buf = self.buffer
        if buf is None:
            buf = self.buffer = bytearray()
        buf += data
        if call is not None and call[0] is e and call[2] is data and type(data) is bytearray:
            data.clear()  # the chunk being decoded moved into the buffer (Envoy's move)

    # -- trailers -----------------------------------------------------------------------

    def trailers_(self, start: int, trailers) -> None:
        if self.aborted:
            return
        self.trailers = trailers
        self.complete = True
        entries = self.entries
        for i in range(start, len(entries)):
            e = entries[i]
            if e.state >= _STOP_ALL:
                self.trailers_held = e
                return
            f = e.filter
            status = self._call(e, "trailers", f.encode_trailers if self.encoder
                                else f.decode_trailers, trailers)
            if self.aborted or status is None:
                return
            if status:
                e.state = _STOP
                self.trailers_held = e
                return
            if e.state == _STOP:
                self.trailers_held = e
                self.resume(e)
                return
        self.terminal_trailers(trailers)

    # -- resuming -----------------------------------------------------------------------

    def resume(self, e: _Entry) -> None:
        """Envoy's commonContinue: headers, then the buffer, then trailers go on from
        after `e` (from `e` itself for data it had stopped all iteration for)."""
        if self.aborted:
            return
        from_current = e.state >= _STOP_ALL
        if e.state == _GO and e.headers_continued:
            return
        e.state = _GO
        nxt = e.index + 1
        had_trailers = self.trailers_held is e
        if not e.headers_continued:
            e.headers_continued = True
            end = self.complete and self.buffer is None and self.trailers is None
            self.headers(nxt, self.head, end)
            if self.aborted:
                return
        if self.buffer is not None:
            data, self.buffer = self.buffer, None
            if self.above_limit:
                self.above_limit = False
                self.fm.reading_resumed()
            self.data(e.index if from_current else nxt, data,
                      self.complete and self.trailers is None)
            if self.aborted:
                return
        if had_trailers:
            self.trailers_held = None
            self.trailers_(e.index if from_current else nxt, self.trailers)

    # -- past the last filter -------------------------------------------------------------

    def terminal_headers(self, head, end_stream: bool) -> None:
        if self.encoder:
            self.fm.codec_headers(head, end_stream)

    def terminal_data(self, data: bytes, end_stream: bool) -> None:
        if self.encoder:
            self.fm.codec_data(data, end_stream)

    def terminal_trailers(self, trailers) -> None:
        if self.encoder:
            self.fm.codec_trailers(trailers)


class FilterManager:
    """The filters of one stream and the greenlet-side driving of them.

    Class attributes are the defaults: a stream sets only what it changes."""
    buffer_limit = DEFAULT_BUFFER_LIMIT
    _route = _UNSET
    _spec = None
    posted = ()             # callables for the stream's greenlet (a list once used)
    raw = ()                # request body items the reader read (a list once used)
    helpers = ()            # greenlets of run_blocking (a list once used)
    wake: Event | None = None
    reader = None
    reader_wake: Event | None = None
    terminal = None
    response_started = False   # headers entered the encoder chain
    done = False               # the response ended (or the stream was reset)
    error_logged = False
    idle_override = _UNSET     # a route's idle_timeout replaced stream_idle_timeout (None: off)

    def __init__(self, stream):
        self.stream = stream
        self.dec = _Chain(self, False)
        self.enc = _Chain(self, True)
        self.filters: list = []
        self.greenlet = gevent.getcurrent()

    # -- building the chain (FilterChainFactoryCallbacks) --------------------------------

    def create_filter_chain(self, specs) -> None:
        route = self.route()
        disabled = route.disabled_filters if route is not None else None
        for spec in specs:
            if disabled.get(spec.name, spec.disabled) if disabled else spec.disabled:
                continue
            self._spec = spec
            spec.factory(self)

    def add_stream_decoder_filter(self, f) -> None:
        e = _Entry(self, self.dec, f, self._spec, len(self.dec.entries))
        self.dec.entries.append(e)
        self.filters.append(f)
        f.set_decoder_filter_callbacks(e)

    def add_stream_encoder_filter(self, f) -> None:
        # the encoder chain runs in reverse order: later filters go first
        ents = self.enc.entries
        e = _Entry(self, self.enc, f, self._spec, 0)
        ents.insert(0, e)
        for i, x in enumerate(ents):
            x.index = i
        if f not in self.filters:
            self.filters.append(f)
        f.set_encoder_filter_callbacks(e)

    def add_stream_filter(self, f) -> None:
        self.add_stream_decoder_filter(f)
        self.add_stream_encoder_filter(f)

    # -- the route --------------------------------------------------------------------------

    def route(self):
        r = self._route
        if r is _UNSET:
            s = self.stream
            r = self._route = s.hcm.route_table.match(s.request)
            s.info.route_name = r.name if r is not None else None
            if r is not None and r.stream_timeouts:  # idle_timeout, max_stream_duration
                s.route_timeouts(r)
        return r

    def clear_route_cache(self) -> None:
        self._route = _UNSET

    decorated = None   # the route decorator's operation, for the response (ingress)

    def decorate(self, span) -> None:
        """Envoy's traceRequest for an ingress span (tracing on): an incoming
        x-envoy-decorator-operation names the span and goes no further; else the route's
        Route.decorator names it and, with `propagate`, the response carries it."""
        headers = self.stream.request.headers
        op = headers.get("x-envoy-decorator-operation")
        if op is not None:
            headers.remove("x-envoy-decorator-operation")
            if op and span is not None:
                span.name = op
            return
        route = self.route()
        d = route.decorator if route is not None else None
        if d is not None:
            if span is not None:
                span.name = d[0]
            if d[1]:
                self.decorated = d[0]

    # -- driving (the stream's greenlet) ---------------------------------------------------

    def post(self, fn) -> None:
        """Run `fn` in the stream's greenlet: now if this is it, else at its next turn."""
        if gevent.getcurrent() is self.greenlet:
            fn()
            return
        if not self.posted:
            self.posted = []
        self.posted.append(fn)
        if self.wake is not None:
            self.wake.set()

    def run_posted(self) -> None:
        posted = self.posted
        while posted:
            fn = posted.pop(0)
            fn()

    def wait(self) -> None:
        """Sleep until something is posted, read or resumed; an idle stream times out."""
        ev = self.wake
        if ev is None:
            ev = self.wake = Event()
        if self.posted or self.raw:
            return
        idle = self.idle_override
        if not ev.wait(self.stream.hcm.stream_idle_timeout if idle is _UNSET else idle):
            raise StreamIdleTimeout()
        ev.clear()

    def notify(self) -> None:
        if self.wake is not None:
            self.wake.set()

    def start(self, request, end_stream: bool) -> None:
        """Decode the request headers and drive the stream to its end. With the terminal
        filter alone in the chain, it is started directly (what the iteration would do)."""
        dec = self.dec
        t = self.terminal
        if t is not None and len(dec.entries) == 1 and not self.enc.entries:
            dec.head = request
            dec.complete = end_stream
            dec.entries[0].state = _STOP
            t.request_complete = end_stream
            self.run_terminal(t)
            if self.done:
                return
        else:
            dec.headers(0, request, end_stream)
        self.drive()

    def drive(self) -> None:
        """Until the response ends: run the terminal filter's exchange once the request
        headers reach it, feed request data, and run what filters posted."""
        stream = self.stream
        while True:
            if self.posted:
                self.run_posted()
            if self.done:
                return
            t = self.terminal
            if t is not None and t.ready:
                t.ready = False
                self.run_terminal(t)
                continue
            if self.raw:
                self.feed(self.raw.pop(0))
                continue
            if not stream.request_complete and not self.dec.aborted and self.reader is None:
                self.start_reader()
            self.wait()

    def run_terminal(self, t) -> None:
        try:
            t.serve()
        except LocalReplySent:
            pass
        except STREAM_CONTROL:
            raise
        except Exception as exc:  # noqa: BLE001
            self.filter_raised(t.decoder_callbacks, exc)

    def pull(self) -> None:
        """The terminal filter waits for request data: read it here, or wait for the
        reader or a resuming filter."""
        self.run_posted()
        if self.raw:
            self.feed(self.raw.pop(0))
        elif self.reader is None and not self.stream.request_complete and not self.dec.above_limit:
            self.feed(self.read_raw())
        else:
            self.wait()

    def read_raw(self):
        stream = self.stream
        data = stream.read_body()
        if data is not None:
            return data
        trailers = getattr(stream, "trailers", None)
        return trailers if trailers is not None and trailers.items else _END

    def feed(self, item) -> None:
        if self.reader_wake is not None:
            self.reader_wake.set()
        if self.dec.aborted:
            return
        if item is _END:
            self.dec.data(0, b"", True)
        elif isinstance(item, Headers):
            self.dec.trailers_(0, item)
        else:
            self.dec.data(0, item, False)

    def start_reader(self) -> None:
        """Read the request body in a helper greenlet while the chain is paused, so the
        stream's greenlet stays free for resumptions (one raw item in flight at a time)."""
        self.reader_wake = Event()
        self.reader = gevent.spawn(self._read_loop)

    def _read_loop(self) -> None:
        stream = self.stream
        wake = self.reader_wake
        try:
            while not stream.request_complete and not self.done:
                while self.raw or self.dec.above_limit:
                    wake.clear()
                    wake.wait()
                item = self.read_raw()
                if not self.raw:
                    self.raw = []
                self.raw.append(item)
                self.notify()
        except STREAM_CONTROL as e:
            self.post(lambda: _raise(e))
            self.notify()

    def reading_resumed(self) -> None:
        if self.reader_wake is not None:
            self.reader_wake.set()

    # -- the response ---------------------------------------------------------------------

    def begin_response(self) -> None:
        self.response_started = True

    def codec_headers(self, head, end_stream: bool) -> None:
        self.stream.send_headers(head, end_stream)
        if end_stream:
            self.stream.flush()
            self._ended()

    def codec_data(self, data, end_stream: bool) -> None:
        self.stream.send_data(bytes(data) if type(data) is bytearray else data, end_stream)
        if end_stream:
            self.stream.flush()
            self._ended()

    def codec_trailers(self, trailers) -> None:
        self.stream.send_trailers(trailers)
        self.stream.flush()
        self._ended()

    def _ended(self) -> None:
        self.done = True
        self.notify()

    def encode_headers(self, resp, end_stream: bool) -> None:
        """The terminal filter's response head enters the encoder chain."""
        self.response_started = True
        route = self._route
        if route is _UNSET:
            route = self.route()
        stream = self.stream
        if route is not None:
            route.apply_response_headers(resp.headers, stream.info)
        if self.decorated is not None:
            resp.headers.set("x-envoy-decorator-operation", self.decorated)
        via = stream.hcm.via
        if via:
            v = resp.headers.get("via")
            resp.headers.set("via", "%s, %s" % (v, via) if v else via)
        enc = self.enc
        if enc.entries or enc.aborted:
            enc.headers(0, resp, end_stream)
        else:  # no encoder filters: straight to the codec
            enc.head = resp
            stream.send_headers(resp, end_stream)
            if end_stream:
                stream.flush()
                self._ended()

    def send_local_reply(self, status: int, body: bytes | None, details: str,
                         flag: str | None = None, headers: list | None = None,
                         grpc_status: int | None = None) -> None:
        """Envoy's sendLocalReply: through the encoder filters if no response started,
        straight to the codec if one started but its head is not out, else a reset.
        `grpc_status` overrides the one a gRPC request's reply maps from `status`."""
        stream = self.stream
        info = stream.info
        info.response_code_details = details
        if flag:
            info.response_flags.append(flag)
        self.dec.aborted = True
        if self.done:
            return
        if stream.headers_sent:
            self.reset()
            return
        resp, body = _local_response(stream.request, status, body, headers, grpc_status)
        if not self.response_started:
            self.encode_headers(resp, not body)
            if body and not self.enc.aborted:
                self.enc.data(0, body, True)
        else:
            self.enc.aborted = True
            self.codec_headers(resp, not body)
            if body:
                self.codec_data(body, True)
        if self.terminal is not None:
            self.terminal.replaced = True

    def reset(self) -> None:
        self.dec.aborted = self.enc.aborted = True
        self.done = True
        self.stream.reset()
        self.notify()

    def buffer_overflow(self, encoder: bool) -> None:
        hcm = self.stream.hcm
        if encoder:
            hcm.stats.rs_too_large.inc()
            self.send_local_reply(500, b"Internal Server Error", "response_payload_too_large")
        else:
            hcm.stats.downstream_rq_too_large.inc()
            self.send_local_reply(413, b"Payload Too Large", "request_payload_too_large")

    # -- errors ---------------------------------------------------------------------------

    def guard(self, e: _Entry, fn, *args) -> None:
        """Call a filter's code outside an iteration (a timer, a done callback)."""
        try:
            fn(*args)
        except STREAM_CONTROL:
            raise
        except Exception as exc:  # noqa: BLE001
            self.filter_raised(e, exc)

    def filter_raised(self, e: _Entry, exc: BaseException) -> None:
        """A filter raised: count it, log it once per stream, answer 500 (or reset a
        response already under way). The connection and the worker carry on."""
        e.spec.errors.inc()
        info = self.stream.info
        if not self.error_logged:
            self.error_logged = True
            _log.error("http filter raised", filter=e.spec.name, connection_id=info.connection_id,
                       stream_id=info.request_id, error="%s: %s" % (type(exc).__name__, exc),
                       exc_info=exc)
        self.dec.aborted = True
        if self.stream.headers_sent or self.done:
            self.reset()
        else:  # through the encoder filters unless the response already entered them
            self.send_local_reply(500, b"", "filter_raised_exception")

    # -- end of the stream -------------------------------------------------------------------

    def destroy(self) -> None:
        """Last: stop helpers, tell the filters, and drop the references between the
        stream, the chain and the filters (so refcounting frees them, not the GC)."""
        if self.helpers:
            for g in self.helpers:
                if not g.dead:
                    g.kill(block=False)
        if self.reader is not None and not self.reader.dead:
            self.reader.kill(block=False)
        for f in self.filters:
            if type(f).quiet_end:
                continue
            try:
                f.on_stream_complete()
                f.on_destroy()
            except Exception as exc:  # noqa: BLE001
                spec = next((x.spec for x in self.dec.entries + self.enc.entries
                             if x.filter is f), None)
                if spec is not None:
                    spec.errors.inc()
                _log.error("http filter raised on destroy", error=repr(exc))
        self.dec.entries = self.enc.entries = self.filters = ()
        self.terminal = self._spec = None


def _raise(e: BaseException):
    raise e


def _local_response(request, status: int, body: bytes | None, headers, grpc_status=None):
    """The head (and body) of a local reply; gRPC requests get a trailers-only reply."""
    if grpc.is_grpc(request):
        return grpc.local_reply_head(request, status, body, grpc_status), b""
    h = Headers(list(headers) if headers else [])
    if body and "content-type" not in h:  # a filter's own (ext_authz's denial) wins
        h.add("content-type", "text/plain")
    if body or request.version != "HTTP/2":  # Envoy 1.40: no "0" over HTTP/2
        h.add("content-length", str(len(body) if body else 0))
    resp = ResponseHead(status, h)
    resp.content_length = len(body) if body else 0
    return resp, body or b""

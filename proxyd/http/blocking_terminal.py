"""A terminal decoder filter whose exchange runs in the stream's greenlet (the router).

The filter side only records what reached it (headers, decoded data, trailers) and tells
the filter manager it is ready; the manager then calls `serve()` from the stream's
greenlet. `serve` sees a stream-like object (this filter): `read_body()` yields the
request data as the filters before it let it through, and `send_headers/send_data/
send_trailers` enter the encoder filters. A callback data plane replaces `serve` with an
upstream request driven by these same filter calls.
"""
from __future__ import annotations

from collections import deque

from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus
from proxyd.http.filter import StreamDecoderFilter
from proxyd.http.filter_manager import _UNSET
from proxyd.http.stream_errors import LocalReplySent


class BlockingTerminalFilter(StreamDecoderFilter):
    quiet_end = True
    # the stream as serve() sees it: set when the filter is added to a stream
    fm = hcm = request = info = None
    ready = False           # headers arrived: the manager should call serve()
    replaced = False        # someone else answered the stream meanwhile
    headers_sent = False
    request_complete = False
    trailers = None

    _body: deque | None = None   # request data that reached this filter, not yet read

    def serve(self) -> None:
        raise NotImplementedError

    # -- filter side ---------------------------------------------------------------------

    def set_decoder_filter_callbacks(self, callbacks) -> None:
        self.decoder_callbacks = callbacks
        fm = self.fm = callbacks.fm
        fm.terminal = self
        stream = fm.stream
        self.hcm = stream.hcm
        self.request = stream.request
        self.info = stream.info

    def decode_headers(self, headers, end_stream: bool):
        self.request_complete = end_stream
        self.ready = True
        self.fm.notify()
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool):
        if data:
            if self._body is None:
                self._body = deque()
            self._body.append(bytes(data) if type(data) is bytearray else data)
        if end_stream:
            self.request_complete = True
        self.fm.notify()
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER

    def decode_trailers(self, trailers):
        self.trailers = trailers
        self.request_complete = True
        self.fm.notify()
        return FilterTrailersStatus.STOP_ITERATION

    # -- the stream as serve() sees it -------------------------------------------------------

    @property
    def route(self):
        fm = self.fm
        r = fm._route
        return fm.route() if r is _UNSET else r

    def read_body(self):
        """The next request body chunk that passed the filters, or None at its end."""
        fm = self.fm
        while not self._body:
            if self.request_complete or self.replaced:
                return None
            fm.pull()
        return self._body.popleft()

    def send_headers(self, resp, end_stream: bool) -> None:
        if self.replaced:
            raise LocalReplySent()
        self.headers_sent = True
        self.fm.encode_headers(resp, end_stream)
        if self.fm.enc.above_limit:
            self._backpressure()

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.replaced:
            raise LocalReplySent()
        fm = self.fm
        enc = fm.enc
        if enc.entries or enc.aborted:
            enc.data(0, data, end_stream)
            if enc.above_limit:
                self._backpressure()
        else:  # no encoder filters: straight to the codec (serve() flushes)
            fm.stream.send_data(data, end_stream)
            if end_stream:
                fm.done = True

    def send_trailers(self, trailers) -> None:
        if self.replaced:
            raise LocalReplySent()
        self.fm.enc.trailers_(0, trailers)

    def _backpressure(self) -> None:
        """An encoder filter holding data above its watermark pauses the relay."""
        fm = self.fm
        while fm.enc.above_limit and not fm.done:
            fm.run_posted()
            if fm.enc.above_limit and not fm.done:
                fm.wait()

    def flush(self) -> None:
        self.fm.stream.flush()

    def reset(self, *code) -> None:
        fm = self.fm
        fm.dec.aborted = fm.enc.aborted = True
        fm.done = True
        fm.stream.reset(*code)

    def local_reply(self, status: int, body: bytes | None, details: str, flag: str | None = None,
                    headers: list | None = None) -> None:
        self.fm.send_local_reply(status, body, details, flag, headers)

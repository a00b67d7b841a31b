"""FilterManager iteration semantics in process, against a recording stream (the codec
end) and recording filters: what reaches which filter, in which order, with which
end_stream, after which resume. The process-level tests (test_filter_chain.py) cover
the same contract through real sockets."""
from __future__ import annotations

import pytest

from proxyd.http.filter import FilterDataStatus as D
from proxyd.http.filter import FilterHeadersStatus as H
from proxyd.http.filter import FilterTrailersStatus as T
from proxyd.http.filter import StreamFilter
from proxyd.http.filter_manager import FilterManager, FilterSpec
from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead, ResponseHead, StreamInfo


class _Counter:
    def __init__(self):
        self.n = 0

    def inc(self, n=1):
        self.n += n


class _Stats:
    rs_too_large = downstream_rq_too_large = None

    def __init__(self):
        self.rs_too_large = _Counter()
        self.downstream_rq_too_large = _Counter()


class _Routes:
    def match(self, req):
        return None


class _Hcm:
    route_table = _Routes()
    stream_idle_timeout = 1.0
    via = ""                 # HttpConnectionManager.via (none)

    def __init__(self):
        self.stats = _Stats()


class FakeStream:
    """The codec end of the chain: records what would go on the wire."""
    headers_sent = False
    request_complete = True

    def __init__(self):
        self.hcm = _Hcm()
        self.request = RequestHead("POST", "/x", "h", "http", "HTTP/1.1", Headers([]))
        self.info = StreamInfo(1, "a:1", "b:2", "HTTP/1.1")
        self.wire = []

    def send_headers(self, resp, end_stream):
        self.headers_sent = True
        self.wire.append(("headers", resp.status, end_stream))

    def send_data(self, data, end_stream):
        self.wire.append(("data", bytes(data), end_stream))

    def send_trailers(self, trailers):
        self.wire.append(("trailers",))

    def flush(self):
        pass

    def reset(self):
        self.wire.append(("reset",))


class Recorder(StreamFilter):
    """Returns scripted statuses and records every call as (name, event, args)."""

    def __init__(self, name, log, script=None):
        self.name, self.log, self.script = name, log, script or {}

    def _status(self, event, default):
        s = self.script.get(event, default)
        return s(self) if callable(s) else s

    def decode_headers(self, headers, end_stream):
        self.log.append((self.name, "dh", end_stream))
        return self._status("dh", H.CONTINUE)

    def decode_data(self, data, end_stream):
        self.log.append((self.name, "dd", bytes(data), end_stream))
        return self._status("dd", D.CONTINUE)

    def decode_trailers(self, trailers):
        self.log.append((self.name, "dt"))
        return self._status("dt", T.CONTINUE)

    def encode_headers(self, headers, end_stream):
        self.log.append((self.name, "eh", end_stream))
        return self._status("eh", H.CONTINUE)

    def encode_data(self, data, end_stream):
        self.log.append((self.name, "ed", bytes(data), end_stream))
        return self._status("ed", D.CONTINUE)


def chain(*filters):
    stream = FakeStream()
    fm = FilterManager(stream)
    specs = [FilterSpec(f.name, (lambda f: lambda c: c.add_stream_filter(f))(f), False,
                        _Counter()) for f in filters]
    fm.create_filter_chain(specs)
    return stream, fm


def test_stop_iteration_on_headers_still_gives_this_filter_the_data():
    log = []
    a = Recorder("a", log, {"dh": H.STOP_ITERATION, "dd": D.STOP_ITERATION_AND_BUFFER})
    b = Recorder("b", log)
    _, fm = chain(a, b)
    fm.dec.headers(0, fm.stream.request, False)
    fm.dec.data(0, b"one", False)
    fm.dec.data(0, b"two", True)
    assert log == [("a", "dh", False), ("a", "dd", b"one", False), ("a", "dd", b"two", True)]
    assert bytes(a.decoder_callbacks.decoding_buffer()) == b"onetwo"
    log.clear()
    fm.dec.resume(a.decoder_callbacks)
    # headers go on without end_stream, then the whole buffer with it
    assert log == [("b", "dh", False), ("b", "dd", b"onetwo", True)]


def test_stop_all_resumes_from_the_stopping_filter_itself():
    log = []
    a = Recorder("a", log, {"dh": H.STOP_ALL_ITERATION_AND_BUFFER})
    b = Recorder("b", log)
    _, fm = chain(a, b)
    fm.dec.headers(0, fm.stream.request, False)
    fm.dec.data(0, b"body", True)
    assert log == [("a", "dh", False)]        # a does not see data while it stopped all
    log.clear()
    fm.dec.resume(a.decoder_callbacks)
    assert log == [("b", "dh", False), ("a", "dd", b"body", True), ("b", "dd", b"body", True)]


def test_no_buffer_at_the_end_still_ends_the_stream_on_resume():
    log = []
    a = Recorder("a", log, {"dd": D.STOP_ITERATION_NO_BUFFER})
    b = Recorder("b", log)
    _, fm = chain(a, b)
    fm.dec.headers(0, fm.stream.request, False)
    fm.dec.data(0, b"dropped", True)
    log.clear()
    fm.dec.resume(a.decoder_callbacks)
    assert log == [("b", "dd", b"", True)]


def test_trailers_wait_at_a_stopped_filter_and_follow_the_buffer():
    log = []
    a = Recorder("a", log, {"dd": D.STOP_ITERATION_AND_BUFFER, "dt": T.STOP_ITERATION})
    b = Recorder("b", log)
    _, fm = chain(a, b)
    fm.dec.headers(0, fm.stream.request, False)
    fm.dec.data(0, b"x", False)
    fm.dec.trailers_(0, Headers([("t", "1")]))
    assert ("b", "dt") not in log
    log.clear()
    fm.dec.resume(a.decoder_callbacks)
    assert log == [("b", "dd", b"x", False), ("b", "dt")]


def test_encoder_chain_runs_in_reverse_and_a_local_reply_goes_through_it():
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    stream, fm = chain(a, b)
    a.decoder_callbacks.send_local_reply(403, b"no")
    assert [x[:2] for x in log] == [("b", "eh"), ("a", "eh"), ("b", "ed"), ("a", "ed")]
    assert stream.wire == [("headers", 403, False), ("data", b"no", True)]
    assert fm.done


def test_local_reply_from_a_stopped_encoder_goes_straight_to_the_codec():
    log = []
    a = Recorder("a", log)
    b = Recorder("b", log, {"eh": lambda f: (f.encoder_callbacks.send_local_reply(418, b"tea"),
                                              H.STOP_ITERATION)[1]})
    stream, fm = chain(a, b)
    fm.encode_headers(ResponseHead(200, Headers([])), False)
    fm.enc.data(0, b"upstream body", True)
    assert stream.wire == [("headers", 418, False), ("data", b"tea", True)]
    assert [x[:2] for x in log] == [("b", "eh")]   # no encoder runs again, none sees the body


def test_response_buffer_over_the_limit_answers_500_and_request_413():
    log = []
    a = Recorder("a", log, {"eh": H.STOP_ITERATION, "ed": D.STOP_ITERATION_AND_BUFFER})
    stream, fm = chain(a)
    fm.buffer_limit = 4
    fm.encode_headers(ResponseHead(200, Headers([])), False)
    fm.enc.data(0, b"12345", False)
    assert stream.wire == [("headers", 500, False), ("data", b"Internal Server Error", True)]
    assert stream.hcm.stats.rs_too_large.n == 1

    a = Recorder("a", log, {"dd": D.STOP_ITERATION_AND_BUFFER})
    stream, fm = chain(a)
    fm.buffer_limit = 4
    fm.dec.headers(0, stream.request, False)
    fm.dec.data(0, b"12345", False)
    assert stream.wire[0] == ("headers", 413, False)
    assert stream.hcm.stats.downstream_rq_too_large.n == 1


def test_watermark_pauses_instead_of_failing():
    log = []
    a = Recorder("a", log, {"dd": D.STOP_ITERATION_AND_WATERMARK})
    stream, fm = chain(a)
    fm.buffer_limit = 4
    fm.dec.headers(0, stream.request, False)
    fm.dec.data(0, b"12345", False)
    assert fm.dec.above_limit and stream.wire == []
    fm.dec.resume(a.decoder_callbacks)
    assert not fm.dec.above_limit


@pytest.mark.parametrize("where", ["dh", "eh"])
def test_a_raising_filter_is_counted_and_answers_500(where):
    log = []

    def boom(_f):
        raise ValueError("bug")
    a = Recorder("a", log, {where: boom})
    stream, fm = chain(a)
    if where == "dh":
        fm.dec.headers(0, stream.request, True)
    else:
        fm.encode_headers(ResponseHead(200, Headers([])), True)
    assert stream.wire[0][:2] == ("headers", 500)
    assert fm.dec.entries[0].spec.errors.n == 1
    assert stream.info.response_code_details == "filter_raised_exception"


def test_data_added_while_decoding_headers_follows_them():
    log = []
    a = Recorder("a", log, {"dh": lambda f: (f.decoder_callbacks.add_decoded_data(b"made up"),
                                              H.CONTINUE)[1]})
    b = Recorder("b", log)
    _, fm = chain(a, b)
    fm.dec.headers(0, fm.stream.request, True)
    assert log == [("a", "dh", True), ("b", "dh", False), ("b", "dd", b"made up", True)]

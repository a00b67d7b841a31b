"""proxyd.http.codec.http2, sans-IO: frames in (built with hyperframe and an HPACK
encoder, independent of the codec under test), events and bytes out."""
from __future__ import annotations

import struct

import pytest
from hpack import Encoder
from hyperframe.frame import (DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame,
                              SettingsFrame, WindowUpdateFrame)

from proxyd.http.codec import http2 as h2c

REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"example.com"),
       (b":path", b"/svc/Call"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


class Peer:
    """The other end, writing raw frames."""

    def __init__(self):
        self.enc = Encoder()

    def headers(self, sid, headers, end=False) -> bytes:
        f = HeadersFrame(sid)
        f.data = self.enc.encode(headers)
        f.flags.add("END_HEADERS")
        if end:
            f.flags.add("END_STREAM")
        return f.serialize()


def data(sid, payload, end=False) -> bytes:
    f = DataFrame(sid)
    f.data = payload
    if end:
        f.flags.add("END_STREAM")
    return f.serialize()


def frames(buf: bytes) -> list:
    out = []
    while buf:
        f, length = Frame.parse_frame_header(memoryview(buf[:9]))
        f.parse_body(memoryview(buf[9:9 + length]))
        out.append(f)
        buf = buf[9 + length:]
    return out


def server(**opts) -> h2c.Http2Codec:
    o = h2c.Http2Options()
    for k, v in opts.items():
        setattr(o, k, v)
    s = h2c.Http2Codec(False, o)
    s.receive(h2c.PREFACE + SettingsFrame(0).serialize())
    s.data_to_send()
    return s


def test_server_preface_carries_envoy_defaults():
    """What Envoy 1.40 sends with no http2_protocol_options: 1024 streams, 16 MiB
    stream and connection windows."""
    s = h2c.Http2Codec(False)
    out = frames(s.data_to_send())
    settings = out[0]
    assert isinstance(settings, SettingsFrame)
    assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 1024
    assert settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 16777216
    wu = out[1]
    assert isinstance(wu, WindowUpdateFrame) and wu.stream_id == 0
    assert wu.window_increment == 16777216 - 65535


def test_configured_settings():
    s = h2c.Http2Codec(False, _opts(7, 1 << 20, 65535))
    out = frames(s.data_to_send())
    assert out[0].settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 7
    assert out[0].settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 1 << 20
    assert len(out) == 1  # connection window left at the RFC's 65535: no WINDOW_UPDATE


def _opts(mcs, sw, cw):
    o = h2c.Http2Options()
    o.max_concurrent_streams, o.initial_stream_window_size, o.initial_connection_window_size = \
        mcs, sw, cw
    return o


def test_request_events_headers_data_trailers_end():
    s = server()
    p = Peer()
    evs = s.receive(p.headers(1, REQ) + data(1, b"\0\0\0\0\3abc") +
                    p.headers(1, [(b"x-t", b"1")], end=True))
    assert evs[0] == (h2c.HEADERS, 1, [(k.decode(), v.decode()) for k, v in REQ], False)
    assert evs[1] == (h2c.DATA, 1, b"\0\0\0\0\3abc", 8)
    assert evs[2] == (h2c.TRAILERS, 1, [("x-t", "1")])
    assert evs[3] == (h2c.END, 1)


def test_headers_with_end_stream_flag():
    s = server()
    evs = s.receive(Peer().headers(1, REQ[:4], end=True))
    assert evs == [(h2c.HEADERS, 1, [(k.decode(), v.decode()) for k, v in REQ[:4]], True),
                   (h2c.END, 1)]


def test_latin1_header_values_round_trip():
    s = server()
    evs = s.receive(Peer().headers(1, REQ[:4] + [(b"x-l1", b"caf\xe9")], end=True))
    assert ("x-l1", "caf\u00e9") in evs[0][2]
    s.send_headers(1, [(":status", "200"), ("x-l1", "caf\u00e9")], True)
    from hpack import Decoder
    hf = [f for f in frames(s.data_to_send()) if isinstance(f, HeadersFrame)][0]
    assert (b"x-l1", b"caf\xe9") in Decoder().decode(hf.data, raw=True)


def test_window_update_sent_only_when_acknowledged():
    s = server(initial_stream_window_size=65535, initial_connection_window_size=65535)
    p = Peer()
    s.receive(p.headers(1, REQ) + data(1, b"x" * 16000) * 3)
    assert not [f for f in frames(s.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    s.acknowledge(1, 48000)  # h2 updates once half the window is consumed
    wus = [f for f in frames(s.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert {f.stream_id for f in wus} == {0, 1}


def test_send_respects_peer_window_and_reports_window_events():
    s = server()
    s.receive(Peer().headers(1, REQ[:4], end=True))
    s.send_headers(1, [(":status", "200")], False)
    assert s.window(1) == 65535
    s.send_data(1, b"y" * 16384, False)
    assert s.window(1) == 65535 - 16384
    wu, wu0 = WindowUpdateFrame(1), WindowUpdateFrame(0)
    wu.window_increment = wu0.window_increment = 1000
    assert s.receive(wu.serialize() + wu0.serialize()) == [(h2c.WINDOW, 1), (h2c.WINDOW, 0)]
    assert s.window(1) == 65535 - 16384 + 1000


def test_rst_stream_event_and_reset():
    s = server()
    s.receive(Peer().headers(1, REQ))
    f = RstStreamFrame(1)
    f.error_code = h2c.CANCEL
    assert s.receive(f.serialize()) == [(h2c.RESET, 1, h2c.CANCEL)]
    assert s.reset(1, h2c.INTERNAL_ERROR) is False  # already closed: nothing to send


def test_our_goaway_keeps_in_flight_streams_usable():
    s = server()
    p = Peer()
    s.receive(p.headers(1, REQ[:4], end=True) + p.headers(3, REQ[:4], end=True))
    s.goaway()
    out = frames(s.data_to_send())
    assert isinstance(out[0], GoAwayFrame) and out[0].last_stream_id == 3
    assert out[0].error_code == 0
    s.send_headers(1, [(":status", "200")], True)
    s.send_headers(3, [(":status", "200")], True)
    assert len(frames(s.data_to_send())) == 2


def test_received_goaway_lets_streams_below_last_id_finish():
    c = h2c.Http2Codec(True)
    c.receive(SettingsFrame(0).serialize())
    sids = [c.next_stream_id(), None]
    c.send_headers(sids[0], [(k.decode(), v.decode()) for k, v in REQ[:4]], True)
    sids[1] = c.next_stream_id()
    c.send_headers(sids[1], [(k.decode(), v.decode()) for k, v in REQ[:4]], True)
    g = GoAwayFrame(0)
    g.last_stream_id = 1
    p = Peer()
    evs = c.receive(g.serialize() + p.headers(1, [(b":status", b"200")]) + data(1, b"ok", True))
    assert evs[0] == (h2c.GOAWAY, 1, 0)
    assert evs[1][:2] == (h2c.HEADERS, 1)
    assert evs[2] == (h2c.DATA, 1, b"ok", 2)
    assert c.goaway_received


def test_settings_event_reports_peer_max_concurrent_streams():
    c = h2c.Http2Codec(True)
    f = SettingsFrame(0)
    f.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] = 3
    assert c.receive(f.serialize()) == [(h2c.SETTINGS, 3)]
    assert c.peer_max_concurrent_streams == 3


def test_protocol_error_raises_and_queues_goaway():
    s = server()
    bad = Peer().headers(2, REQ[:4])  # even stream id from a client
    with pytest.raises(h2c.H2ProtocolError):
        s.receive(bad)
    out = frames(s.data_to_send())
    assert isinstance(out[-1], GoAwayFrame) and out[-1].error_code == h2c.PROTOCOL_ERROR


def test_goaway_frame_bytes():
    assert h2c._goaway_frame(5, 2) == (b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" +
                                       struct.pack(">II", 5, 2))


def _rsts(buf: bytes) -> list:
    return [(f.stream_id, f.error_code) for f in frames(buf) if isinstance(f, RstStreamFrame)]


def test_stream_errors_reset_only_their_stream():
    """RFC 9113 5.4.2: over the stream limit, a malformed header block, a stream window
    overrun and a body against its content-length each reset one stream."""
    s = server(max_concurrent_streams=2, initial_stream_window_size=100)
    p = Peer()
    evs = s.receive(p.headers(1, REQ[:4]) + p.headers(3, REQ[:4]) + p.headers(5, REQ[:4]))
    assert [e[:2] for e in evs if e[0] == h2c.HEADERS] == [(h2c.HEADERS, 1), (h2c.HEADERS, 3)]
    assert _rsts(s.data_to_send()) == [(5, h2c.REFUSED_STREAM)]
    # the refused stream's header block was still decoded: HPACK stays in step
    evs = s.receive(data(1, b"x" * 150))  # stream window is 100
    assert evs == [(h2c.RESET, 1, h2c.FLOW_CONTROL_ERROR)]
    assert _rsts(s.data_to_send()) == [(1, h2c.FLOW_CONTROL_ERROR)]
    evs = s.receive(p.headers(7, REQ[:4] + [(b"Upper", b"1")]) +
                    p.headers(9, REQ[:4] + [(b"content-length", b"2")]) + data(9, b"abc"))
    assert evs[-1] == (h2c.RESET, 9, h2c.PROTOCOL_ERROR)
    assert _rsts(s.data_to_send()) == [(7, h2c.PROTOCOL_ERROR), (9, h2c.PROTOCOL_ERROR)]
    evs = s.receive(data(3, b"ok", True) + p.headers(11, REQ[:4], end=True))
    assert evs == [(h2c.DATA, 3, b"ok", 2), (h2c.END, 3),
                   (h2c.HEADERS, 11, [(k.decode(), v.decode()) for k, v in REQ[:4]], True),
                   (h2c.END, 11)]
    s.send_headers(3, [(":status", "200")], True)
    assert not any(isinstance(f, GoAwayFrame) for f in frames(s.data_to_send()))


def test_client_side_body_on_head_resets_the_stream():
    c = h2c.Http2Codec(True)
    c.receive(SettingsFrame(0).serialize())
    sid = c.next_stream_id()
    c.send_headers(sid, [(":method", "HEAD"), (":scheme", "http"), (":authority", "a"),
                         (":path", "/")], True)
    c.data_to_send()
    p = Peer()
    evs = c.receive(p.headers(sid, [(b":status", b"200"), (b"content-length", b"5")]) +
                    data(sid, b"hello", True))
    assert evs[-1] == (h2c.RESET, sid, h2c.PROTOCOL_ERROR)
    assert _rsts(c.data_to_send()) == [(sid, h2c.PROTOCOL_ERROR)]

"""HTTP/2 codec, sans-IO: a thin wrapper over hyper-h2's state machine.

The implementation is chosen by `IMPL` alone: jh2 is hyper-h2 with its HPACK in Rust
(same API). On this proxy's codec path (tests/http2/bench_codec.py) it took 92-97 us
per request against h2's 193-315 us, and 1.41M against 1.76M instructions (callgrind,
including the bench's client side); h2 stays a one-word fallback.

The wrapper exists to keep h2's event classes and quirks out of the connection code:

- events come out as small tuples (`HEADERS`, `DATA`, ...), headers as latin-1 `str`
  pairs, the way the rest of proxyd holds them;
- h2 treats a GOAWAY (sent or received) as the end of the connection and refuses to
  finish streams already in flight, which HTTP/2 allows (RFC 9113 6.8); we send our
  GOAWAY as raw bytes and give h2 a state table in which a received one keeps the
  connection open; the connection code enforces the "no new streams" half itself;
- Envoy's settings (window sizes, max concurrent streams) are applied at the start;
- stream-level errors stay stream-level (RFC 9113 5.4.2), where h2 would end the whole
  connection: a HEADERS frame over our SETTINGS_MAX_CONCURRENT_STREAMS gets RST_STREAM
  REFUSED_STREAM, a malformed message (bad header block fields, a body not matching
  content-length or sent in reply to HEAD) PROTOCOL_ERROR, a stream window overrun
  FLOW_CONTROL_ERROR; the other streams go on. Connection errors (bad preface, HPACK,
  frame size, the connection window) still end it with GOAWAY;
- on the server side, Envoy's flood limits (http2_limits) count every frame in and
  every frame queued out; an inbound flood is a connection error (FloodError, GOAWAY
  ENHANCE_YOUR_CALM), the outbound ones the connection checks (`check_outbound`).
"""
from __future__ import annotations

import importlib
import struct

from proxyd.http.codec import http2_limits
from proxyd.http.codec.hpack_guard import GuardedDecoder

IMPL = "jh2"

_connection = importlib.import_module(IMPL + ".connection")
_config = importlib.import_module(IMPL + ".config")
_events = importlib.import_module(IMPL + ".events")
_settings = importlib.import_module(IMPL + ".settings")
_exceptions = importlib.import_module(IMPL + ".exceptions")

_frames = importlib.import_module(IMPL + ".hyperframe.frame")
_stream = importlib.import_module(IMPL + ".stream")

H2ProtocolError = _exceptions.ProtocolError
StreamClosedError = _exceptions.StreamClosedError


_ErrorCodes = importlib.import_module(IMPL + ".errors").ErrorCodes


class CompressionError(H2ProtocolError):
    """A malformed HPACK block: the connection ends with GOAWAY COMPRESSION_ERROR."""
    error_code = _ErrorCodes.COMPRESSION_ERROR


class FloodError(H2ProtocolError):
    """An inbound flood limit passed (http2_limits): GOAWAY ENHANCE_YOUR_CALM; `stat`
    names the http2.* counter."""
    error_code = _ErrorCodes.ENHANCE_YOUR_CALM

    def __init__(self, flood: http2_limits.Flood):
        super().__init__(str(flood))
        self.stat = flood.stat


Flood = http2_limits.Flood


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Envoy 1.40's Http2ProtocolOptions defaults as it sends them (its SETTINGS and first
# WINDOW_UPDATE; protocol.proto's comments still say 2^31-1 and 256 MiB). The windows
# bound what a client may send ahead of what the upstream takes: request DATA is
# acknowledged only as the router hands it on, so an upstream that never reads holds
# at most a window per stream and the connection window per connection.
DEFAULT_MAX_CONCURRENT_STREAMS = 1024
DEFAULT_STREAM_WINDOW = 16 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 16 * 1024 * 1024
SPEC_INITIAL_WINDOW = 65535

# error codes (RFC 9113 7)
NO_ERROR = 0
PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2
FLOW_CONTROL_ERROR = 3
STREAM_CLOSED = 5
REFUSED_STREAM = 7
CANCEL = 8
ENHANCE_YOUR_CALM = 11

# event kinds
HEADERS = 0    # (HEADERS, sid, [(name, value)], end_stream)  request or final response head
DATA = 1       # (DATA, sid, bytes, flow_controlled_length)
TRAILERS = 2   # (TRAILERS, sid, [(name, value)])
END = 3        # (END, sid)
RESET = 4      # (RESET, sid, error_code)
WINDOW = 5     # (WINDOW, sid)  sid 0: the connection window or initial window changed
GOAWAY = 6     # (GOAWAY, last_stream_id, error_code)
INFO = 7       # (INFO, sid, headers)  1xx interim response
SETTINGS = 8   # (SETTINGS, max_concurrent_streams)  the peer's settings changed

# RFC 9113 8.2.2: connection-specific fields never travel in HTTP/2
CONNECTION_SPECIFIC = frozenset((
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
    "te", "host", "http2-settings",
))


class Http2Options:
    """The subset of envoy.config.core.v3.Http2ProtocolOptions proxyd implements."""

    __slots__ = ("max_concurrent_streams", "initial_stream_window_size",
                 "initial_connection_window_size", "allow_connect") + tuple(http2_limits.DEFAULTS)

    def __init__(self, msg=None):
        def get(field, default):
            return getattr(msg, field).value if msg is not None and msg.HasField(field) else default
        self.max_concurrent_streams = get("max_concurrent_streams", DEFAULT_MAX_CONCURRENT_STREAMS)
        self.initial_stream_window_size = get("initial_stream_window_size", DEFAULT_STREAM_WINDOW)
        self.initial_connection_window_size = get("initial_connection_window_size",
                                                  DEFAULT_CONNECTION_WINDOW)
        for field, default in http2_limits.DEFAULTS.items():
            setattr(self, field, get(field, default))
        # RFC 8441 extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL), server side
        self.allow_connect = bool(msg is not None and msg.allow_connect)


def _transitions_surviving_goaway() -> dict:
    """h2's connection state table, except that a received GOAWAY leaves the connection
    open (for the streams it lets finish) instead of closing it mid-read."""
    CS, CI = _connection.ConnectionState, _connection.ConnectionInputs
    t = dict(_connection.H2ConnectionStateMachine._transitions)
    for state in (CS.IDLE, CS.CLIENT_OPEN, CS.SERVER_OPEN):
        t[(state, CI.RECV_GOAWAY)] = (None, state)
    return t


_TRANSITIONS = _transitions_surviving_goaway()


def _allow_plain_connect() -> None:
    """h2 requires :scheme and :path in every request, but a CONNECT without :protocol
    has neither (RFC 9113 8.5): it is :method and :authority alone. Extended CONNECT
    (RFC 8441) and every other request keep h2's checks."""
    utilities = importlib.import_module(IMPL + ".utilities")
    check = utilities._check_pseudo_header_field_acceptability

    def acceptable(pseudo_headers, method, flags):
        if (method == b"CONNECT" and not flags.is_response_header and not flags.is_trailer
                and not pseudo_headers & {":protocol", b":protocol"}):
            if pseudo_headers & {":scheme", b":scheme", ":path", b":path"}:
                raise H2ProtocolError("CONNECT with :scheme or :path")
            if not pseudo_headers & {":authority", b":authority"}:
                raise H2ProtocolError("CONNECT without :authority")
            return
        check(pseudo_headers, method, flags)
    if getattr(check, "__name__", "") != "acceptable":
        utilities._check_pseudo_header_field_acceptability = acceptable


_allow_plain_connect()


class _Connection(_connection.H2Connection):
    """h2's connection with stream errors kept to their stream (RFC 9113 5.4.2) and its
    HPACK decoder behind hpack_guard (jh2's Rust decoder panics on truncated blocks)."""

    limits = None  # http2_limits.FrameLimits, on the server side

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder = GuardedDecoder(self.decoder, CompressionError, (_connection.HPACKError,),
                                      lambda: self.local_settings.header_table_size)

    def _receive_frame(self, frame):
        limits = self.limits
        if limits is not None:
            kind = frame.type
            try:
                limits.inbound(kind, frame.body_len == 0, "END_STREAM" in frame.flags,
                               kind == 0x1 and frame.stream_id not in self.streams)
            except http2_limits.Flood as e:
                raise FloodError(e) from None
        return super()._receive_frame(frame)

    def _stream_error(self, stream, code: int, announce: bool = True):
        """Close `stream` with RST_STREAM `code`; returns (frames, events). The event (a
        local StreamReset) tells the application about a stream it already knows."""
        sm = stream.state_machine
        sm.state = _stream.StreamState.CLOSED
        sm.stream_closed_by = _stream.StreamClosedBy.SEND_RST_STREAM
        f = _frames.RstStreamFrame(stream.stream_id)
        f.error_code = code
        if not announce:
            return [f], []
        ev = _events.StreamReset()
        ev.stream_id = stream.stream_id
        ev.error_code = code
        ev.remote_reset = False
        return [f], [ev]

    def _receive_headers_frame(self, frame):
        sid = frame.stream_id
        new = sid not in self.streams
        refuse = new and self.open_inbound_streams >= self.local_settings.max_concurrent_streams
        # decoded even when refused: the HPACK state is the connection's (an error here
        # is a connection error, COMPRESSION_ERROR in spirit)
        headers = _connection._decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(_connection.ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(
            sid, _connection.AllowedStreamIDs(not self.config.client_side))
        if refuse:
            frames, _ = self._stream_error(stream, REFUSED_STREAM, False)
            return frames, events
        try:
            frames, stream_events = stream.receive_headers(
                headers, "END_STREAM" in frame.flags, self.config.header_encoding)
        except StreamClosedError:
            raise
        except H2ProtocolError:
            frames, stream_events = self._stream_error(stream, PROTOCOL_ERROR, not new)
            return frames, events + stream_events
        if "PRIORITY" in frame.flags:
            p_frames, p_events = self._receive_priority_frame(frame)
            stream_events[0].priority_updated = p_events[0]
            stream_events.extend(p_events)
        return frames, events + stream_events

    def _receive_data_frame(self, frame):
        n = frame.flow_controlled_length
        events = self.state_machine.process_input(_connection.ConnectionInputs.RECV_DATA)
        conn_window = self._inbound_flow_control_window_manager
        conn_window.window_consumed(n)  # overrunning the connection window: GOAWAY
        try:
            stream = self._get_stream_by_id(frame.stream_id)  # idle: connection error
            frames, stream_events = stream.receive_data(frame.data, "END_STREAM" in frame.flags, n)
        except StreamClosedError as e:
            return self._handle_data_on_closed_stream(events, e, frame)
        except _exceptions.NoSuchStreamError:
            raise
        except H2ProtocolError as e:
            code = (FLOW_CONTROL_ERROR if isinstance(e, _exceptions.FlowControlError)
                    else PROTOCOL_ERROR)
            frames, stream_events = self._stream_error(stream, code)
            # the dropped bytes still count against the connection window: hand them back
            inc = conn_window.process_bytes(n)
            if inc:
                w = _frames.WindowUpdateFrame(0)
                w.window_increment = inc
                frames.append(w)
            return frames, events + stream_events
        return frames, events + stream_events


def _goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    # frame header: 24-bit length 8, type 0x7, no flags, stream 0; then the payload
    return b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(
        ">II", last_stream_id & 0x7FFFFFFF, error_code)


def _str_headers(headers) -> list:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


class Http2Codec:
    """One HTTP/2 connection's protocol state, either side."""

    __slots__ = ("_c", "client_side", "_dispatch", "goaway_sent", "goaway_received", "limits",
                 "_counted", "_taken")

    def __init__(self, client_side: bool, options: Http2Options | None = None,
                 max_header_list_size: int = 60 * 1024):
        o = options or Http2Options()
        cfg = _config.H2Configuration(
            client_side=client_side, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=True, normalize_inbound_headers=True)
        c = self._c = _Connection(config=cfg)
        c.state_machine._transitions = _TRANSITIONS
        S = _settings.SettingCodes
        c.local_settings = _settings.Settings(client=client_side, initial_values={
            S.MAX_CONCURRENT_STREAMS: o.max_concurrent_streams,
            S.INITIAL_WINDOW_SIZE: o.initial_stream_window_size,
            S.MAX_HEADER_LIST_SIZE: max_header_list_size,
            **({S.ENABLE_CONNECT_PROTOCOL: 1} if o.allow_connect and not client_side else {}),
        })
        self.client_side = client_side
        # Envoy's flood limits guard the server side (a client may not make us queue
        # or chew without bound); _counted: bytes of the send buffer already counted,
        # _taken: (frames, control frames) handed out by the last data_to_send()
        self.limits = c.limits = None if client_side else http2_limits.FrameLimits(o)
        self._counted = 0
        self._taken = (0, 0)
        self.goaway_sent = False
        self.goaway_received = False
        c.initiate_connection()
        extra = o.initial_connection_window_size - SPEC_INITIAL_WINDOW
        if extra > 0:
            c.increment_flow_control_window(extra)
        E = _events
        self._dispatch = {
            E.RequestReceived: self._on_headers,
            E.ResponseReceived: self._on_headers,
            E.DataReceived: lambda e: (DATA, e.stream_id, e.data, e.flow_controlled_length),
            E.TrailersReceived: lambda e: (TRAILERS, e.stream_id, _str_headers(e.headers)),
            E.StreamEnded: lambda e: (END, e.stream_id),
            E.StreamReset: lambda e: (RESET, e.stream_id, int(e.error_code or 0)),
            E.WindowUpdated: lambda e: (WINDOW, e.stream_id),
            E.RemoteSettingsChanged: self._on_settings,
            E.ConnectionTerminated: self._on_goaway,
            E.InformationalResponseReceived:
                lambda e: (INFO, e.stream_id, _str_headers(e.headers)),
        }

    @staticmethod
    def _on_headers(e):
        return (HEADERS, e.stream_id, _str_headers(e.headers), e.stream_ended is not None)

    def _on_settings(self, e):
        return (SETTINGS, self._c.remote_settings.max_concurrent_streams)

    def _on_goaway(self, e):
        self.goaway_received = True
        return (GOAWAY, e.last_stream_id if e.last_stream_id is not None else 0x7FFFFFFF,
                int(e.error_code or 0))

    # -- input -------------------------------------------------------------------------

    def receive(self, data: bytes) -> list:
        """Feed bytes from the peer; return events. Raises H2ProtocolError (the
        connection is then dead; data_to_send() holds the GOAWAY to send)."""
        c = self._c
        dispatch = self._dispatch
        out = []
        for e in c.receive_data(data):
            f = dispatch.get(type(e))
            if f is not None:
                out.append(f(e))
        return out

    def acknowledge(self, sid: int, n: int) -> None:
        """`n` flow-controlled bytes of stream `sid` were consumed: let the peer send more."""
        if n:
            self._c.acknowledge_received_data(n, sid)

    # -- output ------------------------------------------------------------------------

    def next_stream_id(self) -> int:
        return self._c.get_next_available_stream_id()

    def send_headers(self, sid: int, headers: list, end_stream: bool) -> None:
        """`headers`: (str, str) pairs, pseudo-headers first."""
        self._c.send_headers(sid, [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
                             end_stream=end_stream)

    def send_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        """`data` must fit `window(sid)` and `max_frame`."""
        self._c.send_data(sid, data, end_stream=end_stream)

    def end_stream(self, sid: int) -> None:
        self._c.end_stream(sid)

    def reset(self, sid: int, code: int) -> bool:
        """RST_STREAM; False if the stream was already closed (nothing sent)."""
        try:
            self._c.reset_stream(sid, code)
            return True
        except (StreamClosedError, H2ProtocolError):
            return False

    def goaway(self, last_stream_id: int | None = None, code: int = NO_ERROR) -> None:
        """Send GOAWAY but keep serving streams up to `last_stream_id`."""
        if last_stream_id is None:
            last_stream_id = self._c.highest_inbound_stream_id
        self.goaway_sent = True
        self._c._data_to_send += _goaway_frame(last_stream_id, code)

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        self._c.ping(opaque)

    def window(self, sid: int) -> int:
        """Bytes we may send on `sid` now (stream and connection windows)."""
        return self._c.local_flow_control_window(sid)

    def receive_window_held(self) -> float:
        """The share of our connection receive window taken by DATA not yet
        acknowledged (handed on): a stalled stream can hold all of it."""
        m = self._c._inbound_flow_control_window_manager
        held = m.max_window_size - m.current_window_size - m._bytes_processed
        return held / m.max_window_size if m.max_window_size > 0 else 1.0

    @property
    def max_frame(self) -> int:
        return self._c.max_outbound_frame_size

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self._c.remote_settings.max_concurrent_streams

    @property
    def highest_inbound_stream_id(self) -> int:
        return self._c.highest_inbound_stream_id

    def header_block_pending(self) -> bool:
        """Part of a HEADERS frame, or a HEADERS frame waiting for its CONTINUATION, has
        arrived (request_headers_timeout runs)."""
        buf = self._c.incoming_buffer
        if buf._headers_buffer:
            return True
        data, off = buf._data, buf._data_offset
        return len(data) > off + 3 and data[off + 3] in (0x1, 0x9)

    def data_to_send(self) -> bytes:
        c = self._c
        if not c._data_to_send:
            return b""
        limits = self.limits
        if limits is not None:
            limits.queue(c._data_to_send, self._counted)
            self._counted = 0
            self._taken = (limits.queued, limits.queued_control)
        return c.data_to_send()

    def written(self) -> None:
        """What the last data_to_send() returned is on the socket."""
        if self.limits is not None:
            self.limits.written(*self._taken)
            self._taken = (0, 0)

    def check_outbound(self) -> None:
        """Raise Flood if more frames wait to be written than Envoy's limits allow."""
        limits = self.limits
        if limits is not None:
            self._counted = limits.queue(self._c._data_to_send, self._counted)
            limits.check_outbound()

    def pending(self) -> int:
        return len(self._c._data_to_send)

"""Envoy's HTTP/2 flood limits (its codec's ProtocolConstraints), sans-IO.

A peer can make us queue frames it never reads (each PING and SETTINGS is answered) or
make us work on frames that carry nothing. Envoy bounds both with the
Http2ProtocolOptions below and ends the connection past them, counting `http2.<stat>`:

- outbound frames queued and not yet written: all types (`max_outbound_frames`,
  10000: `outbound_flood`) and PING, SETTINGS and RST_STREAM (`max_outbound_control_frames`,
  1000: `outbound_control_flood`);
- inbound DATA/HEADERS/CONTINUATION with an empty payload and no END_STREAM, in a row
  (`max_consecutive_inbound_frames_with_empty_payload`, 1: `inbound_empty_frames_flood`);
- inbound PRIORITY frames over `max_inbound_priority_frames_per_stream` (100) x
  (1 + streams opened) (`inbound_priority_frames_flood`);
- inbound WINDOW_UPDATE frames over 5 + 2 x (streams opened +
  `max_inbound_window_update_frames_per_data_frame_sent` (10) x DATA frames sent)
  (`inbound_window_update_frames_flood`).
"""
from __future__ import annotations

DEFAULTS = {
    "max_outbound_frames": 10000,
    "max_outbound_control_frames": 1000,
    "max_consecutive_inbound_frames_with_empty_payload": 1,
    "max_inbound_priority_frames_per_stream": 100,
    "max_inbound_window_update_frames_per_data_frame_sent": 10,
}

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = \
    0x0, 0x1, 0x2, 0x3, 0x4, 0x6, 0x8, 0x9
CONTROL = frozenset((PING, SETTINGS, RST_STREAM))


class Flood(Exception):
    """A limit was passed; `stat` is the `http2.*` counter Envoy increments."""

    def __init__(self, stat: str, message: str):
        super().__init__(message)
        self.stat = stat


class FrameLimits:
    """One connection's frame accounting against the limits in `options`."""

    __slots__ = ("max_outbound", "max_control", "max_empty", "max_priority", "max_window_update",
                 "queued", "queued_control", "data_frames_sent", "opened_streams",
                 "empty_in_a_row", "priority_frames", "window_update_frames", "resets_received")

    def __init__(self, options):
        self.max_outbound = options.max_outbound_frames
        self.max_control = options.max_outbound_control_frames
        self.max_empty = options.max_consecutive_inbound_frames_with_empty_payload
        self.max_priority = options.max_inbound_priority_frames_per_stream
        self.max_window_update = options.max_inbound_window_update_frames_per_data_frame_sent
        self.queued = 0           # frames queued and not yet written to the socket
        self.queued_control = 0   # of which PING, SETTINGS, RST_STREAM
        self.data_frames_sent = 0
        self.opened_streams = 0
        self.empty_in_a_row = 0
        self.priority_frames = 0
        self.window_update_frames = 0
        self.resets_received = 0  # RST_STREAM frames from the peer (http2.rx_reset)

    # -- outbound ------------------------------------------------------------------------

    def queue(self, buf, start: int) -> int:
        """Count the frames serialized into `buf` from `start` on; returns the new end."""
        end = len(buf)
        pos = start
        while pos + 9 <= end:
            kind = buf[pos + 3]
            self.queued += 1
            if kind in CONTROL:
                self.queued_control += 1
            elif kind == DATA:
                self.data_frames_sent += 1
            pos += 9 + ((buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2])
        return pos

    def written(self, frames: int, control: int) -> None:
        self.queued -= frames
        self.queued_control -= control

    def check_outbound(self) -> None:
        if self.queued > self.max_outbound:
            raise Flood("outbound_flood", "Too many frames in the outbound queue.")
        if self.queued_control > self.max_control:
            raise Flood("outbound_control_flood",
                        "Too many control frames in the outbound queue.")

    # -- inbound -------------------------------------------------------------------------

    def inbound(self, kind: int, empty: bool, end_stream: bool, new_stream: bool) -> None:
        if kind in (DATA, HEADERS, CONTINUATION):
            if new_stream:
                self.opened_streams += 1
            if empty and not end_stream:
                self.empty_in_a_row += 1
                if self.empty_in_a_row > self.max_empty:
                    raise Flood("inbound_empty_frames_flood",
                                "Too many consecutive frames with an empty payload")
            else:
                self.empty_in_a_row = 0
        elif kind == PRIORITY:
            self.priority_frames += 1
            if self.priority_frames > self.max_priority * (1 + self.opened_streams):
                raise Flood("inbound_priority_frames_flood", "Too many PRIORITY frames")
        elif kind == RST_STREAM:
            self.resets_received += 1
        elif kind == WINDOW_UPDATE:
            self.window_update_frames += 1
            if self.window_update_frames > 5 + 2 * (
                    self.opened_streams + self.max_window_update * self.data_frames_sent):
                raise Flood("inbound_window_update_frames_flood", "Too many WINDOW_UPDATE frames")

"""Why a stream's greenlet stopped early: raised into or through the stream's code."""
from __future__ import annotations


class DownstreamGone(Exception):
    """The client closed or reset while we were writing to it."""


class RequestTimeout(Exception):
    """HCM request_timeout: the whole request did not arrive in time (408)."""


class StreamIdleTimeout(Exception):
    """HCM stream_idle_timeout: nothing happened on the stream for that long (408, or a
    reset once the response started)."""


class MaxStreamDurationReached(Exception):
    """HCM or route max_stream_duration: the stream lived that long (504, or 408 while
    the request is still arriving; a reset once the response started)."""


class LocalReplySent(Exception):
    """A filter answered while the terminal filter was still relaying: its exchange stops."""


STREAM_CONTROL = (DownstreamGone, RequestTimeout, StreamIdleTimeout, MaxStreamDurationReached,
                  LocalReplySent)
"""Control flow a filter guard must let through (never reported as a filter error)."""

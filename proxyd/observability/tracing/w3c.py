"""W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` and `tracestate`,
as Envoy's OpenTelemetry tracer reads and writes them."""
from __future__ import annotations

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class SpanContext:
    __slots__ = ("trace_id", "span_id", "sampled", "trace_state")

    def __init__(self, trace_id: str, span_id: str, sampled: bool, trace_state: str = ""):
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.trace_state = trace_state


def parse_traceparent(value: str) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) from `version-traceid-parentid-flags`; raises
    ValueError as Envoy refuses it: 55 characters, four lower-hex fields of 2/32/16/2,
    version not ff, ids not all zero."""
    if len(value) != 55:
        raise ValueError("traceparent: not 55 characters")
    parts = value.split("-")
    if len(parts) != 4 or [len(p) for p in parts] != [2, 32, 16, 2]:
        raise ValueError("traceparent: malformed")
    version, trace_id, span_id, flags = parts
    if not all(_HEX.issuperset(p) for p in parts):
        raise ValueError("traceparent: not lower-case hex")
    if version == "ff":
        raise ValueError("traceparent: invalid version")
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        raise ValueError("traceparent: all-zero id")
    return trace_id, span_id, bool(int(flags, 16) & 1)


def extract(headers) -> SpanContext | None:
    """The incoming context; None when there is no traceparent. Raises ValueError when
    one is present but invalid (Envoy then starts no span at all)."""
    values = headers.get_all(TRACEPARENT) if hasattr(headers, "get_all") else None
    if values is None:
        v = headers.get(TRACEPARENT)
        values = [] if v is None else [v]
    if not values:
        return None
    if len(values) > 1:
        raise ValueError("traceparent: more than one")
    trace_id, span_id, sampled = parse_traceparent(values[0])
    states = headers.get_all(TRACESTATE) if hasattr(headers, "get_all") else None
    if states is None:
        s = headers.get(TRACESTATE)
        states = [] if s is None else [s]
    return SpanContext(trace_id, span_id, sampled, ",".join(states))


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def inject(headers, trace_id: str, span_id: str, sampled: bool, trace_state: str) -> None:
    """What Envoy writes upstream: traceparent, and a tracestate header always (empty when
    none came in)."""
    headers.set(TRACEPARENT, format_traceparent(trace_id, span_id, sampled))
    headers.set(TRACESTATE, trace_state)

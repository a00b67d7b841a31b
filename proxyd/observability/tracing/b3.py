"""B3 propagation (openzipkin/b3-propagation): multi headers and the single `b3` header.

Ids are kept as lower-case hex strings: that is what goes on the wire and into the
Zipkin JSON, so nothing is converted on the request path.
"""
from __future__ import annotations

_HEX = frozenset("0123456789abcdef")

TRACE_ID = "x-b3-traceid"
SPAN_ID = "x-b3-spanid"
PARENT_SPAN_ID = "x-b3-parentspanid"
SAMPLED = "x-b3-sampled"
FLAGS = "x-b3-flags"
SINGLE = "b3"
ALL = (TRACE_ID, SPAN_ID, PARENT_SPAN_ID, SAMPLED, FLAGS, SINGLE)


class SpanContext:
    """What one hop tells the next. `trace_id` is None for a sampling-only context
    (e.g. `b3: 0`); `sampled` is None when the sender deferred the decision."""

    __slots__ = ("trace_id", "span_id", "parent_id", "sampled", "debug")

    def __init__(self, trace_id: str | None, span_id: str | None, parent_id: str | None = None,
                 sampled: bool | None = None, debug: bool = False):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = True if debug else sampled
        self.debug = debug

    def __eq__(self, other):
        return isinstance(other, SpanContext) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self):
        return ("SpanContext(" + ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
                + ")")


def _id(value: str | None, lengths: tuple[int, ...]) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if len(v) in lengths and _HEX.issuperset(v):
        return v
    raise ValueError(f"invalid B3 id {value!r}")


def _sampled(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("1", "true", "d"):
        return True
    if v in ("0", "false"):
        return False
    raise ValueError(f"invalid B3 sampling state {value!r}")


def parse_single(value: str) -> SpanContext:
    """`{trace}-{span}[-{sampling}[-{parent}]]` or a lone sampling state (`0`, `1`, `d`)."""
    parts = value.strip().split("-")
    if len(parts) == 1:
        return SpanContext(None, None, None, _sampled(parts[0]), parts[0].strip() == "d")
    if len(parts) > 4:
        raise ValueError(f"invalid b3 header {value!r}")
    trace_id = _id(parts[0], (16, 32))
    span_id = _id(parts[1], (16,))
    state = parts[2] if len(parts) > 2 else None
    parent = _id(parts[3], (16,)) if len(parts) > 3 else None
    return SpanContext(trace_id, span_id, parent, _sampled(state), state == "d")


def extract(headers) -> SpanContext | None:
    """The incoming context, or None when there is none or it is malformed (a bad
    context is dropped and a new trace starts, as Envoy does)."""
    try:
        single = headers.get(SINGLE)
        if single is not None:
            return parse_single(single)
        trace_id = headers.get(TRACE_ID)
        span_id = headers.get(SPAN_ID)
        debug = (headers.get(FLAGS) or "").strip() == "1"
        sampled = _sampled(headers.get(SAMPLED))
        if trace_id is None and span_id is None:
            if sampled is None and not debug:
                return None
            return SpanContext(None, None, None, sampled, debug)
        if trace_id is None or span_id is None:
            return None
        return SpanContext(_id(trace_id, (16, 32)), _id(span_id, (16,)),
                           _id(headers.get(PARENT_SPAN_ID), (16,)), sampled, debug)
    except ValueError:
        return None


def format_single(ctx: SpanContext) -> str:
    if ctx.trace_id is None:
        return "d" if ctx.debug else ("1" if ctx.sampled else "0")
    out = f"{ctx.trace_id}-{ctx.span_id}"
    if ctx.debug:
        out += "-d"
    elif ctx.sampled is not None:
        out += "-1" if ctx.sampled else "-0"
    if ctx.parent_id and (ctx.debug or ctx.sampled is not None):
        out += f"-{ctx.parent_id}"
    return out


def inject(ctx: SpanContext, headers, single: bool = False) -> None:
    """Write `ctx` upstream, replacing whatever B3 headers came in (a stale single
    header would otherwise win over the new multi headers at the next hop)."""
    for name in ALL:
        headers.remove(name)
    if single:
        headers.add(SINGLE, format_single(ctx))
        return
    if ctx.trace_id is not None:
        headers.add(TRACE_ID, ctx.trace_id)
        headers.add(SPAN_ID, ctx.span_id)
        if ctx.parent_id:
            headers.add(PARENT_SPAN_ID, ctx.parent_id)
    if ctx.debug:
        headers.add(FLAGS, "1")
    elif ctx.sampled is not None:
        headers.add(SAMPLED, "1" if ctx.sampled else "0")

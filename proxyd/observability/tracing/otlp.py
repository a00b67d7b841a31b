"""OTLP trace export encoding: `ExportTraceServiceRequest` (opentelemetry-proto
collector/trace/v1) written straight in protobuf wire format.

Hand-encoded rather than through generated classes: the OTLP messages xds-protos ships are
an old revision (no `Span.flags`, `instrumentation_library_spans` naming) and a second
copy of the same proto package from PyPI would clash with it. Only what a proxy's spans
use is written: string attributes, events, status, flags.
"""
from __future__ import annotations

import struct

# Span.SpanKind
KIND_INTERNAL = 1
KIND_SERVER = 2
KIND_CLIENT = 3
# Status.StatusCode
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2
# Span.flags: the W3C trace flags in the low byte, and whether the parent is known to be
# remote (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK 0x100, SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK 0x200)
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200

_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _str(field: int, s: str) -> bytes:
    return _len(field, s.encode("utf-8")) if s else b""


def _fixed64(field: int, n: int) -> bytes:
    return _varint(field << 3 | 1) + _pack_q(n)


def _enum(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n) if n else b""


def any_value(v) -> bytes:
    """AnyValue: string_value 1, bool_value 2, int_value 3, double_value 4."""
    if isinstance(v, bool):
        return _varint(2 << 3) + (b"\x01" if v else b"\x00")
    if isinstance(v, int):
        return _varint(3 << 3) + _varint(v & 0xFFFFFFFFFFFFFFFF)
    if isinstance(v, float):
        return _varint(4 << 3 | 1) + struct.pack("<d", v)
    return _len(1, str(v).encode("utf-8"))


def key_value(field: int, key: str, value) -> bytes:
    return _len(field, _str(1, key) + _len(2, any_value(value)))


def attributes(field: int, attrs) -> bytes:
    return b"".join(key_value(field, k, v) for k, v in attrs)


def span(trace_id: bytes, span_id: bytes, parent_span_id: bytes | None, trace_state: str,
         name: str, kind: int, start_ns: int, end_ns: int, attrs, events=(),
         status: int = STATUS_UNSET, status_message: str = "", flags: int = 0) -> bytes:
    """One Span message (the bytes inside ScopeSpans.spans). `attrs`: (key, value) pairs;
    `events`: (time_ns, name) pairs."""
    out = [_len(1, trace_id), _len(2, span_id), _str(3, trace_state)]
    if parent_span_id:
        out.append(_len(4, parent_span_id))
    out += [_str(5, name), _enum(6, kind), _fixed64(7, start_ns), _fixed64(8, end_ns),
            attributes(9, attrs)]
    for t, ev_name in events:                                   # Span.Event
        out.append(_len(11, _fixed64(1, t) + _str(2, ev_name)))
    if status or status_message:                                # Status: message 2, code 3
        out.append(_len(15, _str(2, status_message) + _enum(3, status)))
    if flags:
        out.append(_varint(16 << 3 | 5) + _pack_i(flags))
    return b"".join(out)


def export_request(resource_attrs, scope_name: str, scope_version: str, spans) -> bytes:
    """ExportTraceServiceRequest with one ResourceSpans and one ScopeSpans holding
    `spans` (encoded Span messages)."""
    resource = attributes(1, resource_attrs)
    scope = _str(1, scope_name) + _str(2, scope_version)
    scope_spans = _len(1, scope) + b"".join(_len(2, s) for s in spans)
    resource_spans = _len(1, resource) + _len(2, scope_spans)
    return _len(1, resource_spans)

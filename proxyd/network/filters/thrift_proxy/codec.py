"""Sans-IO Thrift decoder: transports framed / unframed / header, protocols binary
(strict, or lax when configured), compact; each with auto-detection as Envoy does it.

receive_data(bytes) returns MessageBegin as soon as a message's name, type and sequence
id are readable, and MessageEnd once the whole message is in (carrying its exact wire
bytes, so a proxy can forward it unchanged, and for replies which field the result
struct starts with: 0 = success, >0 = a declared IDL exception, None = void). Unframed
messages are delimited by skipping the struct, since nothing else marks their end.
Lax binary is never auto-detected (Envoy PR #3509: an HTTP request would read as a
1.1 GB method name). A DecodeError leaves the stream unusable.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

CALL, REPLY, EXCEPTION, ONEWAY = 1, 2, 3, 4
MESSAGE_TYPES = {CALL: "call", REPLY: "reply", EXCEPTION: "exception", ONEWAY: "oneway"}

FRAMED, UNFRAMED, HEADER = "framed", "unframed", "header"
BINARY, LAX_BINARY, COMPACT = "binary", "lax_binary", "compact"
AUTO = "auto"

MAX_MESSAGE_SIZE = 16 * 1024 * 1024     # thrift's default max frame size
MAX_DEPTH = 64
HEADER_MAGIC = 0x0FFF
BINARY_VERSION_1 = 0x80010000
COMPACT_ID = 0x82
COMPACT_VERSION = 1
HEADER_PROTOCOL_IDS = {0: BINARY, 2: COMPACT}

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")


class DecodeError(ValueError):
    pass


class _NeedMore(Exception):
    """The buffer ends inside the message."""


@dataclass
class MessageBegin:
    name: str
    type: int
    seq_id: int
    transport: str
    protocol: str
    headers: dict = field(default_factory=dict)

    @property
    def type_name(self) -> str:
        return MESSAGE_TYPES.get(self.type, "invalid")


@dataclass
class MessageEnd:
    begin: MessageBegin
    frame: bytes                  # the whole message as it came, transport framing included
    begin_offset: int             # where the protocol message begin starts in frame
    body_offset: int              # where the message's struct starts in frame
    reply_field_id: int | None    # REPLY only: first field id of the result struct (None: void)


class ThriftDecoder:
    """Decode one direction of a Thrift connection, message by message."""

    def __init__(self, transport: str = AUTO, protocol: str = AUTO):
        self.transport = transport
        self.protocol = protocol
        self._buf = bytearray()
        self._begun: MessageBegin | None = None

    def receive_data(self, data: bytes) -> list:
        self._buf += data
        out: list = []
        while self._buf:
            try:
                done = self._step(out)
            except _NeedMore:
                if len(self._buf) > MAX_MESSAGE_SIZE + 4096:
                    raise DecodeError("message larger than %d bytes" % MAX_MESSAGE_SIZE) from None
                done = False
            except (struct.error, IndexError, UnicodeDecodeError) as e:
                raise DecodeError(str(e)) from None
            if not done:
                break
        return out

    # -- one message ------------------------------------------------------------
    def _step(self, out: list) -> bool:
        buf = self._buf
        transport = self.transport
        if transport == AUTO:
            transport = self._detect_transport(buf)
        if transport == UNFRAMED:
            frame_end, begin_at, headers = None, 0, {}
            protocol = self._protocol_of(buf, 0)
        else:
            if len(buf) < 4:
                raise _NeedMore
            (size,) = _I32.unpack_from(buf, 0)
            if size <= 0 or size > MAX_MESSAGE_SIZE:
                raise DecodeError("invalid frame size %d" % size)
            frame_end = 4 + size
            if transport == HEADER:
                begin_at, proto_id, headers = _parse_header(buf, frame_end)
                protocol = HEADER_PROTOCOL_IDS.get(proto_id)
                if protocol is None:
                    raise DecodeError("unknown header protocol id %d" % proto_id)
            else:
                begin_at, headers = 4, {}
                protocol = self._protocol_of(buf, 4)
        limit = frame_end if frame_end is not None else min(len(buf), begin_at + MAX_MESSAGE_SIZE)
        reader = _Reader(buf, begin_at, min(limit, len(buf)), hard_end=frame_end)
        if self._begun is None:
            name, mtype, seq_id = _read_begin(reader, protocol)
            self._begun = MessageBegin(name, mtype, seq_id, transport, protocol, headers)
            out.append(self._begun)
        else:
            _read_begin(reader, protocol)
        begin = self._begun
        body_at = reader.pos
        if frame_end is not None and len(buf) < frame_end:
            raise _NeedMore
        first_id = _skip_struct(reader, protocol, 0, want_first=True)
        if frame_end is not None and reader.pos != frame_end:
            raise DecodeError("frame has %d bytes after the message" % (frame_end - reader.pos))
        end = reader.pos if frame_end is None else frame_end
        frame = bytes(buf[:end])
        del buf[:end]
        self._begun = None
        out.append(MessageEnd(begin, frame, begin_at, body_at,
                              first_id if begin.type == REPLY else None))
        return True

    def _detect_transport(self, buf) -> str:
        if len(buf) < 6:
            if len(buf) >= 2 and _protocol_magic(buf, 0):
                return UNFRAMED
            raise _NeedMore
        if _U16.unpack_from(buf, 4)[0] == HEADER_MAGIC:
            return HEADER
        if _protocol_magic(buf, 4):
            return FRAMED
        if _protocol_magic(buf, 0):
            return UNFRAMED
        raise DecodeError("unknown thrift auto transport frame start %s" % bytes(buf[:6]).hex())

    def _protocol_of(self, buf, at: int) -> str:
        if self.protocol != AUTO:
            return self.protocol
        if len(buf) < at + 2:
            raise _NeedMore
        proto = _protocol_magic(buf, at)
        if proto is None:
            raise DecodeError("unknown thrift auto protocol message start %s"
                              % bytes(buf[at:at + 2]).hex())
        return proto


def _protocol_magic(buf, at: int) -> str | None:
    if len(buf) < at + 2:
        return None
    if buf[at] == 0x80 and buf[at + 1] == 0x01:
        return BINARY
    if buf[at] == COMPACT_ID and buf[at + 1] & 0x1F == COMPACT_VERSION:
        return COMPACT
    return None


class _Reader:
    __slots__ = ("buf", "pos", "end", "hard_end")

    def __init__(self, buf, pos: int, end: int, hard_end: int | None):
        self.buf, self.pos, self.end, self.hard_end = buf, pos, end, hard_end

    def take(self, n: int) -> int:
        p = self.pos
        if n < 0:
            raise DecodeError("negative size")
        if p + n > self.end:
            if self.hard_end is not None and p + n > self.hard_end:
                raise DecodeError("message overruns its frame")
            raise _NeedMore
        self.pos = p + n
        return p

    def byte(self) -> int:
        return self.buf[self.take(1)]

    def i16(self) -> int:
        return _I16.unpack_from(self.buf, self.take(2))[0]

    def i32(self) -> int:
        return _I32.unpack_from(self.buf, self.take(4))[0]

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise DecodeError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def raw(self, n: int) -> bytes:
        p = self.take(n)
        return bytes(self.buf[p:p + n])


def _parse_header(buf, frame_end: int):
    """THeader: magic, flags, seq id, header words, protocol id, transforms, info KVs."""
    r = _Reader(buf, 4, min(len(buf), frame_end), hard_end=frame_end)
    if r.i16() & 0xFFFF != HEADER_MAGIC:
        raise DecodeError("header transport without its magic")
    r.take(2 + 4)                          # flags, sequence id
    header_end = r.pos + 2 + _U16.unpack_from(buf, r.take(2))[0] * 4
    if header_end > frame_end:
        raise DecodeError("header size is larger than the frame")
    r.end = min(len(buf), header_end)
    r.hard_end = header_end
    proto_id = r.varint()
    if r.varint():
        raise DecodeError("header transforms are not supported")
    headers = {}
    while r.pos < header_end:
        info = r.varint()
        if info != 1:                      # padding (0) or an unknown info type
            break
        for _ in range(r.varint()):
            k = r.raw(r.varint()).decode()
            headers[k] = r.raw(r.varint()).decode()
    return header_end, proto_id, headers


def _read_begin(r: _Reader, protocol: str):
    if protocol == COMPACT:
        if r.byte() != COMPACT_ID:
            raise DecodeError("bad compact protocol id")
        vt = r.byte()
        if vt & 0x1F != COMPACT_VERSION:
            raise DecodeError("bad compact protocol version %d" % (vt & 0x1F))
        mtype = vt >> 5
        seq_id = _to_i32(r.varint())
        name = r.raw(r.varint()).decode()
        return name, mtype, seq_id
    first = r.i32()
    if first < 0:
        if first & 0xFFFF0000 != BINARY_VERSION_1:
            raise DecodeError("bad binary protocol version %#x" % (first & 0xFFFFFFFF))
        name = r.raw(r.i32()).decode()
        return name, first & 0xFF, r.i32()
    if protocol != LAX_BINARY:
        raise DecodeError("binary protocol message without a version (lax binary)")
    name = r.raw(first).decode()
    mtype = r.byte()
    return name, mtype, r.i32()


def _to_i32(n: int) -> int:
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


# -- skipping values -----------------------------------------------------------------
# binary type ids
T_STOP, T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64 = 0, 2, 3, 4, 6, 8, 10
T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST, T_UUID = 11, 12, 13, 14, 15, 16
_BINARY_FIXED = {T_BOOL: 1, T_BYTE: 1, T_DOUBLE: 8, T_I16: 2, T_I32: 4, T_I64: 8, T_UUID: 16}
# compact type ids
C_TRUE, C_FALSE, C_BYTE, C_I16, C_I32, C_I64, C_DOUBLE = 1, 2, 3, 4, 5, 6, 7
C_BINARY, C_LIST, C_SET, C_MAP, C_STRUCT, C_UUID = 8, 9, 10, 11, 12, 13


def _skip_struct(r: _Reader, protocol: str, depth: int, want_first: bool = False):
    """Skip a struct; return the id of its first field (None if it has none)."""
    if depth > MAX_DEPTH:
        raise DecodeError("structs nested deeper than %d" % MAX_DEPTH)
    first = None
    if protocol == COMPACT:
        last_id = 0
        while True:
            b = r.byte()
            ctype = b & 0x0F
            if ctype == T_STOP:
                return first
            delta = b >> 4
            fid = last_id + delta if delta else r.zigzag()
            last_id = fid
            if first is None:
                first = fid
            if ctype not in (C_TRUE, C_FALSE):
                _skip_compact(r, ctype, depth)
    while True:
        t = r.byte()
        if t == T_STOP:
            return first
        fid = r.i16()
        if first is None:
            first = fid
        _skip_binary(r, t, depth)


def _skip_binary(r: _Reader, t: int, depth: int) -> None:
    n = _BINARY_FIXED.get(t)
    if n is not None:
        r.take(n)
    elif t == T_STRING:
        r.take(r.i32())
    elif t == T_STRUCT:
        _skip_struct(r, BINARY, depth + 1)
    elif t == T_MAP:
        kt, vt = r.byte(), r.byte()
        for _ in range(_count(r.i32())):
            _skip_binary(r, kt, depth + 1)
            _skip_binary(r, vt, depth + 1)
    elif t in (T_SET, T_LIST):
        et = r.byte()
        for _ in range(_count(r.i32())):
            _skip_binary(r, et, depth + 1)
    else:
        raise DecodeError("unknown field type %d" % t)


def _count(n: int) -> int:
    if n < 0 or n > MAX_MESSAGE_SIZE:
        raise DecodeError("invalid container size %d" % n)
    return n


def _skip_compact(r: _Reader, t: int, depth: int, in_container: bool = False) -> None:
    if t in (C_TRUE, C_FALSE):
        if in_container:
            r.take(1)
    elif t == C_BYTE:
        r.take(1)
    elif t in (C_I16, C_I32, C_I64):
        r.varint()
    elif t == C_DOUBLE:
        r.take(8)
    elif t == C_UUID:
        r.take(16)
    elif t == C_BINARY:
        r.take(_count(r.varint()))
    elif t == C_STRUCT:
        _skip_struct(r, COMPACT, depth + 1)
    elif t in (C_LIST, C_SET):
        b = r.byte()
        size = b >> 4
        if size == 15:
            size = r.varint()
        for _ in range(_count(size)):
            _skip_compact(r, b & 0x0F, depth + 1, True)
    elif t == C_MAP:
        size = _count(r.varint())
        if size:
            kv = r.byte()
            for _ in range(size):
                _skip_compact(r, kv >> 4, depth + 1, True)
                _skip_compact(r, kv & 0x0F, depth + 1, True)
    else:
        raise DecodeError("unknown compact field type %d" % t)


# -- encoding (rewritten message heads and local replies) -------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_begin(protocol: str, name: str, mtype: int, seq_id: int) -> bytes:
    """A message begin: compact, or strict binary (what binary and lax binary readers take)."""
    raw = name.encode()
    if protocol == COMPACT:
        return (bytes((COMPACT_ID, (mtype << 5) | COMPACT_VERSION)) + _varint(seq_id & 0xFFFFFFFF)
                + _varint(len(raw)) + raw)
    return _I32.pack(BINARY_VERSION_1 - (1 << 32) | mtype) + _I32.pack(len(raw)) + raw + _I32.pack(seq_id)


def wrap(transport: str, protocol: str, payload: bytes, seq_id: int, header_prefix: bytes = b"") -> bytes:
    """Put a protocol payload in its transport (for header, a given or minimal header)."""
    if transport == UNFRAMED:
        return payload
    if transport == HEADER:
        if header_prefix:
            hdr = bytearray(header_prefix)
            hdr[4:8] = _I32.pack(seq_id)
        else:
            info = _varint(0 if protocol != COMPACT else 2) + _varint(0)
            info += b"\x00" * (-len(info) % 4)
            hdr = bytearray(_U16.pack(HEADER_MAGIC) + b"\x00\x00" + _I32.pack(seq_id)
                            + _U16.pack(len(info) // 4) + info)
        return _I32.pack(len(hdr) + len(payload)) + bytes(hdr) + payload
    return _I32.pack(len(payload)) + payload


def rewrite(end: MessageEnd, name: str | None = None, seq_id: int | None = None) -> bytes:
    """The message again with another method name and/or sequence id."""
    b = end.begin
    name = b.name if name is None else name
    seq_id = b.seq_id if seq_id is None else seq_id
    payload = encode_begin(b.protocol, name, b.type, seq_id) + end.frame[end.body_offset:]
    prefix = end.frame[4:end.begin_offset] if b.transport == HEADER else b""
    return wrap(b.transport, b.protocol, payload, seq_id, prefix)


# TApplicationException types
UNKNOWN_METHOD = 1
INTERNAL_ERROR = 6
PROTOCOL_ERROR = 7


def app_exception(transport: str, protocol: str, name: str, seq_id: int, message: str,
                  exc_type: int) -> bytes:
    """A TApplicationException reply {1: message, 2: type}, as a server would send it."""
    raw = message.encode()
    if protocol == COMPACT:
        body = (bytes((0x10 | C_BINARY,)) + _varint(len(raw)) + raw
                + bytes((0x10 | C_I32,)) + _varint((exc_type << 1) ^ (exc_type >> 31)) + b"\x00")
    else:
        body = (bytes((T_STRING,)) + _I16.pack(1) + _I32.pack(len(raw)) + raw
                + bytes((T_I32,)) + _I16.pack(2) + _I32.pack(exc_type) + b"\x00")
    payload = encode_begin(protocol, name, EXCEPTION, seq_id) + body
    return wrap(transport, protocol, payload, seq_id)


# -- translation between protocols (an upstream speaking another transport/protocol) ----
_C2B = {C_TRUE: T_BOOL, C_FALSE: T_BOOL, C_BYTE: T_BYTE, C_I16: T_I16, C_I32: T_I32,
        C_I64: T_I64, C_DOUBLE: T_DOUBLE, C_BINARY: T_STRING, C_LIST: T_LIST, C_SET: T_SET,
        C_MAP: T_MAP, C_STRUCT: T_STRUCT, C_UUID: T_UUID}
_B2C = {T_BOOL: C_TRUE, T_BYTE: C_BYTE, T_I16: C_I16, T_I32: C_I32, T_I64: C_I64,
        T_DOUBLE: C_DOUBLE, T_STRING: C_BINARY, T_LIST: C_LIST, T_SET: C_SET, T_MAP: C_MAP,
        T_STRUCT: C_STRUCT, T_UUID: C_UUID}
_D_BE = struct.Struct(">d")
_D_LE = struct.Struct("<d")
_I64 = struct.Struct(">q")


def _read_val(r: _Reader, protocol: str, t: int, depth: int):
    """A value of (binary) type t as a Python tree: struct = [(id, type, value)],
    list/set = (etype, [v]), map = (ktype, vtype, [(k, v)])."""
    if depth > MAX_DEPTH:
        raise DecodeError("structs nested deeper than %d" % MAX_DEPTH)
    compact = protocol == COMPACT
    if t == T_STRUCT:
        return _read_fields(r, protocol, depth + 1)
    if t == T_BOOL:
        return r.byte() in (1, C_TRUE) if compact else r.byte() != 0
    if t == T_BYTE:
        return r.byte()
    if t == T_DOUBLE:
        p = r.take(8)
        return (_D_LE if compact else _D_BE).unpack_from(r.buf, p)[0]
    if t in (T_I16, T_I32, T_I64):
        if compact:
            return r.zigzag()
        n = {T_I16: 2, T_I32: 4, T_I64: 8}[t]
        return int.from_bytes(r.raw(n), "big", signed=True)
    if t == T_STRING:
        return r.raw(_count(r.varint() if compact else r.i32()))
    if t == T_UUID:
        return r.raw(16)
    if t in (T_LIST, T_SET):
        if compact:
            b = r.byte()
            size = b >> 4
            if size == 15:
                size = r.varint()
            et = _C2B.get(b & 0x0F)
        else:
            et, size = r.byte(), r.i32()
        if et is None:
            raise DecodeError("unknown element type")
        return et, [_read_val(r, protocol, et, depth + 1) for _ in range(_count(size))]
    if t == T_MAP:
        if compact:
            size = _count(r.varint())
            kv = r.byte() if size else 0
            kt, vt = _C2B.get(kv >> 4, T_STOP), _C2B.get(kv & 0x0F, T_STOP)
        else:
            kt, vt, size = r.byte(), r.byte(), _count(r.i32())
        return kt, vt, [(_read_val(r, protocol, kt, depth + 1), _read_val(r, protocol, vt, depth + 1))
                        for _ in range(size)]
    raise DecodeError("unknown field type %d" % t)


def _read_fields(r: _Reader, protocol: str, depth: int) -> list:
    fields = []
    last = 0
    while True:
        if protocol == COMPACT:
            b = r.byte()
            ct = b & 0x0F
            if ct == T_STOP:
                return fields
            fid = last + (b >> 4) if b >> 4 else r.zigzag()
            last = fid
            t = _C2B.get(ct)
            if t is None:
                raise DecodeError("unknown compact field type %d" % ct)
            v = (ct == C_TRUE) if t == T_BOOL else _read_val(r, protocol, t, depth)
        else:
            t = r.byte()
            if t == T_STOP:
                return fields
            fid = r.i16()
            v = _read_val(r, protocol, t, depth)
        fields.append((fid, t, v))


def _zz(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _write_val(out: bytearray, protocol: str, t: int, v) -> None:
    compact = protocol == COMPACT
    if t == T_STRUCT:
        _write_fields(out, protocol, v)
    elif t == T_BOOL:
        out.append((C_TRUE if v else C_FALSE) if compact else int(bool(v)))
    elif t == T_BYTE:
        out.append(v & 0xFF)
    elif t == T_DOUBLE:
        out += (_D_LE if compact else _D_BE).pack(v)
    elif t in (T_I16, T_I32, T_I64):
        out += _zz(v) if compact else v.to_bytes({T_I16: 2, T_I32: 4, T_I64: 8}[t], "big", signed=True)
    elif t == T_STRING:
        out += (_varint(len(v)) if compact else _I32.pack(len(v))) + v
    elif t == T_UUID:
        out += v
    elif t in (T_LIST, T_SET):
        et, items = v
        if compact:
            ct = _B2C[et]
            out += bytes(((len(items) << 4) | ct,)) if len(items) < 15 else bytes((0xF0 | ct,)) + _varint(len(items))
        else:
            out.append(et)
            out += _I32.pack(len(items))
        for item in items:
            _write_val(out, protocol, et, item)
    elif t == T_MAP:
        kt, vt, items = v
        if compact:
            out += _varint(len(items))
            if items:
                out.append((_B2C[kt] << 4) | _B2C[vt])
        else:
            out += bytes((kt, vt)) + _I32.pack(len(items))
        for k, val in items:
            _write_val(out, protocol, kt, k)
            _write_val(out, protocol, vt, val)


def _write_fields(out: bytearray, protocol: str, fields: list) -> None:
    last = 0
    for fid, t, v in fields:
        if protocol == COMPACT:
            ct = (C_TRUE if v else C_FALSE) if t == T_BOOL else _B2C[t]
            delta = fid - last
            out += bytes(((delta << 4) | ct,)) if 0 < delta <= 15 else bytes((ct,)) + _zz(fid)
            last = fid
            if t != T_BOOL:
                _write_val(out, protocol, t, v)
        else:
            out.append(t)
            out += _I16.pack(fid)
            _write_val(out, protocol, t, v)
    out.append(T_STOP)


def translate(end: MessageEnd, transport: str, protocol: str, name: str | None = None) -> bytes:
    """The message in another transport and/or protocol (and optionally method name)."""
    b = end.begin
    name = b.name if name is None else name
    if protocol == b.protocol:
        body = end.frame[end.body_offset:]
    else:
        r = _Reader(end.frame, end.body_offset, len(end.frame), hard_end=len(end.frame))
        out = bytearray()
        _write_fields(out, protocol, _read_fields(r, b.protocol, 0))
        body = bytes(out)
    payload = encode_begin(protocol, name, b.type, b.seq_id) + body
    prefix = end.frame[4:end.begin_offset] if transport == HEADER == b.transport and \
        protocol == b.protocol else b""
    return wrap(transport, protocol, payload, b.seq_id, prefix)

"""Sans-IO MongoDB wire-protocol decoder.

Feed bytes of one direction with receive_data(); get back the complete messages they
finish. The legacy opcodes are decoded as Envoy's codec_impl.cc does, plus OP_UPDATE and
OP_DELETE (which Envoy rejects) and OP_MSG (sections, `$db`, the command, its collection,
`cursor` replies, `ok`), which is all that drivers since MongoDB 3.6 send. OP_COMPRESSED
with the noop or zlib compressor is unwrapped into the message it carries; with snappy or
zstd (not in the standard library), and any other opcode, an Unknown message is returned
with its body skipped.
A malformed message raises DecodeError; the stream is unusable after that.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .bson import ARRAY, DOCUMENT, INT32, INT64, DOUBLE, STRING, BsonError, Document, \
    read_cstring, read_document

OP_REPLY = 1
OP_UPDATE = 2001
OP_INSERT = 2002
OP_QUERY = 2004
OP_GET_MORE = 2005
OP_DELETE = 2006
OP_KILL_CURSORS = 2007
OP_COMMAND = 2010
OP_COMMANDREPLY = 2011
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
COMPRESSOR_NOOP, COMPRESSOR_SNAPPY, COMPRESSOR_ZLIB, COMPRESSOR_ZSTD = 0, 1, 2, 3
MAX_MESSAGE_SIZE = 48 * 1024 * 1024     # the server's maxMessageSizeBytes

# OP_QUERY flags
QUERY_TAILABLE_CURSOR = 1 << 1
QUERY_NO_CURSOR_TIMEOUT = 1 << 4
QUERY_AWAIT_DATA = 1 << 5
QUERY_EXHAUST = 1 << 6
# OP_REPLY flags
REPLY_CURSOR_NOT_FOUND = 1 << 0
REPLY_QUERY_FAILURE = 1 << 1
# OP_MSG flags
MSG_CHECKSUM_PRESENT = 1 << 0
MSG_MORE_TO_COME = 1 << 1
MSG_EXHAUST_ALLOWED = 1 << 16

_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")


class DecodeError(ValueError):
    pass


@dataclass
class Message:
    request_id: int
    response_to: int
    length: int                  # the whole message, header included

    opcode = 0


@dataclass
class Reply(Message):
    flags: int = 0
    cursor_id: int = 0
    starting_from: int = 0
    documents: list = field(default_factory=list)
    opcode = OP_REPLY


@dataclass
class Query(Message):
    flags: int = 0
    full_collection_name: str = ""
    skip: int = 0
    number_to_return: int = 0
    query: Document | None = None
    fields: Document | None = None
    opcode = OP_QUERY


@dataclass
class GetMore(Message):
    full_collection_name: str = ""
    number_to_return: int = 0
    cursor_id: int = 0
    opcode = OP_GET_MORE


@dataclass
class Insert(Message):
    flags: int = 0
    full_collection_name: str = ""
    documents: list = field(default_factory=list)
    opcode = OP_INSERT


@dataclass
class Update(Message):
    full_collection_name: str = ""
    flags: int = 0
    selector: Document | None = None
    update: Document | None = None
    opcode = OP_UPDATE


@dataclass
class Delete(Message):
    full_collection_name: str = ""
    flags: int = 0
    selector: Document | None = None
    opcode = OP_DELETE


@dataclass
class KillCursors(Message):
    cursor_ids: list = field(default_factory=list)
    opcode = OP_KILL_CURSORS


@dataclass
class Command(Message):
    database: str = ""
    command_name: str = ""
    metadata: Document | None = None
    command_args: Document | None = None
    input_docs: list = field(default_factory=list)
    opcode = OP_COMMAND


@dataclass
class CommandReply(Message):
    metadata: Document | None = None
    command_reply: Document | None = None
    output_docs: list = field(default_factory=list)
    opcode = OP_COMMANDREPLY


@dataclass
class Msg(Message):
    """OP_MSG: one body document plus named document sequences (kind 1 sections)."""
    flags: int = 0
    body: Document | None = None
    sequences: dict = field(default_factory=dict)
    opcode = OP_MSG

    @property
    def command(self) -> str:
        """The command name: the body's first key ('' for an empty body)."""
        first = self.body.first()
        return first[0] if first else ""

    @property
    def database(self) -> str:
        v = self.body.find("$db", STRING)
        return v[1] if v else ""

    @property
    def collection(self) -> str:
        """The command's target collection: its first value when that is a string."""
        first = self.body.first()
        return first[2] if first and first[1] == STRING else ""

    @property
    def cursor(self) -> Document | None:
        """A reply's `cursor` subdocument ({id, ns, firstBatch|nextBatch}), if any."""
        v = self.body.find("cursor", DOCUMENT)
        return v[1] if v else None

    @property
    def cursor_id(self) -> int:
        c = self.cursor
        if c is None:
            return 0
        v = c.find("id")
        return v[1] if v and v[0] in (INT32, INT64) else 0

    @property
    def batch(self) -> list:
        """A cursor reply's documents (firstBatch or nextBatch)."""
        c = self.cursor
        if c is None:
            return []
        for name in ("firstBatch", "nextBatch"):
            v = c.find(name, ARRAY)
            if v:
                return [d for _, t, d in v[1].fields if t == DOCUMENT]
        return []

    @property
    def ok(self) -> bool:
        v = self.body.find("ok")
        return bool(v and v[0] in (DOUBLE, INT32, INT64) and v[1] == 1)

    @property
    def error_code(self) -> int:
        v = self.body.find("code")
        return int(v[1]) if v and v[0] in (DOUBLE, INT32, INT64) else 0


@dataclass
class Unknown(Message):
    """An opcode this decoder does not read (OP_COMPRESSED and anything unknown)."""
    op: int = 0

    @property
    def opcode(self) -> int:
        return self.op


class MongoDecoder:
    """Decode one direction of a MongoDB connection, incrementally."""

    def __init__(self):
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> list[Message]:
        self._buf += data
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _I32.unpack_from(buf, pos)
            if length < HEADER.size or length > MAX_MESSAGE_SIZE:
                raise DecodeError("invalid message length %d" % length)
            if len(buf) - pos < length:
                break
            out.append(decode_message(bytes(buf[pos:pos + length])))
            pos += length
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


def decode_message(m) -> Message:
    """Decode one whole message (header included) from a bytes-like object."""
    try:
        return _decode(m)
    except (BsonError, struct.error, IndexError) as e:
        raise DecodeError(str(e)) from None


def _need(m, pos: int, n: int) -> None:
    if pos + n > len(m):
        raise DecodeError("message truncated")


def _docs(m, pos: int, end: int) -> list:
    docs = []
    while pos < end:
        d, pos = read_document(m, pos, end)
        docs.append(d)
    return docs


def _decode(m) -> Message:
    end = len(m)
    length, rid, rto, op = HEADER.unpack_from(m, 0)
    p = HEADER.size
    if op == OP_REPLY:
        _need(m, p, 20)
        flags, = _I32.unpack_from(m, p)
        cursor_id, = _I64.unpack_from(m, p + 4)
        starting, returned = struct.unpack_from("<ii", m, p + 12)
        p += 20
        docs = []
        for _ in range(max(returned, 0)):
            d, p = read_document(m, p, end)
            docs.append(d)
        return Reply(rid, rto, length, flags, cursor_id, starting, docs)
    if op == OP_QUERY:
        _need(m, p, 4)
        flags, = _I32.unpack_from(m, p)
        ns, p = read_cstring(m, p + 4, end)
        _need(m, p, 8)
        skip, ret = struct.unpack_from("<ii", m, p)
        query, p = read_document(m, p + 8, end)
        fields = None
        if p < end:
            fields, p = read_document(m, p, end)
        return Query(rid, rto, length, flags, ns, skip, ret, query, fields)
    if op == OP_GET_MORE:
        ns, p = read_cstring(m, p + 4, end)
        _need(m, p, 12)
        ret, = _I32.unpack_from(m, p)
        cursor_id, = _I64.unpack_from(m, p + 4)
        return GetMore(rid, rto, length, ns, ret, cursor_id)
    if op == OP_INSERT:
        _need(m, p, 4)
        flags, = _I32.unpack_from(m, p)
        ns, p = read_cstring(m, p + 4, end)
        return Insert(rid, rto, length, flags, ns, _docs(m, p, end))
    if op == OP_UPDATE:
        ns, p = read_cstring(m, p + 4, end)
        _need(m, p, 4)
        flags, = _I32.unpack_from(m, p)
        selector, p = read_document(m, p + 4, end)
        update, p = read_document(m, p, end)
        return Update(rid, rto, length, ns, flags, selector, update)
    if op == OP_DELETE:
        ns, p = read_cstring(m, p + 4, end)
        _need(m, p, 4)
        flags, = _I32.unpack_from(m, p)
        selector, p = read_document(m, p + 4, end)
        return Delete(rid, rto, length, ns, flags, selector)
    if op == OP_KILL_CURSORS:
        _need(m, p, 8)
        n, = _I32.unpack_from(m, p + 4)
        p += 8
        if n < 0:
            raise DecodeError("negative cursor count")
        _need(m, p, 8 * n)
        ids = list(struct.unpack_from("<%dq" % n, m, p))
        return KillCursors(rid, rto, length, ids)
    if op == OP_COMMAND:
        database, p = read_cstring(m, p, end)
        name, p = read_cstring(m, p, end)
        metadata, p = read_document(m, p, end)
        args, p = read_document(m, p, end)
        return Command(rid, rto, length, database, name, metadata, args, _docs(m, p, end))
    if op == OP_COMMANDREPLY:
        metadata, p = read_document(m, p, end)
        reply, p = read_document(m, p, end)
        return CommandReply(rid, rto, length, metadata, reply, _docs(m, p, end))
    if op == OP_MSG:
        return _decode_msg(m, rid, rto, length)
    if op == OP_COMPRESSED:
        _need(m, p, 9)
        original, size = struct.unpack_from("<ii", m, p)
        compressor = m[p + 8]
        if compressor in (COMPRESSOR_NOOP, COMPRESSOR_ZLIB) and original != OP_COMPRESSED:
            if size < 0 or size > MAX_MESSAGE_SIZE:
                raise DecodeError("invalid uncompressed size %d" % size)
            body = bytes(m[p + 9:])
            if compressor == COMPRESSOR_ZLIB:
                try:
                    d = zlib.decompressobj()
                    body = d.decompress(body, size)
                except zlib.error as e:
                    raise DecodeError("zlib: %s" % e) from None
                if not d.eof or d.unconsumed_tail:
                    raise DecodeError("OP_COMPRESSED holds more than %d bytes" % size)
            if len(body) != size:
                raise DecodeError("OP_COMPRESSED holds %d bytes, not %d" % (len(body), size))
            return _decode(HEADER.pack(16 + size, rid, rto, original) + body)
    return Unknown(rid, rto, length, op)


def _decode_msg(m, rid: int, rto: int, length: int) -> Msg:
    _need(m, HEADER.size, 4)
    flags, = _U32.unpack_from(m, HEADER.size)
    end = len(m) - (4 if flags & MSG_CHECKSUM_PRESENT else 0)
    p = HEADER.size + 4
    body = None
    sequences: dict[str, list] = {}
    while p < end:
        kind = m[p]
        p += 1
        if kind == 0:
            if body is not None:
                raise DecodeError("OP_MSG with two body sections")
            body, p = read_document(m, p, end)
        elif kind == 1:
            _need(m, p, 4)
            size, = _I32.unpack_from(m, p)
            if size < 5 or p + size > end:
                raise DecodeError("bad OP_MSG section size %d" % size)
            ident, q = read_cstring(m, p + 4, p + size)
            sequences.setdefault(ident, []).extend(_docs(m, q, p + size))
            p += size
        else:
            raise DecodeError("invalid OP_MSG section kind %d" % kind)
    if body is None or p != end:
        raise DecodeError("OP_MSG without a body section")
    return Msg(rid, rto, length, flags, body, sequences)

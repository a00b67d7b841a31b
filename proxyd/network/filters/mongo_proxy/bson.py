"""A minimal BSON reader that keeps each element's wire type.

The filter needs the raw types, not Python values: Envoy's access log renders an
int64 differently from a double, a timestamp like an int64, binary as a string, and the
query classification asks "is `_id` a document or array". pymongo's `bson.decode`
turns these into Python objects (and a datetime, a Timestamp class, ...) and would be a
runtime dependency of the proxy for ~100 lines of reading; this reader also never raises
anything but BsonError on hostile bytes.
"""
from __future__ import annotations

import struct

DOUBLE, STRING, DOCUMENT, ARRAY, BINARY, UNDEFINED, OBJECT_ID, BOOLEAN = 1, 2, 3, 4, 5, 6, 7, 8
DATETIME, NULL, REGEX, DBPOINTER, JAVASCRIPT, SYMBOL, JAVASCRIPT_WS = 9, 10, 11, 12, 13, 14, 15
INT32, TIMESTAMP, INT64, DECIMAL128, MIN_KEY, MAX_KEY = 16, 17, 18, 19, 0xFF, 0x7F

_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


class BsonError(ValueError):
    pass


class Document:
    """An ordered BSON document (or array): fields are (key, type, value) triples."""

    __slots__ = ("fields", "size")

    def __init__(self, fields: list, size: int):
        self.fields = fields
        self.size = size            # bytes on the wire, as Envoy's byteSize()

    def find(self, key: str, type_: int | None = None):
        """The (type, value) of the first field named `key` (of `type_`), or None."""
        for k, t, v in self.fields:
            if k == key and (type_ is None or t == type_):
                return t, v
        return None

    def get(self, key: str, default=None):
        for k, _, v in self.fields:
            if k == key:
                return v
        return default

    def first(self):
        """(key, type, value) of the first field, or None for an empty document."""
        return self.fields[0] if self.fields else None

    def __len__(self) -> int:
        return len(self.fields)

    def __eq__(self, other) -> bool:
        return isinstance(other, Document) and self.fields == other.fields

    __hash__ = None

    def to_json(self) -> str:
        """The document as Envoy's Bson::DocumentImpl::toString() writes it."""
        return "{" + ", ".join('"%s": %s' % (k, _field_json(t, v)) for k, t, v in self.fields) + "}"


def _escape(s: str) -> str:
    return (s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            .replace("\r", "\\r").replace("\t", "\\t"))


def _field_json(t: int, v) -> str:
    if t == DOUBLE:
        return "%f" % v
    if t in (STRING, SYMBOL, JAVASCRIPT):
        return '"%s"' % _escape(v)
    if t == BINARY:
        return '"%s"' % _escape(v[1].decode("latin-1"))
    if t in (DOCUMENT, ARRAY):
        return v.to_json()
    if t == OBJECT_ID:
        return '"%s"' % v.hex()
    if t == BOOLEAN:
        return "true" if v else "false"
    if t in (NULL, UNDEFINED, MIN_KEY, MAX_KEY):
        return "null"
    if t == REGEX:
        return '["%s", "%s"]' % v
    if t == DECIMAL128:
        return '"%s"' % v.hex()
    if t == DBPOINTER:
        return '"%s"' % _escape(v[0])
    if t == JAVASCRIPT_WS:
        return '"%s"' % _escape(v[0])
    return str(v)                   # int32, int64, datetime, timestamp


def _cstring(buf, pos: int, end: int) -> tuple[str, int]:
    nul = buf.find(b"\x00", pos, end)
    if nul < 0:
        raise BsonError("unterminated cstring")
    return bytes(buf[pos:nul]).decode("utf-8", "surrogateescape"), nul + 1


def read_cstring(buf, pos: int, end: int) -> tuple[str, int]:
    """A NUL-terminated string at `pos` (bounded by `end`) and the offset past it."""
    return _cstring(buf, pos, end)


def _string(buf, pos: int, end: int) -> tuple[str, int]:
    if pos + 4 > end:
        raise BsonError("truncated string length")
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    if n < 1 or pos + n > end or buf[pos + n - 1] != 0:
        raise BsonError("bad string length %d" % n)
    return bytes(buf[pos:pos + n - 1]).decode("utf-8", "surrogateescape"), pos + n


_FIXED = {DOUBLE: 8, OBJECT_ID: 12, BOOLEAN: 1, DATETIME: 8, INT32: 4, TIMESTAMP: 8,
          INT64: 8, DECIMAL128: 16, NULL: 0, UNDEFINED: 0, MIN_KEY: 0, MAX_KEY: 0}


def read_document(buf, pos: int = 0, end: int | None = None) -> tuple[Document, int]:
    """Parse the document at buf[pos:]; return it and the offset just past it."""
    if end is None:
        end = len(buf)
    if pos + 5 > end:
        raise BsonError("truncated document")
    (size,) = _I32.unpack_from(buf, pos)
    doc_end = pos + size
    if size < 5 or doc_end > end or buf[doc_end - 1] != 0:
        raise BsonError("bad document size %d" % size)
    fields = []
    p = pos + 4
    last = doc_end - 1
    while p < last:
        t = buf[p]
        key, p = _cstring(buf, p + 1, last)
        n = _FIXED.get(t)
        if n is not None:
            if p + n > last:
                raise BsonError("truncated element %r" % key)
            if t == DOUBLE:
                v = _F64.unpack_from(buf, p)[0]
            elif t == INT32:
                v = _I32.unpack_from(buf, p)[0]
            elif t in (INT64, DATETIME, TIMESTAMP):
                v = _I64.unpack_from(buf, p)[0]
            elif t == BOOLEAN:
                v = buf[p] != 0
            elif t in (OBJECT_ID, DECIMAL128):
                v = bytes(buf[p:p + n])
            else:
                v = None
            p += n
        elif t in (STRING, SYMBOL, JAVASCRIPT):
            v, p = _string(buf, p, last)
        elif t in (DOCUMENT, ARRAY):
            v, p = read_document(buf, p, last)
        elif t == BINARY:
            if p + 5 > last:
                raise BsonError("truncated binary %r" % key)
            (n,) = _I32.unpack_from(buf, p)
            if n < 0 or p + 5 + n > last:
                raise BsonError("bad binary length %d" % n)
            v = (buf[p + 4], bytes(buf[p + 5:p + 5 + n]))
            p += 5 + n
        elif t == REGEX:
            pattern, p = _cstring(buf, p, last)
            options, p = _cstring(buf, p, last)
            v = (pattern, options)
        elif t == DBPOINTER:
            ns, p = _string(buf, p, last)
            if p + 12 > last:
                raise BsonError("truncated dbpointer %r" % key)
            v = (ns, bytes(buf[p:p + 12]))
            p += 12
        elif t == JAVASCRIPT_WS:
            if p + 4 > last:
                raise BsonError("truncated code_w_scope %r" % key)
            (n,) = _I32.unpack_from(buf, p)
            if n < 14 or p + n > last:
                raise BsonError("bad code_w_scope length %d" % n)
            code, q = _string(buf, p + 4, p + n)
            scope, q = read_document(buf, q, p + n)
            v = (code, scope)
            p += n
        else:
            raise BsonError("invalid BSON element type: %#x key: %s" % (t, key))
        fields.append((key, t, v))
    if p != last:
        raise BsonError("document overrun")
    return Document(fields, size), doc_end

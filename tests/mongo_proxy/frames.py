"""Builders for MongoDB wire messages (legacy opcodes and OP_MSG), for tests.

Documents are encoded with pymongo's `bson`, so the frames are what a driver would send.
"""
from __future__ import annotations

import struct

import bson


def cstring(s: str) -> bytes:
    return s.encode() + b"\x00"


def frame(opcode: int, body: bytes, request_id: int = 1, response_to: int = 0) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, opcode) + body


def op_query(ns: str, query: dict, request_id: int = 1, flags: int = 0, skip: int = 0,
             n_return: int = 1, fields: dict | None = None) -> bytes:
    body = struct.pack("<i", flags) + cstring(ns) + struct.pack("<ii", skip, n_return)
    body += bson.encode(query) + (bson.encode(fields) if fields is not None else b"")
    return frame(2004, body, request_id)


def op_reply(docs: list, response_to: int, request_id: int = 100, flags: int = 0,
             cursor_id: int = 0, starting_from: int = 0) -> bytes:
    body = struct.pack("<iqii", flags, cursor_id, starting_from, len(docs))
    body += b"".join(bson.encode(d) for d in docs)
    return frame(1, body, request_id, response_to)


def op_get_more(ns: str, cursor_id: int, n_return: int = 0, request_id: int = 1) -> bytes:
    return frame(2005, struct.pack("<i", 0) + cstring(ns) + struct.pack("<iq", n_return, cursor_id),
                 request_id)


def op_insert(ns: str, docs: list, flags: int = 0, request_id: int = 1) -> bytes:
    return frame(2002, struct.pack("<i", flags) + cstring(ns) + b"".join(bson.encode(d) for d in docs),
                 request_id)


def op_update(ns: str, selector: dict, update: dict, flags: int = 0, request_id: int = 1) -> bytes:
    return frame(2001, struct.pack("<i", 0) + cstring(ns) + struct.pack("<i", flags)
                 + bson.encode(selector) + bson.encode(update), request_id)


def op_delete(ns: str, selector: dict, flags: int = 0, request_id: int = 1) -> bytes:
    return frame(2006, struct.pack("<i", 0) + cstring(ns) + struct.pack("<i", flags)
                 + bson.encode(selector), request_id)


def op_kill_cursors(ids: list, request_id: int = 1) -> bytes:
    return frame(2007, struct.pack("<ii", 0, len(ids)) + b"".join(struct.pack("<q", i) for i in ids),
                 request_id)


def op_command(db: str, name: str, args: dict, metadata: dict | None = None,
               request_id: int = 1) -> bytes:
    return frame(2010, cstring(db) + cstring(name) + bson.encode(metadata or {}) + bson.encode(args),
                 request_id)


def op_msg(body: dict, sequences: dict | None = None, flags: int = 0, request_id: int = 1,
           response_to: int = 0, checksum: bool = False) -> bytes:
    out = struct.pack("<I", flags | (1 if checksum else 0)) + b"\x00" + bson.encode(body)
    for ident, docs in (sequences or {}).items():
        payload = cstring(ident) + b"".join(bson.encode(d) for d in docs)
        out += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    if checksum:
        out += b"\xde\xad\xbe\xef"     # crc32c; the decoder does not verify it
    return frame(2013, out, request_id, response_to)


def op_compressed(original_opcode: int, payload: bytes, request_id: int = 1,
                  compressor: int = 1, response_to: int = 0) -> bytes:
    """OP_COMPRESSED around `payload` (a message body without its header). compressor 1
    (snappy) is sent as is, 0 (noop) as is, 2 (zlib) deflated here."""
    import zlib
    data = zlib.compress(payload) if compressor == 2 else payload
    return frame(2012, struct.pack("<iiB", original_opcode, len(payload), compressor) + data,
                 request_id, response_to)

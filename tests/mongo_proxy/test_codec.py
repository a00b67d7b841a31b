"""The sans-IO Mongo decoder on frames built like a driver builds them."""
import struct

import bson
import pytest
from bson import Int64, ObjectId, Regex, Timestamp
from hypothesis import given, settings, strategies as st

from proxyd.network.filters.mongo_proxy import codec
from proxyd.network.filters.mongo_proxy.bson import read_document
from proxyd.network.filters.mongo_proxy.codec import DecodeError, MongoDecoder

from .frames import (frame, op_command, op_compressed, op_delete, op_get_more, op_insert, op_kill_cursors,
                     op_msg, op_query, op_reply, op_update)


def decode_all(data: bytes, chunk: int | None = None) -> list:
    d = MongoDecoder()
    if chunk is None:
        return d.receive_data(data)
    out = []
    for i in range(0, len(data), chunk):
        out += d.receive_data(data[i:i + chunk])
    assert d.buffered == 0
    return out


def test_op_query_fields_and_flags():
    q = op_query("db.users", {"$query": {"_id": 3}, "$maxTimeMS": 50}, request_id=7, flags=0x22,
                 skip=2, n_return=5, fields={"name": 1})
    (m,) = decode_all(q)
    assert isinstance(m, codec.Query)
    assert (m.request_id, m.response_to, m.length) == (7, 0, len(q))
    assert (m.flags, m.full_collection_name, m.skip, m.number_to_return) == (0x22, "db.users", 2, 5)
    assert m.query.find("$query")[1].get("_id") == 3
    assert m.fields.get("name") == 1


def test_messages_split_at_every_byte_are_the_same():
    stream = (op_query("a.$cmd", {"isMaster": 1}, request_id=1)
              + op_reply([{"ok": 1.0}, {"x": "y"}], response_to=1, cursor_id=99, flags=2)
              + op_insert("a.b", [{"x": 1}, {"x": 2}], request_id=2)
              + op_get_more("a.b", 12345, n_return=10, request_id=3)
              + op_kill_cursors([1, 2, 3], request_id=4)
              + op_update("a.b", {"_id": 1}, {"$set": {"y": 2}}, flags=1, request_id=5)
              + op_delete("a.b", {"x": 1}, flags=1, request_id=6))
    whole = decode_all(stream)
    assert [type(m).__name__ for m in whole] == ["Query", "Reply", "Insert", "GetMore", "KillCursors",
                                                 "Update", "Delete"]
    assert decode_all(stream, chunk=1) == whole
    reply, insert, get_more, kill, update, delete = whole[1:]
    assert (reply.response_to, reply.cursor_id, reply.flags) == (1, 99, 2)
    assert [d.get("x") for d in reply.documents] == [None, "y"]
    assert [d.get("x") for d in insert.documents] == [1, 2]
    assert (get_more.full_collection_name, get_more.cursor_id, get_more.number_to_return) == ("a.b", 12345, 10)
    assert kill.cursor_ids == [1, 2, 3]
    assert update.selector.get("_id") == 1 and update.update.find("$set")[1].get("y") == 2
    assert delete.selector.get("x") == 1 and delete.flags == 1


def test_incomplete_message_waits_for_the_rest():
    q = op_query("a.b", {"x": 1})
    d = MongoDecoder()
    assert d.receive_data(q[:-1]) == []
    assert d.buffered == len(q) - 1
    assert len(d.receive_data(q[-1:])) == 1


def test_op_command_legacy():
    (m,) = decode_all(op_command("admin", "insert", {"insert": "c"}, {"m": 1}))
    assert (m.database, m.command_name) == ("admin", "insert")
    assert m.command_args.get("insert") == "c" and m.metadata.get("m") == 1


def test_op_msg_body_sequences_and_checksum():
    raw = op_msg({"insert": "users", "ordered": True, "$db": "shop"},
                 {"documents": [{"_id": 1}, {"_id": 2}]}, checksum=True, request_id=9)
    (m,) = decode_all(raw, chunk=3)
    assert isinstance(m, codec.Msg)
    assert (m.command, m.collection, m.database) == ("insert", "users", "shop")
    assert [d.get("_id") for d in m.sequences["documents"]] == [1, 2]
    assert m.flags & codec.MSG_CHECKSUM_PRESENT


def test_op_msg_cursor_reply():
    body = {"cursor": {"firstBatch": [{"a": 1}, {"a": 2}], "id": Int64(77), "ns": "shop.users"},
            "ok": 1.0}
    (m,) = decode_all(op_msg(body, response_to=9))
    assert m.ok and m.cursor_id == 77 and [d.get("a") for d in m.batch] == [1, 2]
    (e,) = decode_all(op_msg({"ok": 0.0, "errmsg": "cursor id 5 not found", "code": 43}))
    assert not e.ok and e.error_code == 43 and e.cursor_id == 0 and e.batch == []


def test_op_compressed_snappy_is_unknown_and_skipped():
    stream = op_compressed(2013, b"\x00" * 20) + op_query("a.b", {"x": 1})
    unknown, query = decode_all(stream, chunk=5)
    assert isinstance(unknown, codec.Unknown) and unknown.opcode == 2012
    assert query.full_collection_name == "a.b"


@pytest.mark.parametrize("compressor", [0, 2])
def test_op_compressed_noop_and_zlib_are_unwrapped(compressor):
    inner = op_msg({"find": "users", "filter": {"_id": 1}, "$db": "shop"})[16:]
    reply = op_msg({"cursor": {"id": Int64(0), "ns": "shop.users", "firstBatch": [{"_id": 1}]},
                    "ok": 1.0})[16:]
    stream = (op_compressed(2013, inner, request_id=7, compressor=compressor)
              + op_compressed(2013, reply, request_id=8, compressor=compressor, response_to=7))
    req, rep = decode_all(stream, chunk=4)
    assert isinstance(req, codec.Msg) and (req.request_id, req.command, req.collection) == (7, "find", "users")
    assert isinstance(rep, codec.Msg) and rep.response_to == 7 and len(rep.batch) == 1


def test_op_compressed_with_a_wrong_size_is_an_error():
    inner = op_query("a.b", {"x": 1})[16:]
    bad = frame(2012, struct.pack("<iiB", 2004, len(inner) + 5, 0) + inner)
    with pytest.raises(DecodeError):
        MongoDecoder().receive_data(bad)


@pytest.mark.parametrize("bad", [
    struct.pack("<iiii", 8, 1, 0, 2004),                               # length below the header
    struct.pack("<iiii", 17, 1, 0, 2004) + b"\x00",                    # query body truncated
    frame(2004, b"\x00" * 4 + b"a.b\x00" + b"\x00" * 8 + b"\x20\x00\x00\x00\x10x\x00\x01\x00\x00\x00\x00"),
    op_msg({"ping": 1})[:20] + b"\x07" + op_msg({"ping": 1})[21:],    # bad section kind
    struct.pack("<iiii", 16, 1, 0, 2013),                              # OP_MSG without flags
])
def test_malformed_messages_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        MongoDecoder().receive_data(bad)


def test_oversized_length_is_rejected_before_buffering():
    with pytest.raises(DecodeError):
        MongoDecoder().receive_data(struct.pack("<i", 64 * 1024 * 1024))


def test_document_json_is_envoys_format():
    doc, _ = read_document(bson.encode({
        "s": 'a"b', "i": 1, "l": Int64(2), "d": 1.5, "b": True, "n": None,
        "o": ObjectId("0123456789abcdef01234567"), "a": [1, "x"], "sub": {"k": "v"},
        "r": Regex("^a", "i"), "t": Timestamp(1, 2)}))
    assert doc.to_json() == (
        '{"s": "a\\"b", "i": 1, "l": 2, "d": 1.500000, "b": true, "n": null, '
        '"o": "0123456789abcdef01234567", "a": {"0": 1, "1": "x"}, "sub": {"k": "v"}, '
        '"r": ["^a", "i"], "t": 4294967298}')
    assert doc.size == len(bson.encode({
        "s": 'a"b', "i": 1, "l": Int64(2), "d": 1.5, "b": True, "n": None,
        "o": ObjectId("0123456789abcdef01234567"), "a": [1, "x"], "sub": {"k": "v"},
        "r": Regex("^a", "i"), "t": Timestamp(1, 2)}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=7))
def test_garbage_only_ever_raises_decode_error(tail, chunk):
    for head in (op_query("a.b", {"x": 1}), op_msg({"find": "c", "$db": "d"})):
        data = head[:16] + tail
        data = struct.pack("<i", len(data)) + data[4:]
        d = MongoDecoder()
        try:
            for i in range(0, len(data), chunk):
                d.receive_data(data[i:i + chunk])
        except DecodeError:
            pass

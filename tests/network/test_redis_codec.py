"""The RESP codec without sockets: whole values from any split of the bytes, inline
commands, RESP3 replies, protocol errors, and encoding."""
from __future__ import annotations

import pytest

from proxyd.network.filters.redis_proxy import codec
from proxyd.network.filters.redis_proxy.codec import NULL_ARRAY, Decoder, Error, Simple

REPLIES = [
    (b"+OK\r\n", Simple(b"OK")),
    (b"-ERR wrong type\r\n", Error(b"ERR wrong type")),
    (b":-42\r\n", -42),
    (b"$5\r\nhe\r\nl\r\n", b"he\r\nl"),          # a bulk string may hold CRLF
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", NULL_ARRAY),
    (b"*0\r\n", []),
    (b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n+x\r\n", [b"a", [1, None], Simple(b"x")]),
]


@pytest.mark.parametrize("raw,value", REPLIES)
def test_each_reply_decodes_whole_from_every_split(raw, value):
    for cut in range(len(raw) + 1):
        d = Decoder()
        d.feed(raw[:cut])
        if cut < len(raw):
            assert d.next_raw() is None
            d.feed(raw[cut:])
        got = d.next_raw()
        assert got == raw
        assert codec.parse(got) == (value, len(raw))
        assert d.next_raw() is None


def test_pipelined_requests_come_out_in_order_with_their_bytes():
    set_cmd, get_cmd = codec.encode_command([b"SET", b"k", b"v"]), codec.encode_command([b"GET", b"k"])
    wire = set_cmd + get_cmd
    d = Decoder()
    d.feed(wire[:7])
    assert d.next_request() is None
    d.feed(wire[7:])
    first, second = d.next_request(), d.next_request()
    assert first == ([b"SET", b"k", b"v"], set_cmd)
    assert second == ([b"GET", b"k"], get_cmd)
    assert d.next_request() is None


def test_inline_commands_split_on_whitespace():
    d = Decoder()
    d.feed(b"PING\r\nset  a   b\nGET")
    assert d.next_request() == ([b"PING"], None)
    assert d.next_request() == ([b"set", b"a", b"b"], None)
    assert d.next_request() is None
    d.feed(b" a\r\n")
    assert d.next_request() == ([b"GET", b"a"], None)


def test_inline_commands_take_redis_quoting():
    d = Decoder()
    d.feed(b"EVAL \"return 1\" 0\r\nSET k 'it\\'s'\r\nSET \"a\\x41\\n\" b\r\n")
    assert d.next_request()[0] == [b"EVAL", b"return 1", b"0"]
    assert d.next_request()[0] == [b"SET", b"k", b"it's"]
    assert d.next_request()[0] == [b"SET", b"aA\n", b"b"]
    d.feed(b"SET \"open\r\n")
    with pytest.raises(codec.ProtocolError):
        d.next_request()


def test_a_request_that_is_not_an_array_of_bulk_strings_is_delimited_and_refused():
    d = Decoder()
    d.feed(b"+OK\r\n*1\r\n:1\r\n*2\r\n$3\r\nGET\r\n$-1\r\n*0\r\n\r\n*1\r\n$4\r\nPING\r\n")
    assert d.next_request() == (None, b"+OK\r\n")
    assert d.next_request() == (None, b"*1\r\n:1\r\n")
    assert d.next_request() == (None, b"*2\r\n$3\r\nGET\r\n$-1\r\n")
    assert d.next_request() == (None, b"*0\r\n")
    assert d.next_request() == ([b"PING"], b"*1\r\n$4\r\nPING\r\n")  # empty line skipped


def test_a_read_that_is_one_request_is_forwarded_without_a_copy():
    d = Decoder()
    wire = codec.encode_command([b"GET", b"k"])
    d.feed(wire)
    assert d.next_request()[1] is wire


@pytest.mark.parametrize("raw", [b"*x\r\n", b"$3\r\nabcde\r\n", b"?\r\n", b"*1\r\n!\r\n"])
def test_garbage_is_a_protocol_error(raw):
    d = Decoder()
    d.feed(raw)
    with pytest.raises(codec.ProtocolError):
        d.next_raw()


def test_an_endless_line_is_a_protocol_error_not_a_growing_buffer():
    d = Decoder()
    d.feed(b"+" + b"x" * (codec.MAX_INLINE + 10))
    with pytest.raises(codec.ProtocolError):
        d.next_raw()
    d = Decoder()
    d.feed(b"x" * (codec.MAX_INLINE + 10))
    with pytest.raises(codec.ProtocolError):
        d.next_request()


RESP3 = [
    (b"_\r\n", None),
    (b"#t\r\n", 1),
    (b",3.14\r\n", b"3.14"),
    (b"(12345678901234567890\r\n", 12345678901234567890),
    (b"=7\r\ntxt:abc\r\n", b"abc"),
    (b"!5\r\nERR x\r\n", Error(b"ERR x")),
    (b"%2\r\n+a\r\n:1\r\n+b\r\n_\r\n", [b"a", 1, b"b", None]),
    (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
    (b">2\r\n+message\r\n$2\r\nhi\r\n", [b"message", b"hi"]),
    (b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n", b"v"),     # the attribute, then the value
]


@pytest.mark.parametrize("raw,value", RESP3)
def test_resp3_replies_are_delimited_and_parse_to_resp2_values(raw, value):
    d = Decoder()
    d.feed(raw + b"+next\r\n")
    assert d.next_raw() == raw
    assert codec.parse(raw)[0] == value
    assert d.next_raw() == b"+next\r\n"


def test_encode_round_trips_and_speaks_resp3_when_asked():
    value = [b"a", None, 7, Simple(b"OK"), Error(b"ERR no"), [b""]]
    raw = codec.encode(value)
    assert codec.parse(raw) == (value, len(raw))
    assert codec.encode(None, resp3=True) == b"_\r\n"
    assert codec.encode({b"proto": 3}, resp3=True) == b"%1\r\n$5\r\nproto\r\n:3\r\n"
    assert codec.encode({b"proto": 2}) == b"*2\r\n$5\r\nproto\r\n:2\r\n"
    assert codec.encode_command([b"GET", b"k"]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"

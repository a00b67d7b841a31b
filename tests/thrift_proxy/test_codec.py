"""The sans-IO Thrift decoder on messages written by the `thrift` package's own
protocol encoders into in-memory transports."""
import pytest
from hypothesis import given, settings, strategies as st
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer

from proxyd.network.filters.thrift_proxy import codec
from proxyd.network.filters.thrift_proxy.codec import (DecodeError, MessageBegin, MessageEnd,
                                                        ThriftDecoder)

PROTOCOLS = {"binary": TBinaryProtocol, "compact": TCompactProtocol}


def write_struct(p, first_field: int | None, rich: bool = True) -> None:
    """A struct whose first field has id `first_field` (None: empty, like a void result)."""
    p.writeStructBegin("S")
    if first_field is not None:
        p.writeFieldBegin("f", TType.I32, first_field)
        p.writeI32(-7)
        p.writeFieldEnd()
        if rich:
            p.writeFieldBegin("b", TType.BOOL, first_field + 1)
            p.writeBool(True)
            p.writeFieldEnd()
            p.writeFieldBegin("s", TType.STRING, first_field + 20)
            p.writeString("héllo" * 5)
            p.writeFieldEnd()
            p.writeFieldBegin("m", TType.MAP, first_field + 21)
            p.writeMapBegin(TType.STRING, TType.LIST, 2)
            for k in ("a", "b"):
                p.writeString(k)
                p.writeListBegin(TType.BOOL, 17)
                for i in range(17):
                    p.writeBool(i % 2 == 0)
                p.writeListEnd()
            p.writeMapEnd()
            p.writeFieldEnd()
            p.writeFieldBegin("st", TType.SET, first_field + 22)
            p.writeSetBegin(TType.DOUBLE, 2)
            p.writeDouble(1.5)
            p.writeDouble(-2.0)
            p.writeSetEnd()
            p.writeFieldEnd()
            p.writeFieldBegin("n", TType.STRUCT, 300)
            p.writeStructBegin("N")
            p.writeFieldBegin("l", TType.I64, 1)
            p.writeI64(-(1 << 40))
            p.writeFieldEnd()
            p.writeFieldBegin("e", TType.MAP, 2)
            p.writeMapBegin(TType.I16, TType.BYTE, 0)
            p.writeMapEnd()
            p.writeFieldEnd()
            p.writeFieldStop()
            p.writeStructEnd()
            p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()


def encode(transport: str, protocol: str, name: str, mtype: int, seq_id: int,
           first_field: int | None = 1, headers: dict | None = None) -> bytes:
    mem = TMemoryBuffer()
    if transport == "header":
        sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        p = THeaderProtocol(mem, [THeaderClientType.HEADERS], sub)
        for k, v in (headers or {}).items():
            p.set_header(k.encode(), v.encode())
        trans = p.trans
    else:
        trans = TFramedTransport(mem) if transport == "framed" else mem
        p = PROTOCOLS[protocol](trans)
    p.writeMessageBegin(name, mtype, seq_id)
    write_struct(p, first_field)
    p.writeMessageEnd()
    trans.flush()
    return mem.getvalue()


CASES = [(t, p) for t in ("framed", "unframed", "header") for p in ("binary", "compact")]


@pytest.mark.parametrize("transport,protocol", CASES)
@pytest.mark.parametrize("configured", ["exact", "auto"])
def test_begin_and_end_for_every_transport_and_protocol(transport, protocol, configured):
    call = encode(transport, protocol, "Calc:add", TMessageType.CALL, 41,
                  headers={"X-Trace": "abc"})
    reply = encode(transport, protocol, "Calc:add", TMessageType.REPLY, 41, first_field=0)
    d = ThriftDecoder(*((transport, protocol) if configured == "exact" else ("auto", "auto")))
    events = []
    for i in range(0, len(call + reply), 3):
        events += d.receive_data((call + reply)[i:i + 3])
    kinds = [type(e) for e in events]
    assert kinds == [MessageBegin, MessageEnd, MessageBegin, MessageEnd]
    b = events[0]
    assert (b.name, b.type_name, b.seq_id, b.transport, b.protocol) == ("Calc:add", "call", 41,
                                                                         transport, protocol)
    if transport == "header":
        assert b.headers == {"X-Trace": "abc"}
    assert events[1].frame == call and events[1].reply_field_id is None
    assert events[3].frame == reply and events[3].begin.type_name == "reply"
    assert events[3].reply_field_id == 0


@pytest.mark.parametrize("transport,protocol", CASES)
def test_reply_classification(transport, protocol):
    """Envoy's: first field 0 = success, >0 = declared exception, empty = void (success)."""
    d = ThriftDecoder()
    stream = b"".join(encode(transport, protocol, "m", TMessageType.REPLY, i, first_field=f)
                      for i, f in enumerate((0, 2, None)))
    ends = [e for e in d.receive_data(stream) if isinstance(e, MessageEnd)]
    assert [e.reply_field_id for e in ends] == [0, 2, None]


def test_oneway_and_exception_types():
    d = ThriftDecoder()
    out = d.receive_data(encode("framed", "binary", "fire", TMessageType.ONEWAY, 1)
                         + encode("framed", "binary", "x", TMessageType.EXCEPTION, 2))
    assert [e.type_name for e in out if isinstance(e, MessageBegin)] == ["oneway", "exception"]


def test_lax_binary_only_when_configured():
    mem = TMemoryBuffer()
    TBinaryProtocol(mem, strictWrite=False).writeMessageBegin("ping", TMessageType.CALL, 5)
    p = TBinaryProtocol(mem, strictWrite=False)
    write_struct(p, None)
    lax = mem.getvalue()
    (b, e) = ThriftDecoder("unframed", "lax_binary").receive_data(lax)
    assert (b.name, b.seq_id, e.frame) == ("ping", 5, lax)
    with pytest.raises(DecodeError):
        ThriftDecoder("unframed", "binary").receive_data(lax)
    with pytest.raises(DecodeError):
        ThriftDecoder().receive_data(lax)


def test_http_request_is_not_thrift():
    with pytest.raises(DecodeError):
        ThriftDecoder().receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_frame_with_trailing_bytes_is_an_error():
    call = encode("framed", "binary", "m", TMessageType.CALL, 1)
    bad = (len(call) - 4 + 2).to_bytes(4, "big") + call[4:] + b"\x00\x00"
    with pytest.raises(DecodeError):
        ThriftDecoder("framed", "binary").receive_data(bad)


@pytest.mark.parametrize("transport,protocol", CASES)
def test_rewrite_is_read_back_by_thrift(transport, protocol):
    call = encode(transport, protocol, "Calc:add", TMessageType.CALL, 41, headers={"k": "v"})
    end = ThriftDecoder(transport, protocol).receive_data(call)[1]
    again = codec.rewrite(end, name="add", seq_id=7)
    (b, e) = ThriftDecoder(transport, protocol).receive_data(again)
    assert (b.name, b.seq_id, e.frame[e.body_offset:]) == ("add", 7, end.frame[end.body_offset:])
    if transport == "header":
        assert b.headers == {"k": "v"}
    # and thrift itself reads it
    mem = TMemoryBuffer(again)
    if transport == "header":
        p = THeaderProtocol(mem, [THeaderClientType.HEADERS])
    else:
        p = PROTOCOLS[protocol](TFramedTransport(mem) if transport == "framed" else mem)
    assert p.readMessageBegin() == ("add", TMessageType.CALL, 7)


@pytest.mark.parametrize("transport,protocol", CASES)
def test_app_exception_is_what_a_thrift_client_reads(transport, protocol):
    raw = codec.app_exception(transport, protocol, "nope", 9, "no route for method 'nope'",
                              codec.UNKNOWN_METHOD)
    mem = TMemoryBuffer(raw)
    if transport == "header":
        p = THeaderProtocol(mem, [THeaderClientType.HEADERS])
    else:
        p = PROTOCOLS[protocol](TFramedTransport(mem) if transport == "framed" else mem)
    assert p.readMessageBegin() == ("nope", TMessageType.EXCEPTION, 9)
    x = TApplicationException()
    x.read(p)
    assert (x.type, x.message) == (TApplicationException.UNKNOWN_METHOD, "no route for method 'nope'")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(CASES), st.integers(1, 9))
def test_garbage_only_ever_raises_decode_error(tail, case, chunk):
    head = encode(*case, "m", TMessageType.CALL, 1)[:14]
    data = head + tail
    d = ThriftDecoder()
    try:
        for i in range(0, len(data), chunk):
            d.receive_data(data[i:i + chunk])
    except DecodeError:
        pass


@pytest.mark.parametrize("src", CASES)
@pytest.mark.parametrize("dst", CASES)
def test_translate_between_every_transport_and_protocol(src, dst):
    """A message with every type (nested maps of bool lists, sets of doubles, i64, a nested
    struct) in any transport/protocol, translated: thrift reads the same values back."""
    raw = encode(*src, "Calc:add", TMessageType.REPLY, 41, first_field=0)
    end = ThriftDecoder(*src).receive_data(raw)[1]
    out = codec.translate(end, *dst)
    (b, e) = ThriftDecoder(*dst).receive_data(out)
    assert (b.name, b.type, b.seq_id, e.reply_field_id) == ("Calc:add", TMessageType.REPLY, 41, 0)
    # the values survive (an empty map's key/value types do not exist in compact)
    assert values(e) == values(end)
    back = codec.translate(e, *src)
    (b2, e2) = ThriftDecoder(*src).receive_data(back)
    assert values(e2) == values(end)
    if src[1] == dst[1] or src[1] == "compact":
        assert e2.frame[e2.body_offset:] == end.frame[end.body_offset:]


def values(end):
    def norm(t, v):
        if t == codec.T_STRUCT:
            return [(fid, ft, norm(ft, fv)) for fid, ft, fv in v]
        if t in (codec.T_LIST, codec.T_SET):
            return (v[0], [norm(v[0], x) for x in v[1]])
        if t == codec.T_MAP:
            return (v[0], v[1], [(norm(v[0], k), norm(v[1], x)) for k, x in v[2]]) if v[2] else ()
        return v
    r = codec._Reader(end.frame, end.body_offset, len(end.frame), len(end.frame))
    return norm(codec.T_STRUCT, codec._read_fields(r, end.begin.protocol, 0))

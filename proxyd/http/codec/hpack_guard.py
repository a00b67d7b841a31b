"""A structural check of an HPACK header block (RFC 7541) before jh2's Rust decoder sees it.

jh2's decoder panics (a Rust `index out of bounds`, raised as pyo3's PanicException) when
a block ends inside a representation: an integer whose prefix promises continuation bytes
that never come, or a literal cut before its name or value. A panic prints to stderr and,
with RUST_BACKTRACE set, walks the stack, which crashed gevent workers (SIGSEGV, 12-15 in
200 tries). So the block is walked here first, without decoding anything: integers, string
lengths, where a dynamic table size update may stand and how large it may be. What the walk finds, and the
decoder's own errors (bad index, overflow, bad Huffman), end the connection with
COMPRESSION_ERROR, as Envoy (nghttp2) does.
"""
from __future__ import annotations

# an HPACK integer above 2^32 is refused by every decoder; bounding it bounds the loop
_MAX_CONTINUATION_SHIFT = 28


class HpackBlockError(Exception):
    """The header block is malformed; the message says where."""


def _integer(data: bytes, pos: int, end: int, prefix_mask: int) -> tuple[int, int]:
    """The integer whose prefix is at data[pos]: (value, position after it)."""
    value = data[pos] & prefix_mask
    pos += 1
    if value < prefix_mask:
        return value, pos
    shift = 0
    while True:
        if pos >= end:
            raise HpackBlockError("integer truncated at byte %d" % pos)
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > _MAX_CONTINUATION_SHIFT:
            raise HpackBlockError("integer too large at byte %d" % pos)


def _string(data: bytes, pos: int, end: int) -> int:
    """Skip the string literal at data[pos]; the position after it."""
    if pos >= end:
        raise HpackBlockError("string literal missing at byte %d" % pos)
    length, pos = _integer(data, pos, end, 0x7F)
    pos += length
    if pos > end:
        raise HpackBlockError("string literal truncated (%d bytes past the block)" % (pos - end))
    return pos


def check_header_block(data: bytes, max_table_size: int) -> None:
    """Raise HpackBlockError unless `data` is a sequence of whole HPACK representations,
    with any dynamic table size updates at its start and within `max_table_size`, our
    SETTINGS_HEADER_TABLE_SIZE (RFC 7541 4.2; jh2 lets a larger one through)."""
    pos, end = 0, len(data)
    fields_seen = False
    while pos < end:
        b = data[pos]
        if b & 0x80:                                    # indexed field
            index, pos = _integer(data, pos, end, 0x7F)
            if index == 0:
                raise HpackBlockError("index 0 at byte %d" % pos)
            fields_seen = True
            continue
        if b & 0xE0 == 0x20:                            # dynamic table size update
            if fields_seen:
                raise HpackBlockError("table size update after a field at byte %d" % pos)
            size, pos = _integer(data, pos, end, 0x1F)
            if size > max_table_size:
                raise HpackBlockError("table size update to %d, over our limit %d"
                                      % (size, max_table_size))
            continue
        # literal: with incremental indexing (01), without (0000) or never indexed (0001)
        name_index, pos = _integer(data, pos, end, 0x3F if b & 0x40 else 0x0F)
        if name_index == 0:
            pos = _string(data, pos, end)
        pos = _string(data, pos, end)
        fields_seen = True


class GuardedDecoder:
    """jh2's Rust HPACK decoder behind check_header_block; a malformed block, found by the
    walk or by the decoder (`decoder_errors`), raises `error(reason)`. `table_limit()` is
    the dynamic table size we advertise. h2 sets the decoder's limits through the same
    three attributes."""

    __slots__ = ("_decoder", "_error", "_decoder_errors", "_table_limit")

    def __init__(self, decoder, error: type[Exception], decoder_errors: tuple, table_limit):
        self._decoder = decoder
        self._error = error
        self._decoder_errors = decoder_errors
        self._table_limit = table_limit

    def decode(self, data, raw=None):
        data = bytes(data)
        try:
            check_header_block(data, self._table_limit())
            return self._decoder.decode(data, raw=raw)
        except (HpackBlockError, *self._decoder_errors) as e:
            raise self._error("header block: %s" % e) from None

    def _forward(name):  # noqa: N805 - builds the properties below
        return property(lambda self: getattr(self._decoder, name),
                        lambda self, v: setattr(self._decoder, name, v))

    header_table_size = _forward("header_table_size")
    max_allowed_table_size = _forward("max_allowed_table_size")
    max_header_list_size = _forward("max_header_list_size")
    del _forward

"""RESP, sans-IO: a decoder fed bytes that yields whole values, and an encoder.

Values: bytes (bulk string), None (null bulk string), int (integer), `Simple` (simple
string), `Error` (error), list (array), `NULL_ARRAY` (`*-1`). Requests may also come as
inline commands (`PING\\r\\n`), which decode to a list of bytes as Redis parses them.
RESP3 replies (from an upstream connection opened with `HELLO 3`) are delimited too, and
parse to the nearest RESP2 value: null `_` to None, a map to a flat list, a set or push
to a list, a double or big number to its bytes, a boolean to 1/0, a blob error to Error.

For proxying, `Decoder.next_raw()` returns each value's exact bytes without building it,
so a reply can go downstream as it came; `parse()` builds the value when it is needed.
"""
from __future__ import annotations

CRLF = b"\r\n"
MAX_INLINE = 64 * 1024          # Redis' PROTO_INLINE_MAX_SIZE
MAX_BULK = 512 * 1024 * 1024    # Redis' proto-max-bulk-len
MAX_ARRAY = 1024 * 1024 * 1024


class ProtocolError(ValueError):
    """The bytes are not RESP; the connection cannot be resynchronised."""


class Simple(bytes):
    """A simple string reply (`+OK`)."""


class Error(bytes):
    """An error reply (`-ERR ...`), without the leading '-'."""


class _NullArray:
    __slots__ = ()

    def __repr__(self):
        return "NULL_ARRAY"


NULL_ARRAY = _NullArray()
OK = Simple(b"OK")


_BULK = frozenset(b"$=!")                      # bulk, verbatim, blob error
_AGGREGATE = {42: 1, 126: 1, 62: 1, 37: 2, 124: 2}  # * ~ > (elements), % | (pairs)
_LINE = frozenset(b"+-:_#,(")


def _int(buf, start: int, end: int) -> int:
    try:
        return int(buf[start:end])
    except ValueError:
        raise ProtocolError("invalid integer %r" % bytes(buf[start:end])) from None


def skip(buf, pos: int) -> int:
    """The offset just past the value starting at `pos`, or -1 if it is not all there."""
    n = len(buf)
    pending = 1
    while pending:
        if pos >= n:
            return -1
        eol = buf.find(CRLF, pos)
        if eol < 0:
            if n - pos > MAX_INLINE:
                raise ProtocolError("line too long")
            return -1
        t = buf[pos]
        pending -= 1
        if t in _BULK:
            size = _int(buf, pos + 1, eol)
            if size >= 0:
                if size > MAX_BULK:
                    raise ProtocolError("invalid bulk length")
                pos = eol + 2 + size + 2
                if pos > n:
                    return -1
                if buf[pos - 2:pos] != CRLF:
                    raise ProtocolError("bulk string not followed by CRLF")
                continue
        elif t in _AGGREGATE:
            count = _int(buf, pos + 1, eol)
            if count > MAX_ARRAY:
                raise ProtocolError("invalid multibulk length")
            if count > 0:
                pending += count * _AGGREGATE[t]
            if t == 124:  # | attributes come before the value they describe
                pending += 1
        elif t not in _LINE:
            raise ProtocolError("unexpected byte %r" % chr(t))
        pos = eol + 2
    return pos


def parse(buf, pos: int = 0):
    """(value, end) for the complete value at `pos` (check with `skip` first)."""
    eol = buf.find(CRLF, pos)
    t = buf[pos]
    if t == 36:
        size = _int(buf, pos + 1, eol)
        if size < 0:
            return None, eol + 2
        start = eol + 2
        return bytes(buf[start:start + size]), start + size + 2
    if t in _AGGREGATE:
        count = _int(buf, pos + 1, eol)
        if count < 0:
            return NULL_ARRAY, eol + 2
        pos = eol + 2
        items = []
        for _ in range(count * _AGGREGATE[t]):
            v, pos = parse(buf, pos)
            items.append(v)
        if t == 124:
            return parse(buf, pos)
        return items, pos
    if t == 43:
        return Simple(buf[pos + 1:eol]), eol + 2
    if t == 45:
        return Error(buf[pos + 1:eol]), eol + 2
    if t == 58 or t == 40:
        return _int(buf, pos + 1, eol), eol + 2
    if t == 95:
        return None, eol + 2
    if t == 35:
        return int(buf[pos + 1] == 116), eol + 2
    if t == 44:
        return bytes(buf[pos + 1:eol]), eol + 2
    if t == 61 or t == 33:
        size = _int(buf, pos + 1, eol)
        start = eol + 2
        body = bytes(buf[start:start + size])
        return (Error(body) if t == 33 else body[4:]), start + size + 2
    raise ProtocolError("unexpected byte %r" % chr(t))


class Decoder:
    """Accumulates bytes; `next_raw()` / `next_request()` return one whole value at a time.

    The buffer is immutable bytes: a read that holds whole requests is parsed in place,
    and a request that is the whole read is forwarded without a copy."""

    __slots__ = ("buf", "pos")

    def __init__(self):
        self.buf = b""
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos >= len(self.buf):
            self.buf = data
        else:
            self.buf = self.buf[self.pos:] + data
        self.pos = 0

    def next_raw(self):
        """The next value's bytes, or None when it is not complete yet."""
        pos = self.pos
        end = skip(self.buf, pos)
        if end < 0:
            return None
        self.pos = end
        return self.buf[pos:end] if pos or end != len(self.buf) else self.buf

    def next_request(self):
        """(args, raw) for the next request, None when it is not complete yet. `args` is
        the list of arguments of an array of bulk strings or of an inline command (then
        `raw` is None: it must be re-encoded); it is None for any other value (Envoy's
        invalid request)."""
        buf, pos = self.buf, self.pos
        n = len(buf)
        if pos >= n:
            return None
        first = buf[pos]
        if first == 42:  # '*': the usual array of bulk strings, in one pass
            eol = buf.find(CRLF, pos)
            if eol < 0:
                if n - pos > MAX_INLINE:
                    raise ProtocolError("line too long")
                return None
            count = _int(buf, pos + 1, eol)
            p = eol + 2
            args = []
            for _ in range(count if count > 0 else 0):
                if p >= n:
                    return None
                if buf[p] != 36:
                    return self._other()
                eol = buf.find(CRLF, p)
                if eol < 0:
                    if n - p > MAX_INLINE:
                        raise ProtocolError("line too long")
                    return None
                size = _int(buf, p + 1, eol)
                if size < 0:
                    return self._other()
                if size > MAX_BULK:
                    raise ProtocolError("invalid bulk length")
                start = eol + 2
                p = start + size + 2
                if p > n:
                    return None
                if buf[p - 2:p] != CRLF:
                    raise ProtocolError("bulk string not followed by CRLF")
                args.append(buf[start:p - 2])
            self.pos = p
            raw = buf[pos:p] if pos or p != n else buf
            return (args if args else None), raw
        if first in b"$+-:":
            return self._other()
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if n - pos > MAX_INLINE:
                raise ProtocolError("too big inline request")
            return None
        line = buf[pos:eol].rstrip(b"\r")
        self.pos = eol + 1
        args = split_inline(line)
        return (args, None) if args else self.next_request()  # Redis skips empty lines

    def _other(self):
        """A request that is not an array of bulk strings: delimited, then refused."""
        raw = self.next_raw()
        return None if raw is None else (None, raw)


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b",
            ord("a"): b"\a"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list:
    """An inline command's arguments as Redis' sdssplitargs reads them: whitespace
    separated, "double quotes" with C escapes (\\n, \\xHH, ...), 'single quotes' with \\'."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args, i, n = [], 0, len(line)
    while True:
        while i < n and line[i] in b" \t\n\r\v\f":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = None
        while i < n:
            c = line[i]
            if quote == 34:
                if c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX \
                        and line[i + 3] in _HEX:
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur += _ESCAPES.get(line[i], bytes((line[i],)))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    quote = None
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 39:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    cur.append(39)
                    i += 1
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    quote = None
                    i += 1
                    break
                else:
                    cur.append(c)
            elif c in b" \t\n\r\v\f":
                break
            elif c in (34, 39):
                quote = c
            else:
                cur.append(c)
            i += 1
        if quote is not None:
            raise ProtocolError("unbalanced quotes in request")
        args.append(bytes(cur))


def encode(value, resp3: bool = False) -> bytes:
    """RESP2, or RESP3 for a client that said `HELLO 3` (nulls are `_`; a dict is a map)."""
    if isinstance(value, Error):
        return b"-" + value + CRLF
    if isinstance(value, Simple):
        return b"+" + value + CRLF
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return b"_\r\n" if resp3 else b"$-1\r\n"
    if isinstance(value, bool):
        raise TypeError("RESP2 has no booleans")
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode(v, resp3) for v in value)
    if isinstance(value, dict):
        if not resp3:
            return encode([x for kv in value.items() for x in kv])
        return b"%%%d\r\n" % len(value) + b"".join(encode(k, True) + encode(v, True)
                                                   for k, v in value.items())
    if value is NULL_ARRAY:
        return b"_\r\n" if resp3 else b"*-1\r\n"
    if isinstance(value, str):
        return encode(value.encode(), resp3)
    raise TypeError("cannot encode %r" % (value,))


def encode_command(args) -> bytes:
    """A request: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

"""HTTP/1.1 codec, sans-IO: bytes in, events out; heads in, bytes out.

Parsing is llhttp (httptools), strict by default. llhttp lets four request-smuggling
shapes through (missing or duplicate Host, Transfer-Encoding on HTTP/1.0, irregular
whitespace in the request line: see research/ecosystem.md section 1); the checks in
`_on_headers_complete` close them. One parser is reused per connection (about 3 us a
request); events are queued so a caller can pull a request body at its own pace and
pipelined requests are answered in order without reading ahead unboundedly (the caller
reads more bytes only when the queue is empty).
"""
from __future__ import annotations

import re
from collections import deque

import httptools

from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead, ResponseHead

HEAD = 0   # payload: RequestHead / ResponseHead
DATA = 1   # payload: bytes
END = 2    # payload: None

# RFC 3986 authority characters (unreserved, pct-encoded, sub-delims, ':', '@', IPv6
# brackets): what Envoy's authority check admits.
_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:@\[\]]+\Z").match


# llhttp's "major.minor" -> the version string, for the two versions a request may carry
_VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_LINE_VERSIONS = {"HTTP/1.1": b"HTTP/1.1", "HTTP/1.0": b"HTTP/1.0"}


class ProtocolError(Exception):
    """A request we must refuse: `status` is what the client gets (400 or 431)."""

    def __init__(self, status: int, details: str):
        super().__init__(details)
        self.status = status
        self.details = details


class RequestParser:
    """Server side: parses requests arriving on one downstream connection."""

    __slots__ = ("_p", "events", "_url", "_headers", "_head_bytes", "_in_head",
                 "_window", "_pos", "_max_head", "_max_headers", "_scheme",
                 "_content_length", "_te", "_hosts", "_host", "_expect", "_valid_authority",
                 "error", "upgrade_rest")

    def __init__(self, max_header_bytes: int = 60 * 1024, max_headers: int = 100,
                 scheme: str = "http"):
        self._p = httptools.HttpRequestParser(self)
        self.events: deque = deque()
        self._max_head = max_header_bytes
        self._max_headers = max_headers
        self._scheme = scheme
        self._in_head = False
        self._window = b""
        self._pos = 0
        self._valid_authority = None  # the last Host that passed _AUTHORITY (keep-alive repeats it)
        self.error: ProtocolError | None = None
        self.upgrade_rest = None  # after an upgrade request: the bytes that followed it
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: list = []
        self._head_bytes = 0
        self._content_length = None
        self._te = None
        self._hosts = 0
        self._host = ""
        self._expect = None

    @property
    def in_head(self) -> bool:
        """Part of a request head has arrived, not all of it."""
        return self._in_head

    @property
    def idle(self) -> bool:
        """True between messages: nothing of a next request has arrived."""
        return not self._in_head and not self.events

    def feed(self, data: bytes) -> None:
        """Parse `data`; append events. Raises ProtocolError; the connection must then close.

        When complete requests precede the bad one in `data`, their events stay queued and
        the error is kept in `error` (raised by the next feed), so pipelined requests
        before a malformed one are still answered in order, as Envoy does."""
        if self.error is not None:
            raise self.error
        if self.upgrade_rest is not None:  # the connection is the upgraded protocol's now
            self.upgrade_rest += data
            return
        try:
            self._feed(data)
        except ProtocolError as e:
            events = self.events
            if not any(kind == END for kind, _ in events):
                raise
            while events[-1][0] != END:
                events.pop()
            self.error = e

    def _feed(self, data: bytes) -> None:
        if self._in_head:
            self._window += data
            if len(self._window) > self._max_head + 8192:
                raise ProtocolError(431, "http1.headers_too_large")
        else:
            self._window = data
            self._pos = 0
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            # Upgrade (with Connection: upgrade) or CONNECT: its head (and END) are
            # queued; what follows is no longer HTTP/1 (the router decides about it)
            events = self.events
            if not events or events[-1][0] != END:
                raise ProtocolError(403, "upgrade_failed") from None
            req = next(ev[1] for ev in reversed(events) if ev[0] == HEAD)
            upgrade = "CONNECT" if req.method == "CONNECT" else req.headers.get("upgrade") or ""
            if upgrade.lower() == "h2c":
                # Envoy drops an h2c upgrade and serves the request as HTTP/1.1 (its
                # Upgrade and HTTP2-Settings are hop-by-hop); llhttp parses no further
                # request on this connection, so it closes after the response
                req.keep_alive = False
            else:
                req.upgrade = upgrade
            offset = e.args[0] if e.args else len(data)
            self.upgrade_rest = data[offset:]
            self._in_head = False
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(400, "http1.codec_error") from e
        except httptools.HttpParserError as e:
            raise ProtocolError(400, "http1.codec_error: %s" % (e.args[0] if e.args else "")) from None
        if not self._in_head:
            self._window = b""

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._in_head = True
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            raise ProtocolError(431, "http1.headers_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked trailer: dropped, as Envoy's HTTP/1 codec does by default
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > self._max_head:
            raise ProtocolError(431, "http1.headers_too_large")
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise ProtocolError(431, "http1.too_many_headers")
        n = name.decode("latin-1").lower()
        v = value.decode("latin-1").rstrip(" \t")  # llhttp keeps trailing OWS (RFC 9112 5)
        if n == "host":
            if not self._hosts:
                self._host = v
            self._hosts += 1
        elif n == "content-length":
            self._content_length = v
        elif n == "transfer-encoding":
            self._te = v
        elif n == "expect" and self._expect is None:
            self._expect = v
        headers.append((n, v))

    def on_headers_complete(self) -> None:
        p = self._p
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            # llhttp also takes "HTTP/0.9" and "HTTP/2.0" request lines, which would skip
            # the Host and Transfer-Encoding checks below.
            raise ProtocolError(400, "http1.invalid_http_version")
        raw_method = p.get_method()
        method = raw_method.decode("ascii")
        url = self._url.decode("latin-1")
        if self._hosts != 1 and (self._hosts > 1 or version == "HTTP/1.1"):
            raise ProtocolError(400, "http1.invalid_host" if self._hosts else "http1.missing_host_header")
        if self._te is not None:
            if version == "HTTP/1.0":
                raise ProtocolError(400, "http1.transfer_encoding_not_allowed")
            if self._te.lower() != "chunked":
                # proxyd would forward only the chunked framing and lose the coding
                # (gzip, chunked): Envoy answers 501 to any other transfer-coding.
                raise ProtocolError(501, "http1.invalid_transfer_encoding")
        # llhttp tolerates repeated spaces in the request line; the exact single-space
        # line must be present in the bytes this head arrived in.
        # The search starts where the previous message in this window ended, so the
        # line inside an earlier pipelined body cannot vouch for this one, however the
        # feeds split it (Content-Length bodies counted, chunk data located).
        line = b"%s %s %s\r\n" % (raw_method, self._url, _LINE_VERSIONS[version])
        window = self._window
        at = window.find(line, self._pos)
        if at < 0:
            raise ProtocolError(400, "http1.invalid_request_line")
        end = window.find(b"\r\n\r\n", at)
        self._pos = end + 4 if end >= 0 else len(window)
        headers = Headers(self._headers)
        if raw_method == b"CONNECT":
            # authority-form (RFC 9112 3.2.3): the target is the :authority, and there
            # is no :path (as Envoy's codec; only connect_matcher routes match it)
            authority = url
            url = ""
        elif url[:1] != "/" and "://" in url:
            # absolute-form (RFC 9112 3.2.2): the target's authority replaces Host and the
            # path goes on as origin-form, as Envoy's allow_absolute_url does.
            authority, _, path = url.split("://", 1)[1].partition("/")
            url = "/" + path
            if authority:
                headers.set("host", authority)
            else:
                authority = self._host
        else:
            authority = self._host
        if authority and authority != self._valid_authority:
            if not _AUTHORITY(authority):
                raise ProtocolError(400, "http1.invalid_authority")
            self._valid_authority = authority
        req = RequestHead(method, url, authority, self._scheme, version, headers)
        req.keep_alive = p.should_keep_alive()
        if self._te is not None:
            req.chunked = True
        elif self._content_length is not None:
            req.content_length = int(self._content_length)
        expect = self._expect
        if expect is not None and expect.lower() == "100-continue" and version == "HTTP/1.1":
            req.expect_continue = True
        self._in_head = False
        self.events.append((HEAD, req))

    def on_body(self, body: bytes) -> None:
        self.events.append((DATA, body))
        if self._te is None:
            # A Content-Length body is its bytes on the wire, wherever the feed split
            # it: the next request line can only start after them.
            self._pos += len(body)
        else:
            # Chunk data lies in the window after its size line: skip past it too.
            at = self._window.find(body, self._pos)
            if at >= 0:
                self._pos = at + len(body)

    def on_message_complete(self) -> None:
        self.events.append((END, None))


class ResponseParser:
    """Client side: parses one response from an upstream connection.

    A new parser per exchange keeps HEAD and early-close handling simple (llhttp cannot
    be told a response has no body); creating one costs about a microsecond.
    """

    __slots__ = ("_p", "events", "_headers", "_head_only", "head", "done", "extra",
                 "_reason", "_until_close", "_max_head", "_head_bytes", "upgrade_rest",
                 "_connect")

    def __init__(self, head_only: bool = False, max_header_bytes: int = 80 * 1024,
                 connect: bool = False):
        self._p = httptools.HttpResponseParser(self)
        self.events: deque = deque()
        self._headers: list = []
        self._head_only = head_only
        self._max_head = max_header_bytes
        self._head_bytes = 0
        self._reason = b""
        self.head: ResponseHead | None = None
        self.done = False
        self.extra = False  # bytes arrived beyond the end of the response
        self._until_close = False
        self.upgrade_rest = None  # after a 101: the upgraded protocol's first bytes
        # a response to CONNECT: a 2xx head starts the tunnel (llhttp cannot be told);
        # the bytes fed so far, to find where the head ended
        self._connect = b"" if connect else None

    def feed(self, data: bytes) -> None:
        """Raises ProtocolError(502) on a malformed response. Bytes past the end of the
        response are not parsed: they set `extra` (the connection must not be reused)."""
        if self.done:
            if data:
                self.extra = True
            return
        if self._connect is not None:
            self._connect += data
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            # 101 Switching Protocols: the head ended the response (its END is queued)
            offset = e.args[0] if e.args else len(data)
            self.upgrade_rest = data[offset:]
            self.done = True
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _TunnelStart):
                buf = self._connect
                self.upgrade_rest = buf[buf.find(b"\r\n\r\n") + 4:]
                self._connect = None
            elif not isinstance(e.__context__, _BeyondResponse):
                raise ProtocolError(502, "upstream_protocol_error") from e
        except httptools.HttpParserError as e:
            if not self.done:
                raise ProtocolError(502, "upstream_protocol_error: %s" % (e.args[0] if e.args else "")) from None
            self.extra = True  # garbage after a complete response
        if self.done:
            # llhttp holds our bound callbacks: dropping it once the response is parsed
            # lets refcounting free both, instead of a cycle per exchange for the GC.
            self._p = None

    def feed_eof(self) -> bool:
        """The upstream closed. True if that ended the response (close-delimited body)."""
        if self.head is not None and self._until_close and not self.done:
            self.done = True
            self._p = None
            self.events.append((END, None))
            return True
        return self.done

    def on_message_begin(self) -> None:
        if self.done:  # a second message where the upstream owes none
            self.extra = True
            raise _BeyondResponse()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > self._max_head:
            raise ProtocolError(502, "upstream_headers_too_large")
        self._headers.append((name.decode("latin-1").lower(),
                              value.decode("latin-1").rstrip(" \t")))

    def on_headers_complete(self) -> None:
        p = self._p
        status = p.get_status_code()
        headers = Headers(self._headers)
        self._headers = []
        resp = ResponseHead(status, headers, self._reason.decode("latin-1"),
                            "HTTP/" + p.get_http_version())
        self._reason = b""
        resp.keep_alive = p.should_keep_alive()
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            resp.chunked = True
        elif cl is not None:
            resp.content_length = int(cl)
        if 100 <= status < 200 and status != 101:
            # 1xx interim response: report it, keep parsing the final one.
            self.events.append((HEAD, resp))
            return
        self.head = resp
        self.events.append((HEAD, resp))
        if self._connect is not None and 200 <= status < 300:
            self.done = True  # the CONNECT tunnel starts after this head
            self.events.append((END, None))
            raise _TunnelStart()
        bodyless = self._head_only or status in (204, 304)
        if bodyless:
            self.done = True
            self.events.append((END, None))
        elif te is None and cl is None:
            self._until_close = True
            resp.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.done:  # a body after the head of a response to HEAD
            self.extra = True
            raise _BeyondResponse()
        self.events.append((DATA, body))

    def on_message_complete(self) -> None:
        if not self.done and self.head is not None:
            self.done = True
            self.events.append((END, None))


class _BeyondResponse(Exception):
    """Raised inside llhttp to stop at bytes past the end of the response."""


class _TunnelStart(Exception):
    """Raised inside llhttp at a 2xx head answering CONNECT: the tunnel's bytes follow."""


def _header_lines(items: list) -> str:
    """`name: value` lines, each ending CRLF. map(": ".join) runs in C: a third of the
    cost of formatting each pair in a generator."""
    if not items:
        return ""
    return "\r\n".join(map(": ".join, items)) + "\r\n"


def encode_request_head(req: RequestHead, headers: Headers) -> bytes:
    """Serialise a request line and headers for an upstream (always HTTP/1.1)."""
    target = req.path if req.method != "CONNECT" else req.authority  # authority-form
    return ("%s %s HTTP/1.1\r\n%s\r\n" % (req.method, target, _header_lines(headers.items))
            ).encode("latin-1")


_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    204: "No Content", 206: "Partial Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def encode_response_head(status: int, headers: Headers, version: str = "HTTP/1.1") -> bytes:
    return ("%s %d %s\r\n%s\r\n" % (version, status, _REASONS.get(status, "Unknown"),
                                      _header_lines(headers.items))).encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


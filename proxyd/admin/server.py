"""The admin listener: a gevent StreamServer speaking just enough HTTP/1.1 (httptools).

The master binds the admin socket itself (a hot restart hands sockets over) and passes the
listening socket; the server works on a duplicate of it, so ``stop()`` closes only the
duplicate and the master keeps its own descriptor to hand on.
"""

import logging
import os
import socket
import time
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import gevent.socket
import httptools
from gevent.server import StreamServer

from .handlers import Request, Response, dispatch

log = logging.getLogger("proxyd.admin")

MAX_URL = 8192
MAX_HEADER_BYTES = 65536
MAX_BODY = 1 << 20
IDLE_TIMEOUT_S = 300.0


class AdminServer:
    def __init__(self, ctx, sock_or_address):
        """``sock_or_address``: a bound, listening socket, or an (host, port) to bind here."""
        self.ctx = ctx
        listener = sock_or_address
        if isinstance(listener, socket.socket) and not isinstance(listener, gevent.socket.socket):
            listener = gevent.socket.socket(listener.family, listener.type, listener.proto,
                                            fileno=os.dup(listener.fileno()))
        self._server = StreamServer(listener, self._serve)

    @property
    def address(self):
        return self._server.address

    def start(self) -> None:
        self._server.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._server.stop(timeout)

    def _serve(self, sock, address) -> None:
        sock.settimeout(IDLE_TIMEOUT_S)
        try:
            _Connection(self.ctx, sock).run()
        except OSError:
            pass
        finally:
            sock.close()


class _Connection:
    """One keep-alive client connection; requests are answered in order."""

    def __init__(self, ctx, sock):
        self.ctx = ctx
        self.sock = sock
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[Request, bool]] = []
        self._url = b""
        self._header_bytes = 0
        self._body_bytes = 0
        self._body = b""
        self._error = None

    # httptools callbacks
    def on_message_begin(self):
        self._url, self._header_bytes, self._body_bytes = b"", 0, 0
        self._body = b""

    def on_url(self, url: bytes):
        self._url += url
        if len(self._url) > MAX_URL:
            self._error = HTTPStatus.REQUEST_URI_TOO_LONG

    def on_header(self, name: bytes, value: bytes):
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._error = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE

    def on_body(self, body: bytes):
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY:
            self._error = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        else:
            self._body += body

    def on_message_complete(self):
        url = urlsplit(self._url.decode("latin-1"))
        request = Request(self.parser.get_method().decode("latin-1"), url.path or "/",
                          parse_qs(url.query, keep_blank_values=True),
                          parse_qs(self._body.decode("latin-1"), keep_blank_values=True)
                          if self._body else {})
        self.done.append((request, self.parser.should_keep_alive()))

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                return
            if not data:
                return
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self._write(Response(400, b"Bad Request\n"), keep_alive=False, head=False)
                return
            if self._error is not None:
                status = self._error
                self._write(Response(status, f"{status.phrase}\n".encode()), keep_alive=False, head=False)
                return
            while self.done:
                request, keep_alive = self.done.pop(0)
                response = self._answer(request)
                keep_alive = keep_alive and ("Connection", "close") not in response.headers
                self._write(response, keep_alive, head=request.method == "HEAD")
                if response.after is not None:
                    response.after()
                if not keep_alive:
                    return

    def _answer(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            response = dispatch(self.ctx, request)
        except Exception:
            log.exception("admin %s %s failed", request.method, request.path)
            response = Response(500, b"Internal Server Error\n")
        log.debug("admin %s %s -> %d in %.1f ms", request.method, request.path, response.status,
                  (time.monotonic() - started) * 1000)
        return response

    def _write(self, response: Response, keep_alive: bool, head: bool) -> None:
        phrase = HTTPStatus(response.status).phrase
        headers = [f"HTTP/1.1 {response.status} {phrase}",
                   f"Content-Type: {response.content_type}",
                   f"Content-Length: {len(response.body)}",
                   "Cache-Control: no-cache, max-age=0",
                   "X-Content-Type-Options: nosniff"]
        headers += [f"{name}: {value}" for name, value in response.headers if name != "Connection"]
        headers.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head_bytes = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(head_bytes if head else head_bytes + response.body)

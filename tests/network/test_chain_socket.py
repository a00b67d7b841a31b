"""The pull driver of a chain whose terminal filter runs its own blocking loop (the HCM),
in this process on gevent, over real sockets: `FilterChainConnection.serve_pulled` and
`ChainSocket`. The terminal here is a small line-echo loop reading `conn.sock` as the
HTTP codecs do; the filters in front are Envoy-shaped read (and write) filters.
"""
from __future__ import annotations

import socket

import gevent
import pytest
from gevent.server import StreamServer

from proxyd.network.connection import FilterChainConnection
from proxyd.network.filter import ConnectionEvent, FilterStatus



class Downstream:
    """What the listener hands a filter chain (listener.manager.DownstreamConnection)."""

    def __init__(self, sock, addr):
        self.sock, self.id = sock, 1
        self.remote_address = "%s:%d" % addr
        self.local_address = "127.0.0.1:0"
        self.requested_server_name = ""
        self.protocol = None


class EchoTerminal:
    """Reads its socket (a ChainSocket) line by line and answers each upper-cased."""
    pulls_from_chain = True

    def __init__(self, log):
        self.log = log
        self.sink = None
        self.events = []
        self.error = None

    def __call__(self, fm):
        fm.add_read_filter(self)

    def initialize_read_filter_callbacks(self, callbacks):
        callbacks.connection.add_connection_callbacks(self)

    def attach(self, sink):
        self.sink = sink

    def on_new_connection(self):
        self.log.append("terminal:new")
        return FilterStatus.CONTINUE

    def on_data(self, data, end_stream):
        self.log.append("terminal:%r" % data)
        self.sink.deliver(data, end_stream)
        return FilterStatus.STOP_ITERATION

    def on_event(self, event):
        self.events.append(event)

    def serve(self, conn):
        sock = conn.sock
        sock.settimeout(self.timeout)
        buf = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    sock.send(line.upper() + b"\n")
        except socket.timeout as e:
            self.error = e

    timeout = None


class Front:
    """Logs what it sees; optionally pauses on its first data until resumed from
    another greenlet, or closes the connection on a marker."""

    def __init__(self, log, pause: float | None = None, close_on: bytes | None = None):
        self.log, self.pause, self.close_on = log, pause, close_on
        self.paused = False

    def __call__(self, fm):
        fm.add_read_filter(self)

    def initialize_read_filter_callbacks(self, callbacks):
        self.callbacks = callbacks

    def on_new_connection(self):
        self.log.append("front:new")
        return FilterStatus.CONTINUE

    def on_data(self, data, end_stream):
        self.log.append("front:%r" % data)
        if self.close_on is not None and self.close_on in data:
            self.callbacks.connection.close()
            return FilterStatus.STOP_ITERATION
        if self.pause is not None and not self.paused:
            self.paused = True
            if self.pause >= 0:
                gevent.spawn_later(self.pause, self._resume)
            return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE

    def _resume(self):
        self.log.append("front:resume")
        self.callbacks.continue_reading()


class Tagger:
    """A write filter: what the terminal writes goes through it."""

    def __init__(self, log):
        self.log = log

    def __call__(self, fm):
        fm.add_write_filter(self)

    def on_write(self, data, end_stream):
        self.log.append("write:%r" % data)
        return FilterStatus.CONTINUE


def run(filters, payloads, shutdown=True):
    """Serve one connection with `filters`; a thread client sends `payloads` (reading a
    line back after each when it can) and returns what it got."""
    done = gevent.event.AsyncResult()

    def serve(sock, addr):
        conn = FilterChainConnection(Downstream(sock, addr), filters)
        conn.serve_pulled()
        done.set(conn)
    server = StreamServer(("127.0.0.1", 0), serve)
    server.start()

    def client():
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as s:
            got = b""
            for p in payloads:
                try:
                    s.sendall(p)
                except OSError:
                    break
                while got.count(b"\n") < sum(x.count(b"\n") for x in payloads[:payloads.index(p) + 1]):
                    chunk = s.recv(65536)
                    if not chunk:
                        return got
                    got += chunk
            if shutdown:
                s.shutdown(socket.SHUT_WR)
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    return got
                if not chunk:
                    return got
                got += chunk
    try:
        got = gevent.get_hub().threadpool.spawn(client).get(timeout=10)
        conn = done.get(timeout=10)
    finally:
        server.stop()
    return got, conn


def test_front_filter_sees_bytes_before_the_terminal():
    log = []
    term = EchoTerminal(log)
    got, conn = run([Front(log), term], [b"one\n", b"two\n"])
    assert got == b"ONE\nTWO\n"
    assert log == ["front:new", "terminal:new", "front:b'one\\n'", "terminal:b'one\\n'",
                   "front:b'two\\n'", "terminal:b'two\\n'", "front:b''", "terminal:b''"]
    assert conn.closed and term.events == [ConnectionEvent.REMOTE_CLOSE]


def test_paused_filter_resumed_from_another_greenlet():
    log = []
    got, conn = run([Front(log, pause=0.1), EchoTerminal(log)], [b"held\n", b"after\n"])
    assert got == b"HELD\nAFTER\n"
    # the terminal saw nothing until the resume, then the held bytes first, in order
    i = log.index("front:resume")
    assert "terminal:b'held\\n'" not in log[:i]
    assert log[i + 1] == "terminal:b'held\\n'"


def test_front_filter_closing_ends_the_terminal_loop():
    log = []
    term = EchoTerminal(log)
    got, conn = run([Front(log, close_on=b"bad"), term], [b"ok\n", b"bad\n"], shutdown=False)
    assert got == b"OK\n"
    assert "terminal:b'bad\\n'" not in log
    assert conn.closed and term.events == [ConnectionEvent.LOCAL_CLOSE]


def test_timeout_while_a_filter_holds_the_bytes():
    log = []
    term = EchoTerminal(log)
    term.timeout = 0.2
    got, conn = run([Front(log, pause=-1), term], [b"never\n"], shutdown=False)
    assert got == b""
    assert isinstance(term.error, socket.timeout)
    assert conn.closed


def test_writes_go_through_write_filters():
    log = []
    got, _ = run([Tagger(log), EchoTerminal(log)], [b"w\n"])
    assert got == b"W\n"
    assert "write:b'W\\n'" in log


@pytest.mark.parametrize("size", [1, 5])
def test_recv_into_respects_the_buffer(size):
    """copy_pump (an upgraded tunnel) reads with recv_into: what does not fit stays."""
    log = []

    class IntoTerminal(EchoTerminal):
        def serve(self, conn):
            buf = bytearray(size)
            out = b""
            while True:
                n = conn.sock.recv_into(buf)
                if not n:
                    break
                out += bytes(buf[:n])
                if out.endswith(b"\n"):
                    conn.sock.sendall(out.upper())
                    out = b""
    got, _ = run([Front(log), IntoTerminal(log)], [b"abcdefgh\n"])
    assert got == b"ABCDEFGH\n"


def test_raw_socket_fast_paths_do_not_bypass_the_chain():
    """WaitingReader reads `sock._sock` directly when it exists: a ChainSocket hides it,
    so such a reader falls back to recv() through the filters."""
    from proxyd.network.chain_socket import ChainSocket
    from proxyd.network.io import WaitingReader
    log = []

    class ReaderTerminal(EchoTerminal):
        def serve(self, conn):
            assert not hasattr(conn.sock, "_sock") and conn.sock.through_chain
            reader = WaitingReader(conn.sock, 65536)
            try:
                while data := reader.recv():
                    conn.sock.sendall(data.upper())
            finally:
                reader.close()
    got, _ = run([Front(log), ReaderTerminal(log)], [b"r\n"])
    assert got == b"R\n" and "front:b'r\\n'" in log
    assert ChainSocket.through_chain

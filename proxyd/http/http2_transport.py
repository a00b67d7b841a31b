"""The socket side of an HTTP/2 connection, shared by the downstream connection
(`proxyd/http/http2_connection.py`) and the upstream codec client
(`proxyd/upstream/codec_client_http2.py`): a writer greenlet and flow-control waits."""
from __future__ import annotations

import gevent
from gevent.event import Event

from proxyd.http.codec import http2 as h2c

FLUSH_AT = 65536  # send buffered output once this much is waiting


class ConnectionClosed(Exception):
    """The HTTP/2 connection is gone (socket error, GOAWAY with an error, protocol error)."""


class H2Transport:
    """Socket side of an HTTP/2 connection shared by many greenlets.

    A dedicated writer greenlet does every socket write, so no other greenlet can be
    interrupted half-way through a frame (stream greenlets are killed on a client reset);
    the reader only wakes it and keeps reading, stream greenlets wait for it to drain
    the buffer (`flush_wait`), so a stream cannot run ahead of the socket.
    """

    def __init__(self, sock, codec: h2c.Http2Codec):
        self.sock = sock
        self.codec = codec
        self.closed = False
        self.writing = False  # the writer is in a socket write (the peer may not be reading)
        self._want = Event()
        self._drained = Event()
        self._drained.set()
        self._window_waiters: dict = {}
        self._writer = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        codec = self.codec
        want = self._want
        sendall = self.sock.sendall
        try:
            while not self.closed:
                want.wait()
                want.clear()
                while True:
                    data = codec.data_to_send()
                    if not data:
                        break
                    self.writing = True
                    sendall(data)
                    self.writing = False
                    codec.written()
                    self.on_tx(len(data))
                self._drained.set()
        except OSError:
            self.on_io_error()
        finally:
            self._drained.set()

    def flush(self) -> None:
        """Have the writer send what the codec has queued; does not wait."""
        if not self.closed and self.codec.pending():
            self._drained.clear()
            self._want.set()

    def flush_wait(self) -> None:
        """Flush and wait until the queued bytes are written (backpressure)."""
        self.flush()
        if not self._drained.is_set():
            self._drained.wait()

    def stop_writer(self) -> None:
        """Send what is queued (waiting at most a second), then stop the writer."""
        self.flush()
        if not self._drained.is_set():
            self._drained.wait(timeout=1.0)
        self.closed = True
        self._want.set()
        self.wake(0)

    def wait_window(self, sid: int) -> None:
        """Block until the peer opens a window (or the stream/connection ends)."""
        ev = self._window_waiters.get(sid)
        if ev is None:
            ev = self._window_waiters[sid] = Event()
        ev.clear()
        self.flush()
        ev.wait()

    def wake(self, sid: int) -> None:
        if sid == 0:
            for ev in self._window_waiters.values():
                ev.set()
        else:
            ev = self._window_waiters.get(sid)
            if ev is not None:
                ev.set()

    def forget(self, sid: int) -> None:
        self._window_waiters.pop(sid, None)

    def send_body(self, sid: int, data, end_stream: bool, is_open) -> None:
        """Send `data` on `sid` as the windows allow; `is_open()` says whether to go on."""
        codec = self.codec
        n = len(data)
        if n == 0:
            if end_stream:
                codec.end_stream(sid)
            return
        view = memoryview(data)
        off = 0
        while off < n:
            if self.closed or not is_open():
                raise ConnectionClosed()
            win = codec.window(sid)
            if win <= 0:
                self.wait_window(sid)
                continue
            size = min(win, codec.max_frame, n - off)
            last = off + size >= n
            codec.send_data(sid, bytes(view[off:off + size]) if size != n else data,
                            end_stream and last)
            off += size
            if codec.pending() >= FLUSH_AT:
                self.flush_wait()

    def on_tx(self, n: int) -> None:
        pass

    def on_io_error(self) -> None:
        self.closed = True
        self.wake(0)

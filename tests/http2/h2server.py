"""A scriptable HTTP/2 (h2c) upstream for tests, on proxyd's sans-IO codec, in threads.

Paths choose the behaviour:
(matched on the path's last segment, so any prefix works)
- /rst            RST_STREAM (INTERNAL_ERROR) instead of a response
- /rst-after      response headers and some DATA, then RST_STREAM
- /goaway         answer 200, then GOAWAY(last_stream_id = this stream)
- /slow           answer after 0.3 s
- /head-body      a body (content-length 5) even in reply to HEAD, which HTTP/2 forbids
- /wait-end       answer only once the request has ended
- anything else   200, body "conn=<n> sid=<id> path=<path>", trailer x-done: 1
It counts connections, records the most streams open at once on one connection and
the RST_STREAMs it received (`resets`: (stream id, error code)).
"""
from __future__ import annotations

import socket
import threading
import time

from proxyd.http.codec import http2 as h2c


class H2Server:
    def __init__(self, max_concurrent_streams: int = 100):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.max_streams = max_concurrent_streams
        self.connections = 0
        self.max_open = 0
        self.paths: list = []
        self.resets: list = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(s, self.connections), daemon=True).start()

    def _serve(self, s, n: int) -> None:
        opts = h2c.Http2Options()
        opts.max_concurrent_streams = self.max_streams
        codec = h2c.Http2Codec(False, opts)
        lock = threading.Lock()
        open_streams: set = set()
        waiting: dict = {}  # /wait-end streams: sid -> (path, method)

        def send():
            data = codec.data_to_send()
            if data:
                s.sendall(data)

        def respond(sid, path, method):
            try:
                _respond(sid, path, method)
            except h2c.StreamClosedError:
                pass  # the client reset it meanwhile

        def _respond(sid, path, method):
            with lock:
                if path.endswith("/rst"):
                    codec.reset(sid, h2c.INTERNAL_ERROR)
                elif path.endswith("/head-body"):
                    codec.send_headers(sid, [(":status", "200"), ("content-length", "5")],
                                       False)
                    codec.send_data(sid, b"hello", True)
                elif path.endswith("/rst-after"):
                    codec.send_headers(sid, [(":status", "200")], False)
                    codec.send_data(sid, b"partial", False)
                    send()
                    codec.reset(sid, h2c.INTERNAL_ERROR)
                else:
                    body = ("conn=%d sid=%d path=%s" % (n, sid, path)).encode()
                    codec.send_headers(sid, [(":status", "200"),
                                             ("content-type", "text/plain")], method == "HEAD")
                    if method != "HEAD":
                        codec.send_data(sid, body, False)
                        codec.send_headers(sid, [("x-done", "1")], True)
                    if path.endswith("/goaway"):
                        codec.goaway(sid)
                open_streams.discard(sid)
                send()

        with lock:
            send()
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return
                with lock:
                    events = codec.receive(data)
                    todo = []
                    for ev in events:
                        if ev[0] == h2c.HEADERS:
                            head = dict(ev[2])
                            path = head[":path"]
                            self.paths.append(path)
                            open_streams.add(ev[1])
                            self.max_open = max(self.max_open, len(open_streams))
                            if path.endswith("/wait-end") and not ev[3]:
                                waiting[ev[1]] = (path, head[":method"])
                            else:
                                todo.append((ev[1], path, head[":method"]))
                        elif ev[0] == h2c.DATA:
                            codec.acknowledge(ev[1], ev[3])
                        elif ev[0] == h2c.END and ev[1] in waiting:
                            todo.append((ev[1],) + waiting.pop(ev[1]))
                        elif ev[0] == h2c.RESET:
                            self.resets.append((ev[1], ev[2]))
                            waiting.pop(ev[1], None)
                    send()
                for sid, path, method in todo:
                    if path.endswith("/slow"):
                        threading.Timer(0.3, respond, (sid, path, method)).start()
                    else:
                        respond(sid, path, method)
        except OSError:
            return
        finally:
            s.close()

    def stop(self) -> None:
        self._stop = True
        self.sock.close()

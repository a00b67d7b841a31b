"""Response desync: bytes an upstream sends beyond the end of its response (a wrong
Content-Length, a body after a response to HEAD) must never reach a later request.

Envoy closes such a connection (`upstream_cx_protocol_error`, `upstream_cx_destroy_local`),
and so does proxyd: the response parser notices bytes past the end of the response, and
an idle pooled connection is watched for readable data or EOF until it is reused.
"""
import socket
import threading
import time
import urllib.request

import pytest

from harness import Conn, free_port, simple_config

STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Stray: yes\r\n\r\nSTRAY"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class MisbehavingUpstream:
    """A raw HTTP/1.1 upstream (keep-alive, bodiless requests) that misbehaves on cue:
    /cl answers `ok` with a Content-Length of 2 followed by a whole stray response,
    /cl-late sends the stray response 50 ms after a correct one, /partial sends half a
    stray response with the good one and the rest later; a HEAD to /head gets a head
    followed by a body (the stray response), /head-late gets the body 50 ms later;
    /close-late closes the connection 50 ms after a correct answer. Anything else is
    answered correctly, with its own path as the body."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                head_of_stray = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(STRAY)
                if path == b"/cl":
                    c.sendall(OK + STRAY)
                elif path == b"/cl-late":
                    c.sendall(OK)
                    time.sleep(0.05)
                    c.sendall(STRAY)
                elif path == b"/partial":
                    c.sendall(OK + STRAY[:20])
                    time.sleep(0.05)
                    c.sendall(STRAY[20:])
                elif path == b"/head" and method == b"HEAD":
                    c.sendall(head_of_stray + STRAY)
                elif path == b"/head-late" and method == b"HEAD":
                    c.sendall(head_of_stray)
                    time.sleep(0.05)
                    c.sendall(STRAY)
                elif path == b"/close-late":
                    c.sendall(OK)
                    time.sleep(0.05)
                    return
                elif method == b"HEAD":
                    c.sendall(OK[:-2])
                else:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def misbehaving():
    up = MisbehavingUpstream()
    yield up
    up.close()


def _counters(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.mark.parametrize("clients", ["keep-alive", "fresh"])
@pytest.mark.parametrize("method,cue", [("GET", "/cl"), ("GET", "/cl-late"), ("GET", "/partial"),
                                        ("HEAD", "/head"), ("HEAD", "/head-late")])
def test_stray_bytes_never_reach_a_later_client(method, cue, clients, misbehaving,
                                                proxyd_factory):
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), misbehaving.port, admin_port=admin))
    keep = Conn(px.port) if clients == "keep-alive" else None

    def client():
        return keep if keep is not None else Conn(px.port)

    c = client()
    r = c.request(method, cue)
    assert r.status == 200 and r.header("x-stray") is None
    assert r.body == (b"" if method == "HEAD" else b"ok")
    time.sleep(0.3)  # the late bytes are in by now, on an idle pooled connection
    strays = 0
    for i in range(20):
        c = client()
        path = "/next/%d" % i
        r = c.request("GET", path)
        strays += r.header("x-stray") is not None or r.body != path.encode()
        if keep is None:
            c.close()
    assert strays == 0, "%d of 20 later clients got a response not their own" % strays
    stats = _counters(admin)
    assert stats["cluster.upstream.upstream_cx_protocol_error"] == "1"
    assert stats["cluster.upstream.upstream_rq_200"] == "21"
    if keep is not None:
        keep.close()


def test_upstream_closing_an_idle_connection_is_counted(misbehaving, proxyd_factory):
    """An idle pooled connection the upstream closes is dropped as soon as the FIN
    arrives (the read side is watched while idle), counted as Envoy counts it, and the
    next request gets a new connection."""
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), misbehaving.port, admin_port=admin))
    with Conn(px.port) as c:
        assert c.request("GET", "/close-late").body == b"ok"
    time.sleep(0.3)
    stats = _counters(admin)
    assert stats["cluster.upstream.upstream_cx_active"] == "0"
    assert stats["cluster.upstream.upstream_cx_destroy_remote"] == "1"
    with Conn(px.port) as c:
        assert c.request("GET", "/b").body == b"/b"
    assert misbehaving.connections == 2


def test_concurrent_clients_after_stray_bytes_on_several_pooled_connections(misbehaving,
                                                                          proxyd_factory):
    """The attack's shape: several pooled connections carry late stray responses, then
    20 clients arrive at once (fresh connections): none gets a response not its own."""
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), misbehaving.port, admin_port=admin))
    cues = [threading.Thread(target=lambda: Conn(px.port).request("GET", "/cl-late"))
            for _ in range(5)]
    for t in cues:
        t.start()
    for t in cues:
        t.join()
    time.sleep(0.3)
    wrong = []

    def client(i):
        path = "/next/%d" % i
        with Conn(px.port) as c:
            r = c.request("GET", path)
            if r.header("x-stray") is not None or r.body != path.encode():
                wrong.append(path)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    assert not wrong, "%d of 20 clients got a response not their own" % len(wrong)
    stats = _counters(admin)
    # every connection closed was closed for its stray bytes, none for anything else
    closed = misbehaving.connections - int(stats["cluster.upstream.upstream_cx_active"])
    assert closed >= 1 and int(stats["cluster.upstream.upstream_cx_protocol_error"]) == closed

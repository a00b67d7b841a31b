"""A connection that the draining master's worker accepted but that has not sent its
request yet is not idle: its client connected to send one. A reload must answer it
(with `Connection: close`), not close it. This was the reload-under-load read error:
a client reconnecting just as the old workers began to drain had its new connection
closed under its first request."""
import time

from harness import Conn, free_port
from hr_helpers import config, reload, wait_gone

CLIENTS = 8


def test_connection_accepted_before_the_reload_is_answered(upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=1, drain_time_s=10)
    old_master = px.pid
    conns = [Conn(port) for _ in range(CLIENTS)]
    time.sleep(0.3)                  # accepted by the old worker, nothing sent yet
    r = reload(px)
    assert r.rc == 0, r
    time.sleep(0.5)                  # the old worker is draining now
    try:
        for c in conns:
            resp = c.request(path="/up")
            assert resp.status == 200, resp
            assert resp.header("connection") == "close", resp
            assert c.is_closed()
    finally:
        for c in conns:
            c.close()
    assert wait_gone(old_master, 15), "the old master outlived its drain"

"""The master's control socket (proxyd stop / reload / status) against clients that hang
up before the answer: the master logs no traceback and keeps answering."""
from __future__ import annotations

import json
import os
import socket
import time

from harness import bootstrap, cluster, free_port, listener, route


def test_clients_that_leave_before_the_answer(proxyd_factory):
    px = proxyd_factory(bootstrap([listener(free_port(), routes=[route("/")])],
                                  [cluster("upstream", [("127.0.0.1", 1)])]))
    path = os.path.join(px.runtime_dir, "control.sock")
    for _ in range(100):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(json.dumps({"cmd": "status"}).encode() + b"\n")
        s.close()
    time.sleep(0.5)
    assert px.status()["state"] == "LIVE"
    log = px.log()
    assert "Traceback" not in log and "BrokenPipeError" not in log, log[-2000:]

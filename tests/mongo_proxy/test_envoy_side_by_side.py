"""The legacy Mongo paths through real Envoy 1.40 and through proxyd on the same
bootstrap: the same mongo.* counters and the same access-log lines (time and the
server's random reply ids aside). OP_COMPRESSED ends sniffing in both."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest

from envoy_peer import Envoy, admin_stats
from harness import free_port, wait_port

from .conftest import mongo_bootstrap
from .frames import op_compressed
from .test_mongo_proxy import legacy_session, wait_for


def run(port: int, log) -> None:
    legacy_session(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(op_compressed(2004, b"\x00" * 12))
        s.settimeout(5)
        try:
            s.recv(100)               # mockupdb cannot read OP_COMPRESSED and hangs up
        except OSError:
            pass


def settled(admin: int) -> dict:
    def ready():
        st = admin_stats(admin, "mongo.mg.")
        return st if st.get("mongo.mg.decoding_error") == 1 and \
            st.get("mongo.mg.op_kill_cursors") == 1 and st.get("mongo.mg.op_query_active") == 0 else None
    st = wait_for(ready)
    assert st is not None, admin_stats(admin, "mongo.mg.")
    return st


def log_lines(path) -> list:
    def norm(line):
        d = json.loads(line)
        del d["time"]
        if d["message"]["opcode"] == "OP_REPLY":
            d["message"]["id"] = "<reply id>"
        return d
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= 16, timeout=5)
    time.sleep(1.2)                   # proxyd's sink flushes every second
    return [norm(x) for x in path.read_text().splitlines()]


# mockupdb's reader thread raises on OP_COMPRESSED, the opcode it cannot unpack
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_legacy_stats_and_access_log_match_envoy(proxyd_factory, mongo_server, tmp_path):
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        log = tmp_path / ("%s-mongo.log" % side)
        cfg = mongo_bootstrap(port, mongo_server.port, admin, access_log=str(log),
                              commands=["insert", "ping"])
        if side == "envoy":
            envoy = Envoy(cfg, tmp_path, admin).start()
        else:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            run(port, log)
            results[side] = (settled(admin), log_lines(log))
        finally:
            if side == "envoy":
                envoy.cleanup()
    (e_stats, e_log), (p_stats, p_log) = results["envoy"], results["proxyd"]
    assert p_stats == e_stats
    assert p_log == e_log
    assert re.search(r'"opcode": "OP_GET_MORE"', json.dumps(p_log))

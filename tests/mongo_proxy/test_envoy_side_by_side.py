"""The legacy Mongo paths through real Envoy 1.40 and through proxyd on the same
bootstrap: the same mongo.* counters and the same access-log lines (time and the
server's random reply ids aside). OP_COMPRESSED ends sniffing in both."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest

from real_envoy import Envoy, admin_stats
from harness import free_port, wait_port

from .conftest import mongo_bootstrap
from .frames import op_compressed
from .test_mongo_proxy import legacy_session, wait_for


def run(port: int) -> None:
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
            envoy = Envoy.of(cfg, tmp_path, admin).start()
        else:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            run(port)
            results[side] = (settled(admin), log_lines(log))
        finally:
            if side == "envoy":
                envoy.cleanup()
    (e_stats, e_log), (p_stats, p_log) = results["envoy"], results["proxyd"]
    assert p_stats == e_stats
    assert p_log == e_log
    assert re.search(r'"opcode": "OP_GET_MORE"', json.dumps(p_log))


def silent_upstream(hang_up: bool):
    """A server that reads and never answers; with hang_up it closes after the first read."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(conn):
        with conn:
            while conn.recv(65536):
                if hang_up:
                    return

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return srv


def test_connection_closed_with_a_query_pending_matches_envoy(proxyd_factory, tmp_path):
    """A query left unanswered when the client leaves or the server hangs up. Through
    tcp_proxy's half-close the last FIN decides, in Envoy 1.40 and so in proxyd: the client
    leaving makes the server's FIN last (the proxy ends the connection: local close), the
    server hanging up makes the client's FIN last (remote close)."""
    from .frames import op_query
    quiet, rude = silent_upstream(False), silent_upstream(True)
    results = {}
    for side in ("envoy", "proxyd"):
        out = {}
        for name, srv in (("client_leaves", quiet), ("server_hangs_up", rude)):
            port, admin = free_port(), free_port()
            cfg = mongo_bootstrap(port, srv.getsockname()[1], admin)
            envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
            if envoy is None:
                proxyd_factory(cfg)
            try:
                wait_port(port)
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(op_query("shop.users", {"_id": 1}))
                    if name == "server_hangs_up":
                        assert s.recv(100) == b""      # the upstream hung up: so do we
                    else:
                        time.sleep(0.3)
                st = wait_for(lambda: (lambda d: d if d["mongo.mg.op_query_active"] == 0 else None)(
                    admin_stats(admin, "mongo.mg.")))
                out[name] = st
            finally:
                if envoy is not None:
                    envoy.cleanup()
        results[side] = out
    assert results["proxyd"] == results["envoy"]
    p = results["proxyd"]
    assert p["client_leaves"]["mongo.mg.cx_destroy_local_with_active_rq"] == 1
    assert p["server_hangs_up"]["mongo.mg.cx_destroy_remote_with_active_rq"] == 1
    quiet.close()
    rude.close()


def test_pymongo4_envoy_sees_only_decoding_errors_proxyd_parses(proxyd_factory, mongo_server,
                                                                 tmp_path):
    """pymongo 4 sends only OP_MSG: Envoy 1.40 counts decoding_error and nothing else (issue
    5036); proxyd counts the find and the insert. The application works through both."""
    import pymongo
    from .conftest import USERS
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        cfg = mongo_bootstrap(port, mongo_server.port, admin)
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            with pymongo.MongoClient("127.0.0.1", port, directConnection=True,
                                     serverSelectionTimeoutMS=5000) as c:
                assert list(c.shop.users.find({"_id": 1})) == USERS[:1]
                c.shop.users.insert_one({"_id": 7})
            time.sleep(0.3)
            results[side] = admin_stats(admin, "mongo.mg.")
        finally:
            if envoy is not None:
                envoy.cleanup()
    e, p = results["envoy"], results["proxyd"]
    assert e["mongo.mg.decoding_error"] >= 1
    assert {k: v for k, v in e.items() if v and k != "mongo.mg.decoding_error"} == {}
    assert p["mongo.mg.decoding_error"] == 0
    assert p["mongo.mg.collection.users.query.total"] == 1 and p["mongo.mg.cmd.insert.total"] == 1


def zlib_upstream():
    """A MongoDB-like server that answers each zlib OP_COMPRESSED request with a zlib
    OP_COMPRESSED OP_REPLY (what a server does once a driver negotiated zlib)."""
    import struct
    import threading
    from .frames import op_reply
    from .test_mongo_proxy import recv_message
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(conn):
        with conn:
            while True:
                try:
                    msg = recv_message(conn)
                except (AssertionError, OSError):
                    return
                rid = struct.unpack_from("<i", msg, 4)[0]
                body = op_reply([{"_id": 1, "name": "ann"}], response_to=rid)[16:]
                conn.sendall(op_compressed(1, body, request_id=500, compressor=2, response_to=rid))

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return srv


def test_zlib_compressed_traffic_envoy_cannot_read_proxyd_can(proxyd_factory, tmp_path):
    """OP_COMPRESSED (zlib) both ways: Envoy counts decoding_error and stops; proxyd
    unwraps it and counts the query and its reply."""
    from .frames import op_query
    from .test_mongo_proxy import recv_message
    srv = zlib_upstream()
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        cfg = mongo_bootstrap(port, srv.getsockname()[1], admin)
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for rid in (1, 2):
                    body = op_query("shop.users", {"_id": rid})[16:]
                    s.sendall(op_compressed(2004, body, request_id=rid, compressor=2))
                    assert struct_opcode(recv_message(s)) == 2012
            time.sleep(0.2)
            results[side] = admin_stats(admin, "mongo.mg.")
        finally:
            if envoy is not None:
                envoy.cleanup()
    srv.close()
    e, p = results["envoy"], results["proxyd"]
    assert e["mongo.mg.decoding_error"] == 1 and e["mongo.mg.op_query"] == 0
    assert p["mongo.mg.decoding_error"] == 0
    assert (p["mongo.mg.op_query"], p["mongo.mg.op_reply"]) == (2, 2)
    assert p["mongo.mg.collection.users.query.total"] == 2


def struct_opcode(msg: bytes) -> int:
    import struct
    return struct.unpack_from("<i", msg, 12)[0]


def test_delay_fault_counts_match_envoy(proxyd_factory, mongo_server, tmp_path):
    """A 100 % fixed delay, each request sent after the previous reply: every one of them
    is delayed and counted, and the other counters agree. (Requests pipelined behind a
    running delay are left out: Envoy re-reads the bytes its filter stopped on, so what it
    counts for them depends on timing.)"""
    from .frames import op_get_more, op_query
    from .test_mongo_proxy import recv_message
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        cfg = mongo_bootstrap(port, mongo_server.port, admin,
                              delay={"fixed_delay": "0.2s", "percentage": {"numerator": 100}})
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            t0 = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for rid, msg in enumerate([op_query("admin.$cmd", {"isMaster": 1}),
                                           op_query("shop.users", {"_id": 1}),
                                           op_query("shop.users", {"name": "bob"}),
                                           op_get_more("shop.users", 5)], start=1):
                    s.sendall(msg[:4] + rid.to_bytes(4, "little") + msg[8:])
                    recv_message(s)
            elapsed = time.monotonic() - t0
            results[side] = (wait_for(lambda: (lambda d: d if d["mongo.mg.op_query_active"] == 0
                                               else None)(admin_stats(admin, "mongo.mg."))), elapsed)
        finally:
            if envoy is not None:
                envoy.cleanup()
    (e, _), (p, p_time) = results["envoy"], results["proxyd"]
    assert p == e
    assert p["mongo.mg.delays_injected"] == 4 and p_time >= 4 * 0.19

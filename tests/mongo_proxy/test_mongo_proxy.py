"""mongo_proxy through a proxyd process: pymongo 4 (OP_MSG only) and hand-built legacy
messages against mockupdb, the application unaffected and Envoy's stats moving."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
import pymongo

from real_envoy import admin_stat_names, admin_stats
from harness import free_port, wait_port

from .conftest import USERS, mongo_bootstrap
from .frames import op_get_more, op_insert, op_kill_cursors, op_query


def start(proxyd_factory, mongo_server, **mongo):
    port, admin = free_port(), free_port()
    px = proxyd_factory(mongo_bootstrap(port, mongo_server.port, admin, **mongo))
    wait_port(port)
    return port, admin, px


def client(port: int) -> pymongo.MongoClient:
    return pymongo.MongoClient("127.0.0.1", port, directConnection=True,
                               serverSelectionTimeoutMS=5000, heartbeatFrequencyMS=60000)


def wait_for(pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


def recv_message(s: socket.socket) -> bytes:
    head = b""
    while len(head) < 16:
        chunk = s.recv(16 - len(head))
        assert chunk, "connection closed"
        head += chunk
    (n,) = struct.unpack_from("<i", head)
    body = b""
    while len(body) < n - 16:
        body += s.recv(n - 16 - len(body))
    return head + body


def test_pymongo4_moves_envoys_stats(proxyd_factory, mongo_server,
                                                                        tmp_path):
    log = tmp_path / "mongo.log"
    port, admin, _ = start(proxyd_factory, mongo_server, access_log=str(log))
    with client(port) as c:
        users = c.shop.users
        assert list(users.find({"_id": 2})) == [USERS[1]]
        assert list(users.find({}, max_time_ms=500)) == USERS
        assert list(users.find({"_id": {"$in": [1, 2]}}, comment=json.dumps({"callingFunction": "getAll"}))) == USERS[:2]
        assert list(users.find({}, batch_size=1)) == USERS                # find + getMore on cursor 77
        users.insert_one({"_id": 9})
        users.update_one({"_id": 9}, {"$set": {"a": 1}})
        users.delete_one({"_id": 9})
        c.admin.command("ping")
        try:
            c.admin.command("boom")
        except pymongo.errors.OperationFailure as e:
            assert e.code == 59
        else:
            raise AssertionError("the server's error did not reach the client")
    st = wait_for(lambda: (lambda s: s if s.get("mongo.mg.op_query_active") == 0 else None)(
        admin_stats(admin, "mongo.mg.")))
    assert st is not None, admin_stats(admin, "mongo.mg.")
    assert st["mongo.mg.decoding_error"] == 0
    c = "mongo.mg.collection.users.query."
    assert st[c + "total"] == 4 and st[c + "scatter_get"] == 2 and st[c + "multi_get"] == 1
    assert st["mongo.mg.collection.users.callsite.getAll.query.total"] == 1
    assert st["mongo.mg.op_query_scatter_get"] == 2 and st["mongo.mg.op_query_multi_get"] == 1
    assert st["mongo.mg.op_query_no_max_time"] == 3                     # one find had maxTimeMS
    for cmd in ("insert", "update", "delete"):
        assert st["mongo.mg.cmd.%s.total" % cmd] == 1
    assert st["mongo.mg.cmd.unknown_command.total"] >= 3                # getMore, ping, boom, handshakes
    assert st["mongo.mg.op_reply"] == st["mongo.mg.op_query"]
    assert st["mongo.mg.op_reply_valid_cursor"] == 1
    assert st["mongo.mg.op_reply_query_failure"] == 1                   # boom's ok: 0
    assert st["mongo.mg.op_insert"] == 0 and st["mongo.mg.op_get_more"] == 0  # legacy opcodes only
    names = admin_stat_names(admin, "mongo.mg.")
    assert {c + "reply_num_docs", c + "reply_size", c + "reply_time_ms",
            "mongo.mg.cmd.insert.reply_time_ms"} <= names
    lines = wait_for(lambda: log.exists() and [json.loads(x) for x in log.read_text().splitlines()])
    finds = [x for x in lines if x["message"].get("command") == "find"]
    assert len(finds) == 4
    assert finds[0]["upstream_host"] == "127.0.0.1:%d" % mongo_server.port
    assert finds[0]["message"]["body"]["filter"] == {"_id": 2}
    assert finds[0]["time"].endswith("Z")


def legacy_session(port: int) -> list:
    """Hand-built legacy messages (what pre-3.6 drivers sent); returns the replies' docs."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(op_query("admin.$cmd", {"isMaster": 1}, request_id=1))
        replies.append(recv_message(s))
        s.sendall(op_query("shop.users", {"$query": {"_id": 1}, "$maxTimeMS": 10}, request_id=2,
                           flags=0x22))
        replies.append(recv_message(s))
        s.sendall(op_query("shop.users", {"name": {"$gt": "a"},
                                          "$comment": json.dumps({"callingFunction": "scan"})},
                           request_id=3, fields={"name": 1}))
        replies.append(recv_message(s))
        s.sendall(op_query("shop.$cmd", {"find": "orders", "filter": {"_id": [1, 2]}}, request_id=4))
        replies.append(recv_message(s))
        s.sendall(op_query("shop.$cmd", {"insert": "users", "documents": [{"_id": 4}]}, request_id=5))
        replies.append(recv_message(s))
        s.sendall(op_insert("shop.users", [{"_id": 5}, {"_id": 6}], request_id=6))
        s.sendall(op_get_more("shop.users", 5, request_id=7))
        replies.append(recv_message(s))
        s.sendall(op_kill_cursors([5], request_id=8))
        s.sendall(op_query("shop.$cmd", {"ping": 1}, request_id=9))
        replies.append(recv_message(s))
    return replies


def test_legacy_op_query_paths(proxyd_factory, mongo_server, tmp_path):
    log = tmp_path / "mongo.log"
    port, admin, _ = start(proxyd_factory, mongo_server, access_log=str(log),
                           commands=["insert", "ping"])
    replies = legacy_session(port)
    assert len(replies) == 7 and all(struct.unpack_from("<i", r, 12)[0] == 1 for r in replies)
    st = wait_for(lambda: (lambda s: s if s.get("mongo.mg.op_kill_cursors") == 1 else None)(
        admin_stats(admin, "mongo.mg.")))
    assert st is not None
    expect = {"op_query": 6, "op_reply": 7, "op_insert": 1, "op_get_more": 1, "op_kill_cursors": 1,
              "op_query_tailable_cursor": 1, "op_query_await_data": 1, "op_query_no_max_time": 2,
              "op_query_scatter_get": 1, "op_query_multi_get": 1, "op_reply_valid_cursor": 2,
              "collection.users.query.total": 2, "collection.users.query.scatter_get": 1,
              "collection.users.callsite.scan.query.total": 1,
              "collection.users.callsite.scan.query.scatter_get": 1,
              "collection.orders.query.total": 1, "collection.orders.query.multi_get": 1,
              "cmd.isMaster.total": 0, "cmd.unknown_command.total": 1, "cmd.insert.total": 1,
              "cmd.ping.total": 1, "decoding_error": 0}
    assert {k: st.get("mongo.mg." + k, 0) for k in expect} == expect
    lines = wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 16
                     and log.read_text().splitlines())
    first = json.loads(lines[0])
    assert first["message"] == {"opcode": "OP_QUERY", "id": 1, "response_to": 0, "flags": "0x0",
                                "collection": "admin.$cmd", "skip": 0, "return": 1,
                                "query": {"isMaster": 1}, "fields": {}}


def test_delay_fault_holds_each_request(proxyd_factory, mongo_server):
    port, admin, _ = start(proxyd_factory, mongo_server,
                           delay={"fixed_delay": "0.3s", "percentage": {"numerator": 100}})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i in (1, 2):
            t0 = time.monotonic()
            s.sendall(op_query("shop.users", {"_id": 1}, request_id=i))
            recv_message(s)
            assert time.monotonic() - t0 >= 0.28
    assert admin_stats(admin, "mongo.mg.")["mongo.mg.delays_injected"] == 2


def test_garbage_stops_sniffing_but_not_the_bytes(proxyd_factory):
    """A peer that is not MongoDB: decoding_error once, the bytes still relayed both ways."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    port, admin = free_port(), free_port()
    proxyd_factory(mongo_bootstrap(port, srv.getsockname()[1], admin))
    wait_port(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x08\x00\x00\x00garbage!")
        got = b""
        while len(got) < 12:
            got += s.recv(100)
        assert got == b"\x08\x00\x00\x00garbage!"
        s.sendall(op_query("a.b", {"x": 1}))
        got = b""
        while len(got) < len(op_query("a.b", {"x": 1})):
            got += s.recv(1000)
    srv.close()
    st = admin_stats(admin, "mongo.mg.")
    assert st["mongo.mg.decoding_error"] == 1 and st["mongo.mg.op_query"] == 0

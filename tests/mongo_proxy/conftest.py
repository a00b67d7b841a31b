"""A MongoDB-wire server (mockupdb) that answers the commands the tests send, and
configs that put mongo_proxy in front of tcp_proxy."""
from __future__ import annotations

import pytest
from mockupdb import MockupDB, OpGetMore, OpInsert, OpKillCursors, OpMsg, OpQuery

from harness import bootstrap, cluster

MONGO = "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
USERS = [{"_id": 1, "name": "ann"}, {"_id": 2, "name": "bob"}, {"_id": 3, "name": "cy"}]


def _handle(r) -> bool:
    """Answer what the tests send; leave the handshake to mockupdb's auto_ismaster."""
    if isinstance(r, OpMsg):
        name = r.command_name
        if name.lower() in ("ismaster", "hello"):
            return False
        if name == "find":
            f = r.doc.get("filter") or {}
            want = f.get("_id")
            ids = want["$in"] if isinstance(want, dict) else [want]
            docs = [u for u in USERS if want is None or u["_id"] in ids]
            if r.doc.get("batchSize") == 1 and len(docs) > 1:
                return r.reply(cursor={"id": 77, "ns": "shop.users", "firstBatch": docs[:1]})
            return r.reply(cursor={"id": 0, "ns": "shop.users", "firstBatch": docs})
        if name == "getMore":
            return r.reply(cursor={"id": 0, "ns": "shop.users", "nextBatch": USERS[1:]})
        if name == "boom":
            return r.command_err(code=59, errmsg="no such command: 'boom'")
        return r.ok(n=1)
    if isinstance(r, OpQuery):
        if r.is_command and next(iter(r.doc)).lower() == "ismaster":
            return False
        if r.is_command:
            return r.ok(n=1)
        return r.reply(*USERS[:2], cursor_id=5)
    if isinstance(r, OpGetMore):
        return r.reply(USERS[2])
    if isinstance(r, (OpInsert, OpKillCursors)):
        return True                  # legacy writes and kill cursors have no reply
    return False


@pytest.fixture
def mongo_server():
    server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    server.autoresponds(_handle)
    server.run()
    yield server
    server.stop()


def mongo_bootstrap(port: int, upstream_port: int, admin_port: int, **mongo) -> dict:
    mongo = dict({"@type": MONGO, "stat_prefix": "mg"}, **mongo)
    lst = {"name": "mongo", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
           "filter_chains": [{"filters": [
               {"name": "envoy.filters.network.mongo_proxy", "typed_config": mongo},
               {"name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": TCP, "stat_prefix": "tcp", "cluster": "mongo"}}]}]}
    return bootstrap([lst], [cluster("mongo", [("127.0.0.1", upstream_port)])], admin_port)

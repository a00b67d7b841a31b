"""What a query is about, for the per-collection and per-command stats (Envoy's
QueryMessageInfo, utility.cc), from a legacy OP_QUERY or from an OP_MSG command.

An OP_MSG command is read as the same command sent as OP_QUERY to `<db>.$cmd` would be
(what pymongo 3 sent), so `find` is a query on its collection and every other command
counts under `cmd.<name>`. Unlike Envoy's `find` path, OP_MSG's `maxTimeMS` is read.
"""
from __future__ import annotations

import json

from .bson import ARRAY, DOCUMENT, INT32, INT64, STRING
from .codec import Msg, Query

SCATTER_GET, MULTI_GET, PRIMARY_KEY = "scatter_get", "multi_get", "primary_key"
ALIASES = {"collstats": "collStats", "dbstats": "dbStats", "findandmodify": "findAndModify",
           "getlasterror": "getLastError", "ismaster": "isMaster"}


class QueryInfoError(ValueError):
    pass


class QueryInfo:
    __slots__ = ("request_id", "command", "collection", "callsite", "max_time", "type")

    def __init__(self, request_id: int):
        self.request_id = request_id
        self.command = ""
        self.collection = ""
        self.callsite = ""
        self.max_time = 0
        self.type = SCATTER_GET

    @classmethod
    def from_query(cls, q: Query) -> "QueryInfo":
        info = cls(q.request_id)
        if "$cmd" in q.full_collection_name:
            doc = q.query
            inner = doc.find("$query", DOCUMENT)
            if inner:
                doc = inner[1]
            first = doc.first()
            if first is None:
                raise QueryInfoError("invalid query command")
            info._command(first, doc, read_max_time=False)
            return info
        dot = q.full_collection_name.find(".")
        if dot < 0:
            raise QueryInfoError("invalid full collection name")
        info.collection = q.full_collection_name[dot + 1:]
        comment = q.query.find("$comment", STRING)
        if comment:
            info.callsite = _calling_function(comment[1])
        info.max_time = _max_time(q.query, "$maxTimeMS") or _max_time(q.query, "maxTimeMS")
        info.type = _type_of(q.query)
        if info.type == SCATTER_GET:
            inner = q.query.find("$query", DOCUMENT)
            if inner:
                info.type = _type_of(inner[1])
        return info

    @classmethod
    def from_msg(cls, m: Msg) -> "QueryInfo":
        info = cls(m.request_id)
        first = m.body.first()
        if first is None:
            raise QueryInfoError("invalid query command")
        info._command(first, m.body, read_max_time=True)
        return info

    def _command(self, first, doc, read_max_time: bool) -> None:
        key, t, v = first
        if key != "find":
            self.command = ALIASES.get(key, key)
            return
        if t != STRING:
            raise QueryInfoError("find command without a collection name")
        self.collection = v
        comment = doc.find("comment", STRING)
        if comment:
            self.callsite = _calling_function(comment[1])
        f = doc.find("filter", DOCUMENT)
        if f:
            self.type = _type_of(f[1])
        if read_max_time:
            self.max_time = _max_time(doc, "maxTimeMS")


def _type_of(doc) -> str:
    f = doc.find("_id")
    if f is None:
        return SCATTER_GET
    return MULTI_GET if f[0] in (DOCUMENT, ARRAY) else PRIMARY_KEY


def _max_time(doc, key: str) -> int:
    f = doc.find(key)
    if f is None or f[0] not in (INT32, INT64):
        return 0
    v = f[1] & 0xFFFFFFFF                      # Envoy narrows an int64 to int32
    return v - (1 << 32) if v & 0x80000000 else v


def _calling_function(text: str) -> str:
    """`$comment` as JSON {"callingFunction": "..."}; anything else gives no callsite."""
    try:
        v = json.loads(text)
    except ValueError:
        return ""
    fn = v.get("callingFunction") if isinstance(v, dict) else None
    return fn if isinstance(fn, str) else ""

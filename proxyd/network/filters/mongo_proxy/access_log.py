"""The Mongo access log: one line per message, in Envoy's fixed format
`{"time": "...", "message": <message as Envoy's toString()>, "upstream_host": "..."}`.

Envoy's own formats are kept to the byte for the legacy opcodes (quirks included:
KILL_CURSORS has no OP_ prefix and a hex response_to); OP_UPDATE, OP_DELETE and OP_MSG,
which Envoy never logs, are written in the same style.
"""
from __future__ import annotations

import time

from proxyd.observability.access_log.sinks import get_sink

from . import codec


def _docs(docs, full: bool) -> str:
    return "[" + ", ".join(d.to_json() for d in docs) + "]" if full else str(len(docs))


def message_json(m, full: bool) -> str:
    if isinstance(m, codec.Query):
        return ('{"opcode": "OP_QUERY", "id": %d, "response_to": %d, "flags": "%#x", '
                '"collection": "%s", "skip": %d, "return": %d, "query": %s, "fields": %s}'
                % (m.request_id, m.response_to, m.flags, m.full_collection_name, m.skip,
                   m.number_to_return, m.query.to_json() if full else '"{...}"',
                   m.fields.to_json() if m.fields is not None else "{}"))
    if isinstance(m, codec.Reply):
        return ('{"opcode": "OP_REPLY", "id": %d, "response_to": %d, "flags": "%#x", '
                '"cursor": "%d", "from": %d, "returned": %d, "documents": %s}'
                % (m.request_id, m.response_to, m.flags, m.cursor_id, m.starting_from,
                   len(m.documents), _docs(m.documents, full)))
    if isinstance(m, codec.GetMore):
        return ('{"opcode": "OP_GET_MORE", "id": %d, "response_to": %d, "collection": "%s", '
                '"return": %d, "cursor": %d}'
                % (m.request_id, m.response_to, m.full_collection_name, m.number_to_return,
                   m.cursor_id))
    if isinstance(m, codec.Insert):
        return ('{"opcode": "OP_INSERT", "id": %d, "response_to": %d, "flags": "%#x", '
                '"collection": "%s", "documents": %s}'
                % (m.request_id, m.response_to, m.flags, m.full_collection_name,
                   _docs(m.documents, full)))
    if isinstance(m, codec.KillCursors):
        return ('{"opcode": "KILL_CURSORS", "id": %d, "response_to": "%#x", "num_cursors": "%d", '
                '"cursors": [%s]}'
                % (m.request_id, m.response_to, len(m.cursor_ids),
                   ", ".join(str(c) for c in m.cursor_ids)))
    if isinstance(m, codec.Command):
        return ('{"opcode": "OP_COMMAND", "id": %d, "response_to": %d, "database": "%s", '
                '"commandName": "%s", "metadata": %s, "commandArgs": %s, "inputDocs": %s}'
                % (m.request_id, m.response_to, m.database, m.command_name, m.metadata.to_json(),
                   m.command_args.to_json(), _docs(m.input_docs, full)))
    if isinstance(m, codec.CommandReply):
        return ('{"opcode": "OP_COMMANDREPLY", "id": %d, "response_to": %d, "metadata": %s, '
                '"commandReply": %s, "outputDocs":%s} '
                % (m.request_id, m.response_to, m.metadata.to_json(), m.command_reply.to_json(),
                   _docs(m.output_docs, full)))
    if isinstance(m, codec.Update):
        return ('{"opcode": "OP_UPDATE", "id": %d, "response_to": %d, "flags": "%#x", '
                '"collection": "%s", "selector": %s, "update": %s}'
                % (m.request_id, m.response_to, m.flags, m.full_collection_name,
                   m.selector.to_json(), m.update.to_json()))
    if isinstance(m, codec.Delete):
        return ('{"opcode": "OP_DELETE", "id": %d, "response_to": %d, "flags": "%#x", '
                '"collection": "%s", "selector": %s}'
                % (m.request_id, m.response_to, m.flags, m.full_collection_name,
                   m.selector.to_json()))
    if isinstance(m, codec.Msg):
        seqs = ", ".join('"%s": %s' % (k, _docs(v, full)) for k, v in m.sequences.items())
        return ('{"opcode": "OP_MSG", "id": %d, "response_to": %d, "flags": "%#x", '
                '"database": "%s", "command": "%s", "body": %s, "sequences": {%s}}'
                % (m.request_id, m.response_to, m.flags, m.database, m.command,
                   m.body.to_json() if full else '"{...}"', seqs))
    return ('{"opcode": "%d", "id": %d, "response_to": %d}' % (m.opcode, m.request_id, m.response_to))


def _timestamp(t: float) -> str:
    """Envoy's AccessLogDateTimeFormatter: %Y-%m-%dT%H:%M:%S.mmmZ in UTC."""
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % ms


class MongoAccessLog:
    def __init__(self, path: str, stats=None):
        self.sink = get_sink(path, stats)

    def log(self, message, full: bool, upstream_host: str | None) -> None:
        self.sink.write('{"time": "%s", "message": %s, "upstream_host": "%s"}\n'
                        % (_timestamp(time.time()), message_json(message, full), upstream_host or "-"))

"""request_mirror_policies: a copy of each routed request to a shadow cluster, its reply
read and dropped. One greenlet and one upstream connection per shadow cluster and
downstream connection, fed in order, so shadow traffic never delays the real call."""
from __future__ import annotations

import gevent
from gevent.queue import Queue

from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.pool_http1 import UpstreamConnection

from . import codec
from .options import upstream_payload, upstream_protocol

READ_SIZE = 64 * 1024


class ShadowWriter:
    def __init__(self, config):
        self.config = config
        self.queues: dict[str, Queue] = {}
        self.workers: list = []

    def submit(self, cluster_name: str, req: codec.MessageEnd, name: str | None) -> None:
        """Queue a copy of `req` (renamed to `name` if given) for the shadow cluster."""
        cluster = self.config.ctx.cluster_manager.get(cluster_name)
        if cluster is None or cluster.choose_host() is None:
            self.config.stats.shadow_request_submit_failure.inc()
            return
        q = self.queues.get(cluster_name)
        if q is None:
            q = self.queues[cluster_name] = Queue()
            self.workers.append(gevent.spawn(self._run, cluster_name, cluster, q))
        transport, protocol = upstream_protocol(cluster, req.begin)
        q.put((req, upstream_payload(req, transport, protocol, name), transport, protocol))

    def close(self) -> None:
        for g in self.workers:
            g.kill(block=False)
        self.workers.clear()
        self.queues.clear()

    def _run(self, name: str, cluster, q: Queue) -> None:
        up = decoder = None
        ustats = self.config.upstream_stats(name)
        try:
            while True:
                req, payload, transport, protocol = q.get()
                begin = req.begin
                if up is None:
                    host = cluster.choose_host()
                    if host is None:
                        continue
                    try:
                        up = UpstreamConnection(cluster.connect(host), host, cluster)
                    except UpstreamConnectError:
                        continue
                    decoder = codec.ThriftDecoder(transport, protocol)
                try:
                    up.sock.sendall(payload)
                    ustats.inc("upstream_rq_oneway" if begin.type == codec.ONEWAY else "upstream_rq_call")
                    if begin.type == codec.ONEWAY:
                        continue
                    reply = None
                    while reply is None:
                        data = up.sock.recv(READ_SIZE)
                        if not data:
                            raise OSError("shadow upstream closed")
                        reply = next((e for e in decoder.receive_data(data)
                                      if isinstance(e, codec.MessageEnd)), None)
                    count_upstream_response(reply, ustats)
                except (OSError, codec.DecodeError):
                    up.close()
                    up = None
        finally:
            if up is not None:
                up.close()


def count_upstream_response(reply: codec.MessageEnd, ustats) -> None:
    """cluster.<c>.thrift.upstream_resp_*: reply (success / error), exception, invalid."""
    t = reply.begin.type
    if t == codec.REPLY:
        ustats.inc("upstream_resp_reply")
        ustats.inc("upstream_resp_success" if reply.reply_field_id in (None, 0)
                   else "upstream_resp_error")
    elif t == codec.EXCEPTION:
        ustats.inc("upstream_resp_exception")
    else:
        ustats.inc("upstream_resp_invalid_type")

"""A global rate-limit service for tests: envoy.service.ratelimit.v3.RateLimitService over
grpcio (stubs from xds-protos), counting in a real redis-server with fixed windows (INCRBY +
EXPIRE on the window's key, as envoyproxy/ratelimit does).

    with RedisServer() as redis_port:
        rls = RateLimitService(redis_port, {("web", "generic_key=api"): (2, "MINUTE")})

Limits are keyed by (domain, "k=v|k=v" of the descriptor's entries). A descriptor with an
entry `generic_key=slow` makes the call sleep (`slow` seconds); `generic_key=broken`
fails it (UNAVAILABLE). `seen` records every (domain, [[(k, v)...]...], hits_addend, [descriptor hits_addend]).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import grpc
import redis
from envoy.service.ratelimit.v3 import rls_pb2 as pb
from envoy.service.ratelimit.v3 import rls_pb2_grpc as pb_grpc

from harness import free_port, kill_group
from side_services import add_servicer

UNITS = {"SECOND": (1, 1), "MINUTE": (2, 60), "HOUR": (3, 3600), "DAY": (4, 86400)}


class RedisServer:
    """redis-server on a free port, no persistence, in its own process group."""

    def __init__(self):
        self.port = free_port()
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        kill_group(self.proc)

    def __enter__(self):
        return self.port

    def __exit__(self, *exc):
        self.stop()


class _Servicer(pb_grpc.RateLimitServiceServicer):
    def __init__(self, owner):
        self.owner = owner

    def ShouldRateLimit(self, request, context):
        o = self.owner
        descs = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        o.seen.append((request.domain, descs, request.hits_addend,
                       [d.hits_addend.value if d.HasField("hits_addend") else None
                        for d in request.descriptors]))
        flat = {kv for d in descs for kv in d}
        if ("generic_key", "slow") in flat:
            time.sleep(o.slow)
        if ("generic_key", "broken") in flat:
            context.abort(grpc.StatusCode.UNAVAILABLE, "broken on purpose")
        resp = pb.RateLimitResponse(overall_code=pb.RateLimitResponse.OK)
        now = int(time.time())
        for d, dmsg in zip(descs, request.descriptors):
            hits = (dmsg.hits_addend.value if dmsg.HasField("hits_addend") else 0) \
                or request.hits_addend or 1
            st = resp.statuses.add(code=pb.RateLimitResponse.OK)
            key = "|".join("%s=%s" % kv for kv in d)
            limit = o.limits.get((request.domain, key))
            if limit is None:
                continue
            per_unit, unit = limit
            unit_num, window = UNITS[unit]
            start = now - now % window
            rkey = "%s_%s_%d" % (request.domain, key, start)
            pipe = o.redis.pipeline()
            pipe.incrby(rkey, hits)
            pipe.expire(rkey, window)
            count = pipe.execute()[0]
            st.current_limit.requests_per_unit = per_unit
            st.current_limit.unit = unit_num
            st.duration_until_reset.seconds = start + window - now
            if count > per_unit:
                st.code = pb.RateLimitResponse.OVER_LIMIT
                resp.overall_code = pb.RateLimitResponse.OVER_LIMIT
                st.limit_remaining = 0
            else:
                st.limit_remaining = per_unit - count
        if resp.overall_code == pb.RateLimitResponse.OVER_LIMIT:
            h = resp.response_headers_to_add.add()
            h.key, h.value = "x-rls-said", "over"
            resp.raw_body = o.over_body
        else:
            h = resp.request_headers_to_add.add()
            h.key, h.value = "x-rls-checked", "yes"
        return resp


class RateLimitService:
    def __init__(self, redis_port: int, limits: dict, slow: float = 1.0,
                 over_body: bytes = b""):
        self.redis = redis.Redis(host="127.0.0.1", port=redis_port)
        self.limits = dict(limits)
        self.slow = slow
        self.over_body = over_body
        self.seen: list = []
        self.server, self.port = add_servicer(_Servicer(self),
                                              pb_grpc.add_RateLimitServiceServicer_to_server)

    def reset(self) -> None:
        self.redis.flushall()
        self.seen.clear()

    def stop(self) -> None:
        self.server.stop(0)
        self.redis.close()

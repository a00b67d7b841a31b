"""envoy.filters.http.health_check: answers (or marks) the health checks of the proxy's own
callers, as Envoy's health_check.cc does.

A request matching every `headers` matcher is a health check: the stream is marked so
(`not_health_check_filter` skips it in access logs) and its response carries
`x-envoy-upstream-healthchecked-cluster: <node.cluster>`. Without `pass_through_mode` the
filter answers once the request is complete: 503 when the server's health check failed
(`POST /healthcheck/fail`: the master's `server.state` reads DRAINING; flag LH), else 200
unless a cluster of `cluster_min_healthy_percentages` is missing, empty (with a minimum
above 0) or has fewer healthy hosts than its percentage (503, flag LH). With
`pass_through_mode` the check goes upstream, unless the server's check failed or
`cache_time` holds a cached answer: the last upstream answer is replayed (`health_check_
cached`) until the cache timer (every `cache_time`) next fires. Any other response gets
`x-envoy-immediate-health-check-fail: true` while the server's check failed. Stats
`http.<prefix>.health_check.{request_total,ok,failed,cached_response,degraded,
failed_cluster_not_found,failed_cluster_empty,failed_cluster_unhealthy}` count the checks
answered here (one that went upstream counts nothing), as Envoy 1.40 does.
"""
from __future__ import annotations

import time

from proxyd.http.conn_manager import server_health
from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus, \
    StreamFilter
from proxyd.router.matchers import header_matcher

_STATS = ("request_total", "ok", "failed", "cached_response", "degraded",
          "failed_cluster_not_found", "failed_cluster_empty", "failed_cluster_unhealthy")


class Cache:
    """Envoy's HealthCheckCacheManager: a cached code serves until the periodic timer
    (every cache_time from the filter's creation) next fires."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.t0 = time.monotonic()
        self.code = None
        self.degraded = False
        self.tick = -1

    def _now_tick(self) -> int:
        return int((time.monotonic() - self.t0) / self.seconds)

    def use(self) -> bool:
        return self.code is not None and self.tick == self._now_tick()

    def set(self, code: int, degraded: bool) -> None:
        self.code, self.degraded, self.tick = code, degraded, self._now_tick()


class Config:
    def __init__(self, msg, ctx):
        self.pass_through = msg.pass_through_mode.value
        self.matchers = [header_matcher(h, "HealthCheck.headers[%d]" % i)[0]
                         for i, h in enumerate(msg.headers)]
        self.min_healthy = sorted((k, int(v.value)) for k, v in
                                  msg.cluster_min_healthy_percentages.items())
        self.cache = None
        if msg.HasField("cache_time"):
            ms = msg.cache_time.ToMilliseconds()
            if ms > 0:
                self.cache = Cache(ms / 1000.0)
        self.stats = ctx.scope("health_check.", counters=_STATS)
        self.cluster_manager = ctx.cluster_manager
        self.server_health = server_health(ctx.worker.stats)
        node = getattr(ctx.worker, "node", None)
        self.local_cluster = node.cluster if node is not None else ""

    def failed(self) -> bool:
        return self.server_health.failed()


class HealthCheckFilter(StreamFilter):
    def __init__(self, config: Config):
        self.config = config
        self.is_check = False
        self.handling = False

    def decode_headers(self, headers, end_stream: bool):
        c = self.config
        if all(m(headers) for m in c.matchers):
            self.is_check = True
            self.decoder_callbacks.stream_info.is_health_check = True
            if not c.pass_through or c.failed() or (c.cache is not None and c.cache.use()):
                self.handling = True
        if end_stream and self.handling:
            self._complete()
        return FilterHeadersStatus.STOP_ITERATION if self.handling else \
            FilterHeadersStatus.CONTINUE

    def decode_data(self, data, end_stream: bool):
        if self.handling and end_stream:
            self._complete()
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER if self.handling else \
            FilterDataStatus.CONTINUE

    def decode_trailers(self, trailers):
        if self.handling:
            self._complete()
            return FilterTrailersStatus.STOP_ITERATION
        return FilterTrailersStatus.CONTINUE

    def _complete(self) -> None:
        c, stats = self.config, self.config.stats
        cb = self.decoder_callbacks
        status, details, degraded = 200, "health_check_ok", False
        stats.request_total.inc()   # the checks answered here (what Envoy 1.40 counts)
        if c.failed():
            cb.stream_info.response_flags.append("LH")
            status, details = 503, "health_check_failed"
            stats.failed.inc()
        else:
            if c.cache is not None and c.cache.use():
                status, details, degraded = c.cache.code, "health_check_cached", c.cache.degraded
                stats.cached_response.inc()
            elif c.min_healthy:
                for name, minimum in c.min_healthy:
                    details = "health_check_cluster_healthy"
                    cluster = c.cluster_manager.get(name)
                    if cluster is None:
                        status, details = 503, "health_check_no_cluster_found"
                        stats.failed_cluster_not_found.inc()
                        break
                    total = len(cluster.hosts)
                    if total == 0:
                        if minimum == 0:
                            continue
                        status, details = 503, "health_check_cluster_empty"
                        stats.failed_cluster_empty.inc()
                        break
                    healthy = sum(1 for h in cluster.hosts if h.healthy)
                    if 100 * healthy < total * minimum:
                        status, details = 503, "health_check_cluster_unhealthy"
                        stats.failed_cluster_unhealthy.inc()
                        break
            if not 200 <= status < 300:
                cb.stream_info.response_flags.append("LH")
            if degraded:
                stats.degraded.inc()
            (stats.ok if 200 <= status < 300 else stats.failed).inc()
        cb.send_local_reply(status, b"", details,
                            headers=[("x-envoy-degraded", "")] if degraded else None)

    def encode_headers(self, headers, end_stream: bool):
        c = self.config
        if self.is_check:
            if c.cache is not None:
                c.cache.set(int(headers.get(":status")), "x-envoy-degraded" in headers)
            headers.set("x-envoy-upstream-healthchecked-cluster", c.local_cluster)
        if c.failed():   # health checks too (what Envoy 1.40 answers)
            headers.set("x-envoy-immediate-health-check-fail", "true")
        return FilterHeadersStatus.CONTINUE


def create(msg, ctx):
    config = Config(msg, ctx)
    return lambda chain: chain.add_stream_filter(HealthCheckFilter(config))

"""envoy.filters.http.router: the terminal filter that forwards a request upstream
(Envoy's `Router::Filter`).

Direct responses and redirects are answered here too, as in Envoy, and so is a request
no route matched (404 NR). A routed request goes to the cluster's load balancer, then
to one `UpstreamRequest` per attempt (`proxyd/router/upstream_request.py`), over
whichever protocol the cluster speaks; the retry policy
(`proxyd/router/retry_policy.py`) decides between attempts.
"""
from __future__ import annotations

import time

import gevent

from proxyd.http import grpc, local_reply
from proxyd.http.blocking_terminal import BlockingTerminalFilter
from proxyd.http.headers import HOP_BY_HOP
from proxyd.router import shadow
from proxyd.router import upgrade as upgrades
from proxyd.router.hash_policy import lb_context
from proxyd.router.retry_policy import RetryState, request_policy
from proxyd.router.upstream_request import (PerTryTimeout, Retry, RouteTimeout,  # noqa: F401
                                            UpstreamRequest, cluster_local_reply)

# proxyd answers 100-continue itself, as Envoy does by default: Expect is not forwarded
_NOT_FORWARDED = HOP_BY_HOP | {"expect"}
_timeout_ms: dict = {}  # route timeout (s) -> its x-envoy-expected-rq-timeout-ms value


class Router(BlockingTerminalFilter):
    """One per stream. `serve` runs in the stream's greenlet once the request headers
    passed every filter before it; a missing route is answered here (404 NR), so a
    filter may answer or re-route an unrouted request first."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.lb_context = None  # the request's lb.LbContext, once a cluster is chosen

    def serve(self) -> None:
        stream = self
        route = stream.route
        upgrade = stream.request.upgrade
        if upgrade is None:
            return self._serve(route)
        hstats = stream.hcm.stats
        if not upgrades.allowed(stream.hcm.upgrades, route.upgrades if route is not None
                                else None, upgrade):
            # Envoy refuses an upgrade no upgrade_configs allows before its router runs
            hstats.downstream_rq_ws_on_non_ws_route.inc()
            if route is not None and route.kind == "cluster":
                name = route.cluster_for(stream.request)
                if self.ctx.cluster_manager.get(name) is not None:
                    stream.info.upstream_cluster = name
            h2 = getattr(stream.fm.stream, "h2", None)
            if h2 is not None:  # Envoy 1.40 drain-closes an HTTP/2 connection then
                h2.on_drain(count=False)
            stream.local_reply(403, b"", "upgrade_failed")
            return False
        # counted once its filter chain is made (Envoy's createUpgradeFilterChain), whatever
        # the upstream answers; active until the stream ends
        hstats.downstream_cx_upgrades_total.inc()
        hstats.downstream_cx_upgrades_active.inc()
        try:
            return self._serve(route)
        finally:
            hstats.downstream_cx_upgrades_active.dec()

    def _serve(self, route):
        stream = self
        stream.hcm.stats.rq_total.inc()  # every request that reaches the router (Envoy)
        if route is None:
            stream.hcm.stats.no_route.inc()
            stream.local_reply(*local_reply.NO_ROUTE)
            return
        kind = route.kind
        if kind == "direct":
            stream.hcm.stats.rq_direct_response.inc()
            location = route.direct_location(stream.request)
            stream.local_reply(route.direct_status, route.direct_body, "direct_response", None,
                               [("location", location)] if location else None)
            return False
        if kind == "redirect":  # Envoy 1.40 counts a route's redirect as a direct response
            stream.hcm.stats.rq_direct_response.inc()
            status, location = route.redirect(stream.request)
            stream.local_reply(status, None, "direct_response", None,  # Envoy's details
                               [("location", location)])
            return False
        req = stream.request
        info = stream.info
        cluster = self.ctx.cluster_manager.get(route.cluster_for(req))
        if cluster is None:  # %UPSTREAM_CLUSTER% stays unset, as in Envoy
            stream.hcm.stats.no_cluster.inc()
            # RouteAction.cluster_not_found_response_code (503 unless the route says)
            stream.local_reply(route.cluster_not_found_status, *local_reply.NO_CLUSTER[1:])
            return False
        info.upstream_cluster = cluster.name
        self.lb_context = lb_context(stream, route)
        host = cluster.choose_host(self.lb_context)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            cluster_local_reply(stream, cluster.stats, local_reply.NO_HEALTHY_UPSTREAM)
            return False
        forward(stream, route, cluster, host)
        return False


def _upstream_headers(stream, route, host):
    req = stream.request
    route.finalize_request(req, stream.info)
    h = req.headers.without_hop_by_hop(_NOT_FORWARDED)
    if stream.info.trace is not None:
        stream.hcm.tracer.inject(stream.info.trace, h)
    if route.auto_host_rewrite and host.hostname:
        req.authority = host.hostname
        h.set("host", host.hostname)
    elif "host" not in h:
        h.items.insert(0, ("host", req.authority))  # HTTP/2 downstream: from :authority
    if req.chunked:
        h.add("transfer-encoding", "chunked")
    if req.upgrade is not None and req.upgrade != "CONNECT":  # an allowed upgrade goes on
        h.set("upgrade", req.headers.get("upgrade"))
        h.set("connection", "upgrade")
    timeout = route.timeout
    if timeout:
        ms = _timeout_ms.get(timeout)
        if ms is None:
            if len(_timeout_ms) > 256:  # config churn: stay bounded
                _timeout_ms.clear()
            ms = _timeout_ms[timeout] = str(int(timeout * 1000))
        h.set("x-envoy-expected-rq-timeout-ms", ms)
    return h


def forward(stream, route, cluster, host) -> None:
    """Proxy one request to `host` (an UpstreamRequest per attempt), retrying as the
    route's retry policy says on another host chosen by the load balancer. The route
    timeout spans every attempt and back-off, as in Envoy."""
    req = stream.request
    timeout = grpc.effective_timeout(route, req)
    policy = route.retry_policy
    if stream.hcm.internal_networks:
        internal = stream.hcm.is_internal(req, stream.fm.stream.conn.remote_ip)
        policy = request_policy(policy, req.headers, internal, timeout)
    headers = _upstream_headers(stream, route, host)
    if route.mirror_policies and req.upgrade is None:  # never an upgrade's (Envoy)
        shadow.mirror(stream, route, headers)
    if policy is None:
        UpstreamRequest(stream, route, cluster, host, timeout, headers, None).run()
        return
    per_try = policy.per_try_timeout
    if per_try and (not timeout or per_try < timeout):  # the upstream expects one try
        headers.set("x-envoy-expected-rq-timeout-ms", str(int(per_try * 1000)))
    retry = RetryState(policy, cluster)
    start = time.monotonic()
    remaining = timeout
    try:
        while True:
            try:
                UpstreamRequest(stream, route, cluster, host, remaining, headers, retry).run()
                return
            except Retry:
                pass
            delay = retry.backoff()
            if timeout:
                remaining = timeout - (time.monotonic() - start) - delay
                if remaining <= 0:  # the back-off outlasts the route timeout
                    gevent.sleep(max(0.0, remaining + delay))
                    cluster.stats.upstream_rq_timeout.inc()
                    cluster_local_reply(stream, cluster.stats, local_reply.ROUTE_TIMEOUT)
                    return
            gevent.sleep(delay)
            host = retry.choose_host(cluster, stream.lb_context)
            if host is None:
                cluster.stats.upstream_cx_none_healthy.inc()
                cluster_local_reply(stream, cluster.stats, local_reply.NO_HEALTHY_UPSTREAM)
                return
    finally:
        retry.release()


def create(config, ctx):
    """The FilterFactoryCb: a Router for each stream."""
    def factory(chain) -> None:
        chain.add_stream_decoder_filter(Router(ctx))
    return factory

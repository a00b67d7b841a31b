"""envoy.filters.http.fault: injects delays and aborts into requests, as Envoy's
fault_filter.cc does.

A fault applies to requests that match `headers` (all of them), `upstream_cluster` (the
route's cluster) and `downstream_nodes` (x-envoy-downstream-service-node), each when set.
It fires for `percentage` of requests (unset means 0 %, FractionalPercent's default)
under the runtime keys `fault.http.delay.fixed_delay_percent` / `fault.http.abort.abort_percent`
(durations and statuses under `fault.http.delay.fixed_duration_ms`,
`fault.http.abort.http_status`, `fault.http.abort.grpc_status`). With `header_delay` /
`header_abort` the request's `x-envoy-fault-*` headers give the value, and their
`-percentage` headers lower (never raise) the configured percentage. A delay is a timer in
a helper greenlet (the worker keeps serving); when it ends the abort is considered, then the
chain continues. `max_active_faults` caps the faults in flight across the workers, read
from the `active_faults` gauge as Envoy does (`faults_overflow` counts the ones refused).
Aborts answer `fault filter abort` with flag FI and details `fault_filter_abort`; delays
set flag DI. An HTTPFault in `typed_per_filter_config` replaces the filter's settings on
that route (the most specific level wins, whole, as Envoy's); the stats stay the filter's.
"""
from __future__ import annotations

import gevent

from proxyd.http import grpc
from proxyd.http.filter import FilterHeadersStatus, StreamDecoderFilter
from proxyd.router.matchers import header_matcher

_DENOMINATORS = (100, 10_000, 1_000_000)
DELAY_HEADER = "x-envoy-fault-delay-request"
ABORT_HEADER = "x-envoy-fault-abort-request"
ABORT_GRPC_HEADER = "x-envoy-fault-abort-grpc-request"


def _first_uint(headers, name: str) -> int | None:
    v = headers.get(name)
    if v is None:
        return None
    v = v.split(",", 1)[0].strip()
    return int(v) if v.isdigit() else None


class _Percentage:
    """A configured FractionalPercent, lowered per request by a header if given."""

    def __init__(self, msg, header: str | None):
        self.numerator = msg.numerator
        self.denominator = _DENOMINATORS[msg.denominator]
        self.header = header

    def enabled(self, runtime, key: str, headers) -> bool:
        numerator = self.numerator
        if self.header is not None:
            value = _first_uint(headers, self.header)
            if value is not None:
                numerator = min(value, numerator)
        return runtime.fractional_percent_enabled(key, numerator, self.denominator)


class FaultConfig:
    def __init__(self, msg, stats):
        self.stats = stats
        self.max_active = msg.max_active_faults.value if msg.HasField("max_active_faults") \
            else None
        self.headers = [header_matcher(h, "HTTPFault.headers[%d]" % i)[0]
                        for i, h in enumerate(msg.headers)]
        self.upstream_cluster = msg.upstream_cluster
        self.downstream_nodes = frozenset(msg.downstream_nodes)
        self.delay = self.abort = None
        if msg.HasField("delay"):
            d = msg.delay
            self.delay_from_header = d.WhichOneof("fault_delay_secifier") == "header_delay"
            self.fixed_delay_ms = d.fixed_delay.ToMilliseconds()
            self.delay = _Percentage(d.percentage, DELAY_HEADER + "-percentage"
                                     if self.delay_from_header else None)
        if msg.HasField("abort"):
            a = msg.abort
            which = a.WhichOneof("error_type")
            if which is None:
                raise ValueError("HTTPFault.abort: exactly one of http_status, grpc_status "
                                 "or header_abort is required")
            self.abort_from_header = which == "header_abort"
            self.http_status = a.http_status if which == "http_status" else None
            self.grpc_status = a.grpc_status if which == "grpc_status" else None
            if self.http_status is not None and not 200 <= self.http_status < 600:
                raise ValueError("HTTPFault.abort.http_status: value must be inside range "
                                 "[200, 600)")
            self.abort = _Percentage(a.percentage, ABORT_HEADER + "-percentage"
                                     if self.abort_from_header else None)

    def applies(self, cb, headers) -> bool:
        """upstream_cluster, downstream_nodes and headers (all must match), as Envoy."""
        if self.upstream_cluster:
            route = cb.route()
            if route is None or route.cluster_for(headers) != self.upstream_cluster:
                return False
        if self.downstream_nodes and \
                headers.get("x-envoy-downstream-service-node") not in self.downstream_nodes:
            return False
        return all(m(headers) for m in self.headers)

    def delay_ms(self, runtime, headers) -> int | None:
        if self.delay is None:
            return None
        if self.delay_from_header:
            ms = _first_uint(headers, DELAY_HEADER)
            if ms is None:
                return None
        else:
            ms = runtime.get_int("fault.http.delay.fixed_duration_ms", self.fixed_delay_ms)
        if not self.delay.enabled(runtime, "fault.http.delay.fixed_delay_percent", headers):
            return None
        return ms or None

    def abort_status(self, runtime, headers) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None) when this request is to be aborted."""
        if self.abort is None:
            return None
        if not self.abort.enabled(runtime, "fault.http.abort.abort_percent", headers):
            return None
        if self.abort_from_header:
            http = _first_uint(headers, ABORT_HEADER)
            if http is not None and 200 <= http < 600:
                return http, None
            g = _first_uint(headers, ABORT_GRPC_HEADER)
            return (200, g) if g is not None else None
        if self.grpc_status is not None:
            return 200, runtime.get_int("fault.http.abort.grpc_status", self.grpc_status)
        return runtime.get_int("fault.http.abort.http_status", self.http_status), None


class FaultFilter(StreamDecoderFilter):
    def __init__(self, config: FaultConfig):
        self.config = config   # the settings in force (a route's replace the filter's)
        self.stats = config.stats
        self.counted = False   # this stream holds one of the active faults

    def _take_active(self) -> bool:
        c, stats = self.config, self.stats
        if self.counted:
            return True
        # the gauge sums every worker's share: the cap is process-wide, as Envoy's
        if c.max_active is not None and stats.active_faults.value() >= c.max_active:
            stats.faults_overflow.inc()
            return False
        stats.active_faults.inc()
        self.counted = True
        return True

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        route_config = cb.per_route_config()
        if isinstance(route_config, FaultConfig):
            self.config = route_config   # most specific wins, whole (Envoy's FaultSettings)
        c = self.config
        if not c.applies(cb, headers):
            return FilterHeadersStatus.CONTINUE
        ms = c.delay_ms(cb.runtime, headers)
        if ms is not None and self._take_active():
            self.stats.delays_injected.inc()
            cb.stream_info.response_flags.append("DI")
            cb.run_blocking(lambda: gevent.sleep(ms / 1000.0), self._after_delay)
            return FilterHeadersStatus.STOP_ITERATION
        if self._maybe_abort(headers):
            return FilterHeadersStatus.STOP_ITERATION
        return FilterHeadersStatus.CONTINUE

    def _after_delay(self, _result, error) -> None:
        if error is not None:
            raise error
        if not self._maybe_abort(self.decoder_callbacks.request):
            self.decoder_callbacks.continue_decoding()

    def _maybe_abort(self, headers) -> bool:
        cb = self.decoder_callbacks
        status = self.config.abort_status(cb.runtime, headers)
        if status is None or not self._take_active():
            return False
        self.stats.aborts_injected.inc()
        cb.stream_info.response_flags.append("FI")
        http, grpc_status = status
        if grpc_status is not None and not grpc.is_grpc(headers):
            grpc_status = None   # a plain HTTP request gets the 200 and the body
        cb.send_local_reply(http, b"fault filter abort", "fault_filter_abort",
                            grpc_status=grpc_status)
        return True

    def on_destroy(self) -> None:
        if self.counted:
            self.counted = False
            self.stats.active_faults.dec()


def create_route_config(msg, factory) -> FaultConfig:
    """A route's HTTPFault replaces the filter's settings there (the stats stay the
    filter's)."""
    return FaultConfig(msg, None)


def create(msg, ctx):
    stats = ctx.scope("fault.", counters=("delays_injected", "aborts_injected",
                                          "response_rl_injected", "faults_overflow"),
                      gauges=("active_faults",))
    config = FaultConfig(msg, stats)
    return lambda chain: chain.add_stream_decoder_filter(FaultFilter(config))

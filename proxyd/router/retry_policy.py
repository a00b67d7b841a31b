"""A route's RetryPolicy compiled once, and the retry state of one request (Envoy's
RetryPolicyImpl and RetryStateImpl): which failures are retried, how many times, the
jittered exponential back-off, and the cluster's retry circuit breaker and stats."""
from __future__ import annotations

import random

from envoy.config.route.v3 import route_components_pb2

from proxyd.router.matchers import header_matcher

# Envoy's retry_on tokens proxyd implements (the gRPC ones and the rate-limit ones are
# refused by the config check rather than ignored).
RETRY_ON = frozenset(("5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx",
                      "refused-stream", "retriable-status-codes", "retriable-headers"))
PREVIOUS_HOSTS = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
DEFAULT_BASE_INTERVAL = 0.025  # runtime upstream.base_retry_backoff_ms
# The request body kept for replay: the listener's per_connection_buffer_limit_bytes
# default, which Envoy uses when the route sets no request buffer limit.
BUFFER_LIMIT = 1024 * 1024

# Why an attempt failed without a response
CONNECT_FAILURE, RESET, REFUSED_STREAM, PER_TRY_TIMEOUT = range(4)


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


class RetryPolicy:
    """envoy.config.route.v3.RetryPolicy, immutable and shared by a route's requests."""
    __slots__ = ("on", "num_retries", "per_try_timeout", "base_interval", "max_interval",
                 "status_codes", "headers", "previous_hosts", "host_selection_attempts")

    def __init__(self, msg, path: str):
        on = frozenset(t.strip() for t in msg.retry_on.split(",") if t.strip())
        for token in on - RETRY_ON:
            raise ValueError(f"{path}.retry_on: '{token}' is not supported by proxyd")
        self.on = on
        self.num_retries = msg.num_retries.value if msg.HasField("num_retries") else 1
        self.per_try_timeout = (_seconds(msg.per_try_timeout)
                                if msg.HasField("per_try_timeout") else 0.0)
        base = DEFAULT_BASE_INTERVAL
        maximum = None
        if msg.HasField("retry_back_off"):
            b = msg.retry_back_off
            bp = f"{path}.retry_back_off"
            if not b.HasField("base_interval") or _seconds(b.base_interval) <= 0:
                raise ValueError(f"{bp}.base_interval: value must be greater than 0s")
            base = max(_seconds(b.base_interval), 0.001)  # Envoy rounds up to 1 ms
            if b.HasField("max_interval"):
                maximum = _seconds(b.max_interval)
                if maximum < base:
                    raise ValueError(f"{bp}.max_interval: max_interval must be greater than "
                                     f"or equal to the base_interval")
        self.base_interval = base
        self.max_interval = maximum if maximum is not None else 10 * base
        self.status_codes = frozenset(msg.retriable_status_codes)
        self.headers = tuple(header_matcher(h, f"{path}.retriable_headers[{i}]")[0]
                             for i, h in enumerate(msg.retriable_headers))
        for i, pred in enumerate(msg.retry_host_predicate):
            if pred.typed_config.type_url.rpartition("/")[2] != PREVIOUS_HOSTS:
                raise ValueError(f"{path}.retry_host_predicate[{i}]: only {PREVIOUS_HOSTS} "
                                 f"is supported by proxyd")
        self.previous_hosts = bool(msg.retry_host_predicate)
        # reselections when the predicate rejects a host; then the last pick is used
        self.host_selection_attempts = msg.host_selection_retry_max_attempts or 1

    def overridden(self, on, num_retries, per_try_timeout) -> "RetryPolicy":
        """A copy with a request's own retry_on (added), num_retries and per-try timeout."""
        p = object.__new__(RetryPolicy)
        for name in RetryPolicy.__slots__:
            setattr(p, name, getattr(self, name))
        p.on = self.on | on
        if num_retries is not None:
            p.num_retries = num_retries
        if per_try_timeout is not None:
            p.per_try_timeout = per_try_timeout
        return p

    def retry_response(self, resp) -> bool:
        """Whether this response head asks for a retry (Envoy's wouldRetryFromHeaders)."""
        on = self.on
        status = resp.status
        if "5xx" in on and status >= 500:
            return True
        if "gateway-error" in on and status in (502, 503, 504):
            return True
        if "retriable-4xx" in on and status == 409:
            return True
        if "retriable-status-codes" in on and status in self.status_codes:
            return True
        if "retriable-headers" in on and any(m(resp) for m in self.headers):
            return True
        return False

    def retry_failure(self, why: int) -> bool:
        """Whether an attempt that ended without a response is retried
        (wouldRetryFromReset; a per-try timeout counts as a reset)."""
        on = self.on
        if "5xx" in on or "reset" in on:
            return True
        if why == PER_TRY_TIMEOUT:
            return "gateway-error" in on
        if why == CONNECT_FAILURE:
            return "connect-failure" in on or "gateway-error" in on
        if why == REFUSED_STREAM:
            return "refused-stream" in on
        return False


def _int_header(headers, name: str):
    v = headers.get(name)
    return int(v) if v is not None and v.isdigit() else None


_CONSUMED = ("x-envoy-retry-on", "x-envoy-max-retries", "x-envoy-upstream-rq-per-try-timeout-ms")


def request_policy(policy, headers, internal: bool, route_timeout: float):
    """The policy for one request: the route's, changed by the x-envoy-retry-on,
    x-envoy-max-retries and x-envoy-upstream-rq-per-try-timeout-ms headers of an
    internal request (Envoy ignores them from external ones). The headers go no further
    upstream. None: no retries."""
    if not internal:
        return policy
    on_header = headers.get("x-envoy-retry-on")
    retries = _int_header(headers, "x-envoy-max-retries")
    per_try_ms = _int_header(headers, "x-envoy-upstream-rq-per-try-timeout-ms")
    for name in _CONSUMED:
        headers.remove(name)
    if on_header is None and policy is None:
        return None  # x-envoy-max-retries alone enables nothing (Envoy 1.40)
    on = frozenset(t.strip() for t in (on_header or "").split(",")) & RETRY_ON
    per_try = None
    if per_try_ms is not None and (not route_timeout or per_try_ms / 1000.0 < route_timeout):
        per_try = per_try_ms / 1000.0  # ignored unless below the route timeout
    return (policy or _NO_POLICY).overridden(on, retries, per_try)


class RetryState:
    """One request's retries. `decide` answers Envoy's shouldRetry: YES (a retry slot is
    held and the back-off chosen), NO, LIMIT (retries used up: URX) or OVERFLOW (the
    cluster's max_retries circuit breaker refused: UO)."""
    YES, NO, LIMIT, OVERFLOW = range(4)
    __slots__ = ("policy", "remaining", "attempts", "abandoned", "_cluster", "_held",
                 "_interval", "chunks", "buffered", "body_done", "tried")

    def __init__(self, policy: RetryPolicy, cluster):
        self.policy = policy
        self.remaining = policy.num_retries
        self.attempts = 1
        self.abandoned = False  # the request body outgrew the replay buffer
        self._cluster = cluster
        self._held = False
        self._interval = policy.base_interval
        self.chunks: list = []  # the request body so far, for replay
        self.buffered = 0
        self.body_done = False
        self.tried: set = set()  # hosts attempted (the previous_hosts predicate)

    def decide(self, would_retry: bool, headers_sent: bool, response: bool = False) -> int:
        """`response`: the attempt got a response head (a good one after a retry counts
        as upstream_rq_retry_success)."""
        self.release()
        if not would_retry or headers_sent or self.abandoned:
            if response and not would_retry and self.attempts > 1:
                self._cluster.stats.upstream_rq_retry_success.inc()
            return self.NO
        stats = self._cluster.stats
        if self.remaining == 0:
            stats.upstream_rq_retry_limit_exceeded.inc()
            return self.LIMIT
        self.remaining -= 1
        retries = self._cluster.resources.retries
        if not retries.can_create():
            stats.upstream_rq_retry_overflow.inc()
            return self.OVERFLOW
        retries.inc()
        self._held = True
        stats.upstream_rq_retry.inc()
        stats.upstream_rq_retry_backoff_exponential.inc()
        self.attempts += 1
        return self.YES

    def backoff(self) -> float:
        """Envoy's JitteredExponentialBackOffStrategy: uniform below an interval that
        starts at the base and doubles up to the maximum."""
        interval = self._interval
        p = self.policy
        self._interval = p.max_interval if interval > p.max_interval / 2 else interval * 2
        ms = int(interval * 1000)
        return min(random.randrange(ms) if ms > 0 else 0, int(p.max_interval * 1000)) / 1000.0

    def choose_host(self, cluster, ctx=None):
        """The host for a retry: the load balancer re-picks while the previous_hosts
        predicate rejects its pick (host_selection_retry_max_attempts times); `ctx`: the
        request's lb.LbContext (its hash key)."""
        p = self.policy
        if p.previous_hosts:
            if ctx is None:
                from proxyd.upstream.lb import LbContext
                ctx = LbContext()
            ctx.tried = self.tried
            ctx.selection_attempts = p.host_selection_attempts
        return cluster.choose_host(ctx)

    def release(self) -> None:
        """Give back the retry circuit breaker slot the last retry held."""
        if self._held:
            self._held = False
            self._cluster.resources.retries.dec()

    def body_reader(self, stream):
        """A read_body for one attempt: the buffered body first, then the rest from the
        downstream, kept for the next attempt while it fits the buffer."""
        chunks = self.chunks
        i = 0

        def read():
            nonlocal i
            if i < len(chunks):
                i += 1
                return chunks[i - 1]
            if self.body_done:
                return None
            data = stream.read_body()
            if data is None:
                self.body_done = True
            elif not self.abandoned:
                self.buffered += len(data)
                if self.buffered > BUFFER_LIMIT:
                    self.abandoned = True
                    chunks.clear()
                    self._cluster.stats.retry_or_shadow_abandoned.inc()
                else:
                    chunks.append(data)
                    i += 1
            return data
        return read



# what a bare x-envoy-retry-on starts from: Envoy's defaults
_NO_POLICY = RetryPolicy(route_components_pb2.RetryPolicy(), "")


def create(config, ctx):
    """The registry's factory for PreviousHostsPredicate: RetryPolicy reads it itself."""
    return None

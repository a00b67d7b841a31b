"""Two small HTTP filters for proxyd, the worked example of the README's "Python filters".

ApiKeyGate (blocking style): refuses requests without a known `x-api-key`; a route can
turn it off or change the keys with per-route config. `on_request` runs in its own
greenlet, so it could look the key up in a database or over HTTP.

ServerTiming (callback style, both sides): stamps `server-timing: proxy;dur=<ms>` on every
response with the time from request headers to response headers.
"""
import time

from proxyd.http.filter import FilterHeadersStatus, StreamFilter
from proxyd.http.filters.python import BlockingFilter, LocalReply


class ApiKeyGate(BlockingFilter):
    counters = ("allowed", "denied")      # http.<stat_prefix>.python.<prefix>.allowed ...

    @classmethod
    def parse_config(cls, config):
        """Runs once per config (and in `proxyd check`): refuse a bad config early."""
        keys = config.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("'keys' must be a list of strings")
        return {"keys": frozenset(keys), "realm": config.get("realm", "proxyd")}

    @classmethod
    def parse_route_config(cls, config):
        if "keys" in config:
            config = dict(config, keys=frozenset(config["keys"]))
        return config

    def __init__(self, config):
        self.config = config              # one instance per request

    def on_request(self, headers):
        cb = self.decoder_callbacks
        route_cfg = cb.per_route_config() or {}
        keys = route_cfg.get("keys", self.config["keys"])
        if headers.get("x-api-key") in keys:
            cb.stats.allowed.inc()
            cb.stream_info.set_dynamic_metadata("api_key_gate", {"key": headers.get("x-api-key")})
            return None                   # let the request through
        cb.stats.denied.inc()
        return LocalReply(401, "missing or unknown x-api-key\n",
                          [("www-authenticate", 'ApiKey realm="%s"' % self.config["realm"])])


class ServerTiming(StreamFilter):
    def __init__(self, config):
        self.start = 0.0

    def decode_headers(self, headers, end_stream):
        self.start = time.monotonic()
        return FilterHeadersStatus.CONTINUE

    def encode_headers(self, headers, end_stream):
        ms = (time.monotonic() - self.start) * 1000.0 if self.start else 0.0
        headers.add("server-timing", "proxy;dur=%.1f" % ms)
        return FilterHeadersStatus.CONTINUE

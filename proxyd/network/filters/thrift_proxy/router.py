"""envoy.filters.thrift.router: routing and forwarding live in proxy.py; this is its
setting, `close_downstream_on_upstream_error` (default true): whether a local error
reply (no route, unknown cluster, no healthy host, upstream failure) also closes the
downstream connection."""


def create(config, ctx) -> bool:
    v = config.close_downstream_on_upstream_error
    return v.value if config.HasField("close_downstream_on_upstream_error") else True

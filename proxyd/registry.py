"""One table of extensions, keyed by their typed_config type URL.

Every listener filter, network filter, HTTP filter, access logger and tracer registers
its factory here under the Envoy type URL it implements; the config layer and the
worker look factories up by the `@type` of a `typed_config`, so adding an extension
touches its own module and `_MODULES` below, nothing else.
"""
from __future__ import annotations

import importlib

TYPE_PREFIX = "type.googleapis.com/"

# type URL (without prefix) -> module defining `create(config, ctx)`; imported on first use
_MODULES: dict[str, str] = {
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
        "proxyd.http.conn_manager",
    "envoy.extensions.filters.http.router.v3.Router": "proxyd.http.filters.router",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog":
        "proxyd.observability.access_log.loggers",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog":
        "proxyd.observability.access_log.loggers",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog":
        "proxyd.observability.access_log.loggers",
}

_loaded: dict[str, object] = {}


def register(type_name: str, module: str) -> None:
    """Add an extension implemented in `module` (used by later features and tests)."""
    _MODULES[type_name] = module


def known(type_url: str) -> bool:
    return type_url.removeprefix(TYPE_PREFIX) in _MODULES


def factory(type_url: str):
    """Return the module implementing `type_url`; it exposes `create(config, ctx)`."""
    name = type_url.removeprefix(TYPE_PREFIX)
    mod = _loaded.get(name)
    if mod is None:
        mod = _loaded[name] = importlib.import_module(_MODULES[name])
    return mod

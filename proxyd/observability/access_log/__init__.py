"""Envoy access logs: `build_access_logs(config.access_log, ctx)` -> [AccessLogger].

The HTTP connection manager, tcp_proxy and listener call `logger.log(info)` for each
finished stream/connection; that runs the filter, formats one line and appends it to
the file's buffer (see sinks.py). Nothing here blocks.
"""
from __future__ import annotations

from proxyd.proto import unpack
from proxyd import registry
from proxyd.observability.access_log.filters import compile_filter
from proxyd.observability.access_log.sinks import flush_all, reopen_all

__all__ = ["AccessLogger", "build_access_logs", "log_all", "reopen_all", "flush_all"]


class AccessLogger:
    """One configured access log: optional filter, compiled format, sink."""

    __slots__ = ("name", "filter", "format", "sink")

    def __init__(self, name: str, filter, formatter, sink):
        self.name = name
        self.filter = filter
        self.format = formatter.format
        self.sink = sink

    def log(self, info) -> None:
        f = self.filter
        if f is None or f(info):
            self.sink.write(self.format(info))


def build_access_logs(access_log_list, ctx, path: str = "access_log") -> list[AccessLogger]:
    """From a repeated envoy.config.accesslog.v3.AccessLog; ValueError names the bad entry."""

    out = []
    for i, al in enumerate(access_log_list):
        where = f"{path}[{i}]"
        if not al.HasField("typed_config"):
            raise ValueError(f"{where}.typed_config: required")
        type_url = al.typed_config.type_url
        if not registry.known(type_url):
            raise ValueError(f"{where}.typed_config: unsupported access logger {type_url}")
        flt = compile_filter(al.filter, ctx, f"{where}.filter") if al.HasField("filter") else None
        try:
            formatter, sink = registry.factory(type_url).create(unpack(al.typed_config), ctx)
        except (ValueError, OSError) as e:
            raise ValueError(f"{where}.typed_config: {e}") from None
        out.append(AccessLogger(al.name, flt, formatter, sink))
    return out


def log_all(loggers, info) -> None:
    """Convenience for callers: log `info` to every logger in the list."""
    for lg in loggers:
        lg.log(info)

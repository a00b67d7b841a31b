"""Factories for the access-logger extensions, looked up through proxyd.registry.

`create(config, ctx) -> (Formatter, FileSink)` for
envoy.extensions.access_loggers.file.v3.FileAccessLog and
envoy.extensions.access_loggers.stream.v3.StdoutAccessLog / StderrAccessLog.
"""
from __future__ import annotations

from proxyd.observability.access_log.formatter import (
    compile_json, compile_substitution_format, compile_text, struct_to_dict)
from proxyd.observability.access_log.sinks import get_sink

FILE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
TYPES = (FILE, STDOUT, STDERR)


def format_path(config) -> tuple:
    """Where the format sits inside `config`, for locating a format error in the file."""
    which = config.WhichOneof("access_log_format")
    if which is None:
        return ()
    if which != "log_format":
        return (which,)
    sub = config.log_format.WhichOneof("format")
    if sub == "text_format_source":
        return ("log_format", sub, config.log_format.text_format_source.WhichOneof("specifier"))
    return ("log_format", sub) if sub else ("log_format",)


def formatter(config):
    """The compiled format of a FileAccessLog / StdoutAccessLog / StderrAccessLog."""
    which = config.WhichOneof("access_log_format")
    if which == "log_format":
        return compile_substitution_format(config.log_format)
    if which == "format":
        return compile_text(config.format)
    if which == "json_format":
        return compile_json(struct_to_dict(config.json_format), typed=False)
    if which == "typed_json_format":
        return compile_json(struct_to_dict(config.typed_json_format), typed=True)
    return compile_text(None)


def create(config, ctx):
    name = config.DESCRIPTOR.full_name
    stats = getattr(ctx, "stats", None)
    if name == FILE:
        if not config.path:
            raise ValueError("path: required")
        path = config.path
    elif name == STDOUT:
        path = "/dev/stdout"
    elif name == STDERR:
        path = "/dev/stderr"
    else:
        raise ValueError(f"not an access logger config: {name}")
    return formatter(config), get_sink(path, stats)

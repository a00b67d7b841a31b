"""proxyd.filters.http.python: an HTTP filter written as a small Python class.

Not in Envoy (whose answers are Lua and Wasm). Configured with an xds `TypedStruct` of type
`type.googleapis.com/proxyd.filters.http.python.v1.Python` whose value holds

    module: "pkg.mod:Class"  or  "path/to/file.py:Class"   (or entry_point: "name", a
            `proxyd.http_filters` entry point of an installed distribution)
    config: {...}            handed to the class (through `parse_config` if it has one)
    stat_prefix: "name"      stats go under http.<hcm stat_prefix>.python.<name>.
    timeout: 2.0             seconds an `on_request` may take (default 5)

The class gets the same contract as built-in filters (`proxyd.http.filter`), one instance
per stream, or subclasses `BlockingFilter` and writes `on_request(headers)`, which runs in
its own greenlet (so blocking library calls work) and returns a `LocalReply` or None.
Exceptions and `on_request` timeouts answer 500 and count `errors` / `timeouts`.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys

import gevent
from google.protobuf import json_format

from proxyd.http.filter import (FilterHeadersStatus, StreamDecoderFilter, StreamEncoderFilter,
                                StreamFilter)

ENTRY_POINT_GROUP = "proxyd.http_filters"
DEFAULT_TIMEOUT = 5.0
_DECODER_API = ("decode_headers", "decode_data", "decode_trailers", "on_request")
_ENCODER_API = ("encode_1xx_headers", "encode_headers", "encode_data", "encode_trailers")
_CONFIG_KEYS = {"module", "entry_point", "config", "stat_prefix", "timeout"}


class LocalReply:
    """What `BlockingFilter.on_request` returns to answer the request itself."""
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes | str = b"", headers: list | None = None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = headers


class FilterTimeout(Exception):
    """`on_request` ran past the filter's timeout."""


class BlockingFilter(StreamDecoderFilter):
    """Write `on_request(headers) -> LocalReply | None`; the request waits (its body
    buffered up to the limit) until it returns."""
    timeout = DEFAULT_TIMEOUT   # set from the config by the factory

    def on_request(self, headers) -> LocalReply | None:
        return None

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        timeout = self.timeout

        def call():
            with gevent.Timeout(timeout, FilterTimeout("on_request took longer than %gs" % timeout)):
                return self.on_request(headers)

        def done(reply, error):
            if isinstance(error, FilterTimeout):
                cb.stats.timeouts.inc()
                cb.send_local_reply(500, b"", "python_filter_timeout")
            elif error is not None:
                raise error
            elif reply is None:
                cb.continue_decoding()
            else:
                cb.send_local_reply(reply.status, reply.body, "python_filter_local_reply",
                                    reply.headers)

        cb.run_blocking(call, done)
        return FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK


# -- loading ---------------------------------------------------------------------------------

def _options(struct) -> dict:
    conf = json_format.MessageToDict(struct) if not isinstance(struct, dict) else struct
    unknown = set(conf) - _CONFIG_KEYS
    if unknown:
        raise ValueError("unknown field(s) %s (expected %s)"
                         % (", ".join(sorted(unknown)), ", ".join(sorted(_CONFIG_KEYS))))
    if ("module" in conf) == ("entry_point" in conf):
        raise ValueError("exactly one of 'module' or 'entry_point' is required")
    return conf


def _import(spec: str):
    """`pkg.mod:Class` or `path/to/file.py:Class` -> the object."""
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ValueError("module %r: expected 'pkg.mod:Class' or 'file.py:Class'" % spec)
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            path = os.path.abspath(mod_name)
            key = "proxyd_user_filter_" + str(abs(hash(path)))
            mod = sys.modules.get(key)
            if mod is None:
                file_spec = importlib.util.spec_from_file_location(key, path)
                if file_spec is None:
                    raise ImportError("no such file")
                mod = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(mod)
                sys.modules[key] = mod
        else:
            mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import-time failure is a config error
        raise ValueError("cannot import %s: %s: %s" % (mod_name, type(e).__name__, e)) from None
    obj = mod
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError("module %s has no attribute %r" % (mod_name, attr))
    return obj


def _entry_point(name: str):
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in eps:
        if ep.name == name:
            try:
                return ep.load()
            except Exception as e:  # noqa: BLE001
                raise ValueError("cannot load entry point %s (%s): %s: %s"
                                 % (name, ep.value, type(e).__name__, e)) from None
    raise ValueError("no %r entry point named %r (installed: %s)"
                     % (ENTRY_POINT_GROUP, name, ", ".join(sorted(e.name for e in eps)) or "none"))


def load_class(conf: dict):
    """The filter class a config names, checked for the filter API."""
    cls = _import(conf["module"]) if "module" in conf else _entry_point(conf["entry_point"])
    where = conf.get("module") or conf.get("entry_point")
    if not inspect.isclass(cls):
        raise ValueError("%s is not a class" % where)
    decoder = any(callable(getattr(cls, m, None)) for m in _DECODER_API)
    encoder = any(callable(getattr(cls, m, None)) for m in _ENCODER_API)
    if not decoder and not encoder:
        raise ValueError("%s has none of the filter methods (%s)"
                         % (where, ", ".join(_DECODER_API + _ENCODER_API)))
    try:
        inspect.signature(cls).bind(None)
    except TypeError:
        raise ValueError("%s(config) must take one argument, the parsed config" % where) from None
    # defaults for the methods a plain class leaves out
    bases = []
    if decoder and not issubclass(cls, StreamDecoderFilter):
        bases.append(StreamDecoderFilter)
    if encoder and not issubclass(cls, StreamEncoderFilter):
        bases.append(StreamEncoderFilter)
    if bases:
        cls = type(cls.__name__, (cls, *bases), {})
    return cls


def _timeout(value) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, str):
        value = value[:-1] if value.endswith("s") else value
    t = float(value)
    if not t > 0:
        raise ValueError("timeout must be greater than 0")
    return t


class PythonFilterFactory:
    """The FilterFactoryCb: one instance of the user's class per stream."""

    def __init__(self, cls, config, handles, timeout: float):
        self.cls = cls
        self.config = config
        self.handles = handles
        self.decoder = issubclass(cls, StreamDecoderFilter)
        self.encoder = issubclass(cls, StreamEncoderFilter)
        if issubclass(cls, BlockingFilter):
            cls.timeout = timeout

    def __call__(self, chain) -> None:
        f = self.cls(self.config)
        if self.decoder and self.encoder:
            chain.add_stream_filter(f)
        elif self.decoder:
            chain.add_stream_decoder_filter(f)
        else:
            chain.add_stream_encoder_filter(f)


def validate(struct) -> None:
    """What `proxyd check` runs: the class imports, has the API, and takes its config."""
    conf = _options(struct)
    cls = load_class(conf)
    _timeout(conf.get("timeout"))
    parse = getattr(cls, "parse_config", None)
    if parse is not None:
        parse(conf.get("config", {}))


def create(struct, ctx) -> PythonFilterFactory:
    conf = _options(struct)
    cls = load_class(conf)
    prefix = conf.get("stat_prefix", "")
    scope = ctx.stats.scope("python." + (prefix + "." if prefix else ""))
    handles = scope.declare(
        counters=("errors", "timeouts") + tuple(getattr(cls, "counters", ())),
        gauges=tuple(getattr(cls, "gauges", ())),
        histograms=tuple(getattr(cls, "histograms", ())))
    ctx.errors = handles.errors
    ctx.handles = handles
    config = conf.get("config", {})
    parse = getattr(cls, "parse_config", None)
    if parse is not None:
        config = parse(config)
    return PythonFilterFactory(cls, config, handles, _timeout(conf.get("timeout")))


def create_route_config(struct, factory):
    """PythonPerRoute {config: ...}: through the class's `parse_route_config` if any."""
    conf = json_format.MessageToDict(struct)
    if set(conf) - {"config"}:
        raise ValueError("PythonPerRoute takes only 'config'")
    config = conf.get("config", {})
    parse = getattr(getattr(factory, "cls", None), "parse_route_config", None)
    return parse(config) if parse is not None else config


__all__ = ["BlockingFilter", "LocalReply", "FilterTimeout", "StreamFilter", "create",
           "create_route_config", "validate", "ENTRY_POINT_GROUP"]

"""Operations log: the master's and workers' own events (not access logs).

structlog, one event per line on stderr: readable key=value text (coloured on a
terminal) or one orjson object per line for log pipelines (`--log-format json`).
pid, worker index and epoch are bound once per process by `configure_logging`.

The level is a module global checked by a processor rather than baked into the
logger class, so `set_level` (``POST /logging?level=``) also reaches loggers that
were already created and bound before the change.
"""
from __future__ import annotations

import os
import sys

import orjson
import structlog

# Envoy's level names (admin /logging accepts these) mapped to numeric thresholds.
LEVELS = {
    "trace": 5, "debug": 10, "info": 20, "warning": 30, "warn": 30,
    "error": 40, "critical": 50, "off": 100,
}
_METHOD_LEVEL = {
    "debug": 10, "info": 20, "msg": 20, "warning": 30, "warn": 30, "error": 40,
    "err": 40, "exception": 40, "critical": 50, "fatal": 50,
}

_threshold = LEVELS["info"]
_level_name = "info"
_bound: dict = {}


def _filter_level(_logger, method_name, event_dict):
    if _METHOD_LEVEL.get(method_name, 20) < _threshold:
        raise structlog.DropEvent
    return event_dict


def _add_bound(_logger, _method_name, event_dict):
    for k, v in _bound.items():
        event_dict.setdefault(k, v)
    return event_dict


def _fold_exception(_logger, _method_name, event_dict):
    exc = event_dict.pop("exception", None)
    if exc:
        event_dict["exc"] = exc.rstrip("\n").replace("\n", " | ")
    return event_dict


def _orjson_dumps(obj, **_kw) -> bytes:
    return orjson.dumps(obj, default=str)


def configure_logging(level: str = "info", fmt: str = "text", stream=None, **bound) -> None:
    """Set up structlog for this process; call once at start (master and each worker).

    `bound` key/values (pid is added automatically; e.g. worker=3, epoch=0) appear on
    every event. `stream` defaults to stderr.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (expected text or json)")
    if not set_level(level):
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(LEVELS)})")
    stream = stream if stream is not None else sys.stderr
    _bound.clear()
    _bound["pid"] = os.getpid()
    _bound.update(bound)
    shared = [
        _filter_level,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_bound,
    ]
    if fmt == "json":
        processors = shared + [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
        factory = structlog.BytesLoggerFactory(getattr(stream, "buffer", stream))
    else:
        isatty = getattr(stream, "isatty", lambda: False)()
        # A terminal gets the traceback on its own lines; a file or journald gets it
        # folded into the event's line, so one event stays one line.
        tail = [] if isatty else [structlog.processors.format_exc_info, _fold_exception]
        processors = shared + tail + [structlog.dev.ConsoleRenderer(colors=isatty)]
        factory = structlog.WriteLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(0),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def bind(**kv) -> None:
    """Add or change process-wide fields (e.g. the epoch after a hot restart)."""
    _bound.update(kv)


def set_level(level: str) -> bool:
    """Change the level live; False (and no change) for an unknown level name."""
    global _threshold, _level_name
    name = str(level).lower()
    if name not in LEVELS:
        return False
    _threshold = LEVELS[name]
    _level_name = name
    return True


def get_level() -> str:
    return _level_name


def get_logger(name: str | None = None, **initial):
    """A structlog logger; `name` is rendered as the `logger` field."""
    log = structlog.get_logger(**initial)
    return log.bind(logger=name) if name is not None else log

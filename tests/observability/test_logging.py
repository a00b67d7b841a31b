"""Operations log: one event per line, bound fields, JSON, live level changes."""
from __future__ import annotations

import io

import orjson
import pytest
import structlog

from proxyd.observability import logging as oplog


@pytest.fixture(autouse=True)
def restore():
    yield
    structlog.reset_defaults()
    oplog.set_level("info")


def test_json_one_object_per_line_with_bound_fields():
    out = io.BytesIO()
    oplog.configure_logging("info", "json", stream=out, worker=3, epoch=1)
    log = oplog.get_logger("worker").bind(listener="http")
    log.info("bound", port=8080)
    log.debug("hidden")
    try:
        raise RuntimeError("multi\nline")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(x) for x in lines)
    assert first["event"] == "bound" and first["level"] == "info" and first["port"] == 8080
    assert (first["worker"], first["epoch"], first["logger"], first["listener"]) == \
        (3, 1, "worker", "http")
    assert isinstance(first["pid"], int) and first["timestamp"].endswith("Z")
    assert second["level"] == "error" and "RuntimeError: multi\nline" in second["exception"]


def test_text_is_one_line_per_event_off_a_terminal():
    out = io.StringIO()
    oplog.configure_logging("debug", "text", stream=out, worker=0)
    log = oplog.get_logger("master")
    log.debug("dbg", a=1)
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("boom")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "dbg" in lines[0] and "a=1" in lines[0] and "worker=0" in lines[0]
    assert "ZeroDivisionError" in lines[1] and "\x1b[" not in out.getvalue()


def test_set_level_reaches_existing_loggers():
    out = io.BytesIO()
    oplog.configure_logging("warning", "json", stream=out)
    log = oplog.get_logger("x").bind(k=1)      # created before the change
    log.info("before")
    assert oplog.set_level("debug") is True and oplog.get_level() == "debug"
    log.debug("after")
    assert oplog.set_level("nonsense") is False and oplog.get_level() == "debug"
    assert oplog.set_level("off")
    log.critical("silenced")
    assert [orjson.loads(x)["event"] for x in out.getvalue().splitlines()] == ["after"]


def test_bind_updates_process_fields_and_bad_arguments_raise():
    out = io.BytesIO()
    oplog.configure_logging("info", "json", stream=out, epoch=0)
    oplog.bind(epoch=2)
    oplog.get_logger().info("e")
    assert orjson.loads(out.getvalue())["epoch"] == 2
    with pytest.raises(ValueError):
        oplog.configure_logging("loud", "json")
    with pytest.raises(ValueError):
        oplog.configure_logging("info", "xml")

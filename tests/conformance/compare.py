"""Comparison helpers: reduce what Envoy and proxyd each showed to the part that must be
equal, and list the differences as readable lines ("where: envoy X, proxyd Y").

A test asserts `diffs == expected`, where expected is empty or the lines of recorded,
named differences (differences.py), so a fixed difference fails the test too.
"""
from __future__ import annotations

import json
import re

from harness import Response

VOLATILE_HEADERS = frozenset({"date", "x-envoy-upstream-service-time", "x-request-id"})
"""Headers whose presence must match but whose value differs by nature (time, random ids)."""

UPSTREAM_ECHO_VOLATILE = frozenset({"conn_id", "conn_requests"})
"""Keys of tests/upstream_server.py's echo that depend on connection reuse, not the proxy."""


def _headers(pairs) -> list[tuple[str, str]]:
    return sorted((k, "<volatile>" if k in VOLATILE_HEADERS else v) for k, v in pairs)


def response_view(resp: Response) -> dict:
    """What a client sees, with volatile values masked: status, headers (as a sorted list,
    since order carries no meaning), body; an upstream echo body is parsed and the request
    headers the upstream saw are masked the same way."""
    body: object = resp.body
    ctype = resp.header("content-type", "")
    if ctype.startswith("application/json") and resp.body:
        try:
            echo = json.loads(resp.body)
        except ValueError:
            echo = None
        if isinstance(echo, dict) and "conn_id" in echo:
            body = {k: (_headers(v) if k == "headers" else v) for k, v in echo.items()
                    if k not in UPSTREAM_ECHO_VOLATILE}
    headers = _headers(resp.headers)
    if isinstance(body, dict):  # the echo's length varies with masked values
        headers = [(k, "<echo>" if k == "content-length" else v) for k, v in headers]
    return {"status": resp.status, "headers": headers, "body": body}


def dict_diff(where: str, envoy: dict, proxyd: dict) -> list[str]:
    out = []
    for k in sorted(set(envoy) | set(proxyd), key=str):
        if k not in proxyd:
            out.append("%s%s: envoy %r, proxyd lacks it" % (where, k, envoy[k]))
        elif k not in envoy:
            out.append("%s%s: proxyd %r, envoy lacks it" % (where, k, proxyd[k]))
        elif envoy[k] != proxyd[k]:
            out.append("%s%s: envoy %r, proxyd %r" % (where, k, envoy[k], proxyd[k]))
    return out


def _multi(pairs) -> dict:
    out: dict = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def response_diff(envoy: Response, proxyd: Response) -> list[str]:
    """Differences between two responses to the same request (empty when they agree)."""
    e, p = response_view(envoy), response_view(proxyd)
    out = []
    if e["status"] != p["status"]:
        out.append("status: envoy %d, proxyd %d" % (e["status"], p["status"]))
    out += dict_diff("header ", _multi(e["headers"]), _multi(p["headers"]))
    eb, pb = e["body"], p["body"]
    if isinstance(eb, dict) and isinstance(pb, dict):
        eh, ph = eb.pop("headers", []), pb.pop("headers", [])
        out += dict_diff("upstream saw header ", _multi(eh), _multi(ph))
        out += dict_diff("upstream echo ", eb, pb)
    elif eb != pb:
        out.append("body: envoy %r, proxyd %r" % (eb, pb))
    return out


# --- access logs ---------------------------------------------------------------------
DEFAULT_LOG_LINE = re.compile(
    r'^\[(?P<START_TIME>[^\]]*)\] "(?P<METHOD>\S+) (?P<PATH>\S+) (?P<PROTOCOL>\S+)" '
    r'(?P<RESPONSE_CODE>\d+) (?P<RESPONSE_FLAGS>\S+) (?P<BYTES_RECEIVED>\d+) '
    r'(?P<BYTES_SENT>\d+) (?P<DURATION>\S+) (?P<UPSTREAM_SERVICE_TIME>\S+) '
    r'"(?P<X_FORWARDED_FOR>[^"]*)" "(?P<USER_AGENT>[^"]*)" "(?P<X_REQUEST_ID>[^"]*)" '
    r'"(?P<AUTHORITY>[^"]*)" "(?P<UPSTREAM_HOST>[^"]*)"$')
"""Envoy's default access-log line (used when a logger sets no format), field by field."""

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def shape(value: str) -> str:
    """A volatile value reduced to what must agree: unset ('-'), a number, a timestamp,
    a UUID, or some other text."""
    if value == "-":
        return "-"
    if value.isdigit():
        return "<number>"
    if ISO_MS.match(value):
        return "<iso8601-ms>"
    if UUID4.match(value):
        return "<uuid4>"
    return "<text>"


DEFAULT_VOLATILE = ("START_TIME", "DURATION", "UPSTREAM_SERVICE_TIME", "X_REQUEST_ID")


def default_line_view(line: str, echo: bool) -> dict:
    """One default-format line as {field: value}; volatile fields as their shape (and
    BYTES_SENT too for an upstream echo, whose length follows the upstream's conn ids)."""
    m = DEFAULT_LOG_LINE.match(line)
    if not m:
        return {"unparsed line": line}
    view = m.groupdict()
    for k in DEFAULT_VOLATILE + (("BYTES_SENT",) if echo else ()):
        view[k] = shape(view[k])
    return view


def operators(fmt: str) -> list[str]:
    """The command operators of a format string, in order (`%REQ(X):5%` included whole)."""
    return re.findall(r"%[A-Z0-9_]+(?:\([^)]*\))?(?::\d+)?%", fmt)


def format_line_view(line: str, fmt: str, volatile: bool = False) -> dict:
    """A line of a space-separated operator format as {operator: value} (as shapes when
    `volatile`)."""
    names = operators(fmt)
    values = line.split(" ")
    if len(values) != len(names):
        return {"unparsed line": line}
    return {n: shape(v) if volatile else v for n, v in zip(names, values)}

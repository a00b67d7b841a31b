"""Comparison helpers: reduce what Envoy and proxyd each showed to the part that must be
equal, and list the differences as readable lines ("where: envoy X, proxyd Y").

A test asserts `diffs == expected`, where expected is empty or the lines of recorded,
named differences (differences.py), so a fixed difference fails the test too.
"""
from __future__ import annotations

import json

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

"""Compile Envoy's match protos (paths, strings, regexes, headers) into plain callables.

Everything here runs once per config snapshot; the callables it returns are what the
worker calls per request, so they close over precomputed strings and compiled regexes
and never touch protobuf.

Request strings are latin-1 decoded wire bytes (see `proxyd.http.headers`), so every
config string compared against them goes through `wire()` first: Envoy compares bytes,
and a UTF-8 prefix such as "/café" must meet the request's bytes, not its characters.
"""
from __future__ import annotations

from typing import Callable

from proxyd import regex

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_LOWER = str.maketrans(_UPPER, _UPPER.lower())


def wire(s: str) -> str:
    """Config text (UTF-8 in the proto) as the latin-1 string its bytes decode to."""
    return s if s.isascii() else s.encode("utf-8").decode("latin-1")


def ascii_lower(s: str) -> str:
    """Lower-case ASCII letters only, as absl::AsciiStrToLower: wire bytes stay bytes."""
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def port_start(host: str) -> int:
    """Index of the ':' that starts the port in `host`, or -1 (Envoy's getPortStart).

    A colon inside an IPv6 literal is not a port separator: only one after the ']'.
    """
    i = host.rfind(":")
    if i < 0:
        return -1
    j = host.rfind("]")
    if j < 0 or j < i:
        return i
    return -1


def strip_host_port(host: str, listener_port: int | None = None) -> str:
    """Host without its port, as the HCM's strip_any_host_port / strip_matching_host_port.

    With `listener_port` the port is stripped only when it equals it; a non-numeric
    port is never stripped (Envoy's stripPortFromHost).
    """
    i = port_start(host)
    if i < 0:
        return host
    port = host[i + 1:]
    if not port.isascii() or not port.isdigit() or int(port) > 0xFFFFFFFF:
        return host
    if listener_port is not None and int(port) != listener_port:
        return host
    return host[:i]


def regex_matcher(msg, path: str) -> regex.Regex:
    """An envoy.type.matcher.v3.RegexMatcher as a compiled RE2 pattern."""
    if not msg.regex:
        raise ValueError(f"{path}.regex: value length must be at least 1 characters")
    return regex.compile(msg.regex, path + ".regex")


def string_matcher(msg, path: str) -> Callable[[str], bool]:
    """An envoy.type.matcher.v3.StringMatcher as `f(value) -> bool`."""
    which = msg.WhichOneof("match_pattern")
    ignore_case = msg.ignore_case
    if which == "safe_regex":
        if ignore_case:
            raise ValueError(f"{path}: ignore_case has no effect for safe_regex.")
        return regex_matcher(msg.safe_regex, path + ".safe_regex").fullmatch
    if which not in ("exact", "prefix", "suffix", "contains"):
        raise ValueError(f"{path}: string matcher {which or '(none)'!s} is not supported")
    expected = wire(getattr(msg, which))
    if which != "exact" and not expected:
        raise ValueError(f"{path}.{which}: value length must be at least 1 characters")
    if ignore_case:
        expected = ascii_lower(expected)
        if which == "exact":
            return lambda v: ascii_lower(v) == expected
        if which == "prefix":
            return lambda v: ascii_lower(v).startswith(expected)
        if which == "suffix":
            return lambda v: ascii_lower(v).endswith(expected)
        return lambda v: expected in ascii_lower(v)
    if which == "exact":
        return expected.__eq__
    if which == "prefix":
        return lambda v: v.startswith(expected)
    if which == "suffix":
        return lambda v: v.endswith(expected)
    return lambda v: expected in v


# Pseudo-headers live on RequestHead as attributes, not in Headers.
_PSEUDO = {":method": "method", ":path": "path", ":authority": "authority", ":scheme": "scheme"}


def header_getter(name: str, first_only: bool = False) -> Callable[[object], str | None]:
    """`f(req) -> value | None`: all values of `name` joined with ',' as Envoy's
    getAllOfHeaderAsString (or the first value only, as cluster_header reads it), None
    when absent. Pseudo-headers read RequestHead; the Host header is ":authority"."""
    if name == "host":
        # Envoy stores Host as :authority, so a matcher on "host" never sees it; being
        # as strict keeps a config meaning the same here and in Envoy.
        return lambda req: None
    attr = _PSEUDO.get(name)
    if attr is not None:
        def get_pseudo(req):
            return getattr(req, attr) or None
        return get_pseudo

    if first_only:
        return lambda req: req.headers.get(name)

    def get(req):
        vals = req.headers.get_all(name)
        if not vals:
            return None
        if len(vals) == 1:
            return vals[0]
        return ",".join(vals)
    return get


def header_matcher(msg, path: str) -> tuple[Callable[[object], bool], str]:
    """An envoy.config.route.v3.HeaderMatcher as (`f(req) -> bool`, description).

    Mirrors Envoy's HeaderUtility::matchHeaders: a missing header matches only
    `present_match: false` (or, inverted, `present_match: true`) unless
    treat_missing_header_as_empty; otherwise the specifier's verdict is XORed with
    invert_match. No specifier means "present".
    """
    name = msg.name.lower()
    if not name:
        raise ValueError(f"{path}.name: value length must be at least 1 characters")
    get = header_getter(name)
    invert = msg.invert_match
    missing_empty = msg.treat_missing_header_as_empty
    which = msg.WhichOneof("header_match_specifier")
    present = True
    check: Callable[[str], bool]
    if which is None or which == "present_match":
        present = msg.present_match if which else True
        check = (lambda v: True) if present else (lambda v: False)
        desc = f"{name} present={present}"
    elif which == "exact_match":
        expected = wire(msg.exact_match)
        check = (lambda v: True) if not expected else expected.__eq__
        desc = f"{name} == {msg.exact_match!r}"
    elif which == "safe_regex_match":
        check = regex_matcher(msg.safe_regex_match, f"{path}.safe_regex_match").fullmatch
        desc = f"{name} ~ {msg.safe_regex_match.regex!r}"
    elif which == "range_match":
        lo, hi = msg.range_match.start, msg.range_match.end
        check = lambda v: _in_range(v, lo, hi)
        desc = f"{name} in [{lo}, {hi})"
    elif which in ("prefix_match", "suffix_match", "contains_match"):
        expected = wire(getattr(msg, which))
        if not expected:
            raise ValueError(f"{path}.{which}: value length must be at least 1 characters")
        if which == "prefix_match":
            check = lambda v: v.startswith(expected)
        elif which == "suffix_match":
            check = lambda v: v.endswith(expected)
        else:
            check = lambda v: expected in v
        desc = f"{name} {which.split('_')[0]} {getattr(msg, which)!r}"
    elif which == "string_match":
        check = string_matcher(msg.string_match, f"{path}.string_match")
        desc = f"{name} string_match {_short(msg.string_match)}"
    else:
        raise ValueError(f"{path}.{which}: not supported")
    if invert:
        desc = "not " + desc
    absent_result = (which in (None, "present_match")) and (present == invert)

    def match(req) -> bool:
        v = get(req)
        if v is None:
            if not missing_empty:
                return absent_result
            v = ""
        return check(v) != invert
    return match, desc


def _in_range(v: str, lo: int, hi: int) -> bool:
    """absl::SimpleAtoi then [lo, hi): optional sign, ASCII digits, surrounding space."""
    s = v.strip(" \t\n\v\f\r")
    if not s:
        return False
    body = s[1:] if s[0] in "+-" else s
    if not body or not body.isascii() or not body.isdigit():
        return False
    n = int(s)
    if n < -(1 << 63) or n >= (1 << 63):
        return False
    return lo <= n < hi


def _short(msg) -> str:
    which = msg.WhichOneof("match_pattern")
    val = msg.safe_regex.regex if which == "safe_regex" else getattr(msg, which or "exact")
    return f"{which}={val!r}" + (" ignore_case" if msg.ignore_case else "")

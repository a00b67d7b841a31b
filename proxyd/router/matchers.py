"""Compile Envoy's match protos (paths, strings, regexes, headers) into plain callables.

Everything here runs once per config snapshot; the callables it returns are what the
worker calls per request, so they close over precomputed strings and compiled regexes
and never touch protobuf.

Request strings are latin-1 decoded wire bytes (see `proxyd.http.headers`), so every
config string compared against them goes through `wire()` first: Envoy compares bytes,
and a UTF-8 prefix such as "/café" must meet the request's bytes, not its characters.
"""
from __future__ import annotations

import re
from typing import Callable

try:
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - CPython < 3.11
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_LOWER = str.maketrans(_UPPER, _UPPER.lower())

# RE2 (what Envoy's safe_regex uses) has no backtracking features; Python's re does.
# Refusing them keeps a config valid here exactly when it is valid in Envoy.
_RE2_UNSUPPORTED = {
    _sre_parse.ASSERT: "lookaround assertions",
    _sre_parse.ASSERT_NOT: "lookaround assertions",
    _sre_parse.GROUPREF: "backreferences",
    _sre_parse.GROUPREF_EXISTS: "conditional groups",
}
for _name, _what in (("ATOMIC_GROUP", "atomic groups"), ("POSSESSIVE_REPEAT", "possessive repeats")):
    if hasattr(_sre_parse, _name):
        _RE2_UNSUPPORTED[getattr(_sre_parse, _name)] = _what


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


def compile_regex(pattern: str, path: str) -> re.Pattern:
    """Compile an RE2 pattern with Python's re, refusing what RE2 would refuse.

    RE2's `\\z` (end of text) is Python's `\\Z`; RE2 has no `\\Z`. Classes such as `\\d`
    are ASCII-only in RE2, hence re.ASCII.
    """
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e == "z":
                out.append("\\Z")
            elif e == "Z":
                raise ValueError(f"{path}: invalid regex {pattern!r}: \\Z is not RE2 syntax (use \\z)")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        out.append(c)
        i += 1
    translated = wire("".join(out))
    try:
        tree = _sre_parse.parse(translated, re.ASCII)
        _check_re2(tree, pattern, path)
        return re.compile(translated, re.ASCII)
    except (re.error, RecursionError, OverflowError) as e:
        raise ValueError(f"{path}: invalid regex {pattern!r}: {e}") from None


def _check_re2(sub, pattern: str, path: str) -> None:
    for op, av in sub.data if hasattr(sub, "data") else sub:
        what = _RE2_UNSUPPORTED.get(op)
        if what:
            raise ValueError(f"{path}: invalid regex {pattern!r}: {what} are not supported by RE2")
        _walk_args(av, pattern, path)


def _walk_args(av, pattern: str, path: str) -> None:
    if hasattr(av, "data"):
        _check_re2(av, pattern, path)
    elif isinstance(av, (list, tuple)):
        for x in av:
            _walk_args(x, pattern, path)


def regex_matcher(msg, path: str) -> re.Pattern:
    """An envoy.type.matcher.v3.RegexMatcher as a compiled pattern (used with fullmatch)."""
    if not msg.regex:
        raise ValueError(f"{path}.regex: value length must be at least 1 characters")
    return compile_regex(msg.regex, path + ".regex")


def string_matcher(msg, path: str) -> Callable[[str], bool]:
    """An envoy.type.matcher.v3.StringMatcher as `f(value) -> bool`."""
    which = msg.WhichOneof("match_pattern")
    ignore_case = msg.ignore_case
    if which == "safe_regex":
        if ignore_case:
            raise ValueError(f"{path}: ignore_case has no effect for safe_regex.")
        fullmatch = regex_matcher(msg.safe_regex, path + ".safe_regex").fullmatch
        return lambda v: fullmatch(v) is not None
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
        fm = regex_matcher(msg.safe_regex_match, f"{path}.safe_regex_match").fullmatch
        check = lambda v: fm(v) is not None
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

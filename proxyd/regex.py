"""Envoy's RegexMatcher engine: RE2 (the google-re2 package), linear in the input.

Every regex a config or an admin request gives proxyd goes through here, so proxyd
accepts exactly the RE2 syntax Envoy accepts and no pattern can make a match backtrack.
Patterns are UTF-8 and match bytes, as in Envoy: request strings are latin-1 decoded
wire bytes (see proxyd.http.headers), so they are matched as the bytes they came from.

Envoy refuses a pattern whose RE2 program is larger than the runtime key
`re2.max_program_size.error_level` (default 100) and logs a warning above
`re2.max_program_size.warn_level` (no default); `set_program_size_limits` applies them.
"""
from __future__ import annotations

import re2
import structlog

ERROR_LEVEL_KEY = "re2.max_program_size.error_level"
WARN_LEVEL_KEY = "re2.max_program_size.warn_level"
DEFAULT_ERROR_LEVEL = 100

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print refused patterns to stderr
_limits = {"error": DEFAULT_ERROR_LEVEL, "warn": None}
_log = structlog.get_logger("proxyd.regex")


def set_program_size_limits(runtime) -> None:
    """Take the limits from an Envoy runtime snapshot (proxyd.runtime.Runtime)."""
    _limits["error"], _limits["warn"] = _levels(runtime)


def _levels(runtime) -> tuple:
    warn = runtime.entry(WARN_LEVEL_KEY)
    return (runtime.get_int(ERROR_LEVEL_KEY, DEFAULT_ERROR_LEVEL),
            warn.uint if warn is not None else None)


def _wire(s: str) -> bytes:
    """A latin-1 decoded wire string back as its bytes (anything else as UTF-8)."""
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8")


_BOTH, _UNANCHORED = re2._Anchor.ANCHOR_BOTH, re2._Anchor.UNANCHORED


class Regex:
    """A compiled RE2 pattern over proxyd's strings."""

    __slots__ = ("pattern", "_re", "_match")

    def __init__(self, pattern: str, compiled):
        self.pattern = pattern
        self._re = compiled
        # RE2::Match itself: the wrapper's match objects cost 3x the match on short text
        self._match = compiled._regexp.Match

    def fullmatch(self, s: str) -> bool:
        b = _wire(s)
        return self._match(_BOTH, b, 0, len(b))[0][0] >= 0

    def search(self, s: str) -> bool:
        b = _wire(s)
        return self._match(_UNANCHORED, b, 0, len(b))[0][0] >= 0

    def sub(self, substitution: str, s: str) -> str:
        """Every match replaced (RE2::GlobalReplace; `\\1`..`\\9` are groups, `\\0` the
        match), as Envoy's regex_rewrite does."""
        return _global_replace(self._re, substitution.encode("utf-8"), _wire(s)).decode("latin-1")


def compile(pattern: str, where: str = "regex", runtime=None) -> Regex:
    """Compile `pattern` as Envoy compiles a RegexMatcher; ValueError names `where` (the
    config path) and says why RE2 refused it. `runtime`: take the program size limits
    from it instead of those set last."""
    compiled = _compile(pattern, where)
    size = compiled.programsize
    error_level, warn_level = (_limits["error"], _limits["warn"]) if runtime is None \
        else _levels(runtime)
    if size > error_level:
        raise ValueError(f"{where}: regex {pattern!r} RE2 program size of {size} > max program "
                         f"size of {error_level} set for the error level threshold. Increase "
                         f"configured max program size if necessary.")
    if warn_level is not None and size > warn_level:
        _log.warning("regex_program_size", regex=pattern, program_size=size,
                     warn_level=warn_level, where=where)
    return Regex(pattern, compiled)


def compile_unlimited(pattern: str, where: str = "regex") -> Regex:
    """Compile without program size limits, as Envoy's admin compiles a stats filter."""
    return Regex(pattern, _compile(pattern, where))


class RegexError(ValueError):
    """RE2 refused a pattern; `reason` is RE2's own wording."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _compile(pattern: str, where: str):
    try:
        return re2.compile(pattern.encode("utf-8"), _OPTIONS)
    except re2.error as e:
        why = e.args[0] if e.args else ""
        why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        raise RegexError(f"{where}: invalid regex {pattern!r}: {why}", why) from None


def problem(pattern: str, runtime=None) -> str | None:
    """Why Envoy would refuse `pattern` (for `proxyd check`), or None."""
    try:
        compile(pattern, runtime=runtime)
    except ValueError as e:
        return str(e).partition(": ")[2]
    return None


def check_substitution(compiled: Regex, substitution: str, where: str) -> None:
    """RE2::CheckRewriteString: a `\\N` beyond the pattern's groups is refused."""
    groups = compiled._re.groups
    i = 0
    while i < len(substitution) - 1:
        if substitution[i] == "\\":
            d = substitution[i + 1]
            if d.isdigit() and int(d) > groups:
                raise ValueError(f"{where}: Rewrite schema requests {d} matches, but the regexp "
                                 f"only has {groups} parenthesized subexpressions.")
            i += 2
            continue
        i += 1


def _global_replace(compiled, substitution: bytes, text: bytes) -> bytes:
    groups = compiled.groups
    out = []
    end = 0
    for m in compiled.finditer(text):
        start, stop = m.span()
        out.append(text[end:start])
        out.append(_expand(substitution, m, groups))
        end = stop
    out.append(text[end:])
    return b"".join(out)


def _expand(substitution: bytes, m, groups: int) -> bytes:
    """RE2::Rewrite: `\\N` is group N (0-9), `\\\\` a backslash."""
    if b"\\" not in substitution:
        return substitution
    out = []
    i, n = 0, len(substitution)
    while i < n:
        c = substitution[i:i + 1]
        if c == b"\\" and i + 1 < n:
            d = substitution[i + 1:i + 2]
            if d.isdigit() and int(d) <= groups:
                out.append(m.group(int(d)) or b"")
                i += 2
                continue
            if d == b"\\":
                out.append(b"\\")
                i += 2
                continue
        out.append(c)
        i += 1
    return b"".join(out)

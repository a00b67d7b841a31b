"""request/response_headers_to_add and _to_remove, as Envoy's HeaderParser evaluates them.

One `HeaderMutation` per config level (route, virtual host, route configuration). Per
level Envoy removes first, then computes every value, then applies overwrites, then
appends, with ADD_IF_ABSENT / OVERWRITE_IF_EXISTS looking at the headers as they stood
after the removals. Values are compiled at build time into a literal string or a
closure over a `StreamInfo`; unknown `%COMMAND%` operators are config errors, as in
Envoy, rather than text passed through.
"""
from __future__ import annotations

import re
import socket
from typing import Callable

from proxyd.router.matchers import wire

APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3

# Envoy's SubstitutionFormatParser command syntax: %NAME%, %NAME(args)%, %NAME:maxlen%.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(\([^)]*\))?(?::([0-9]+))?%")

_HOSTNAME = wire(socket.gethostname())


def _without_port(addr: str | None) -> str:
    """"1.2.3.4:5" -> "1.2.3.4", "[::1]:5" -> "::1"; other forms (pipes) unchanged."""
    if not addr:
        return ""
    if addr.startswith("["):
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    i = addr.rfind(":")
    if i > 0 and addr.count(":") == 1:
        return addr[:i]
    return addr


_OPERATORS: dict[str, Callable[[object], str]] = {
    "DOWNSTREAM_REMOTE_ADDRESS": lambda info: info.downstream_remote_address or "",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
        lambda info: _without_port(info.downstream_remote_address),
    "DOWNSTREAM_LOCAL_ADDRESS": lambda info: info.downstream_local_address or "",
    "PROTOCOL": lambda info: info.protocol or "",
    "UPSTREAM_HOST": lambda info: info.upstream_host or "",
    "HOSTNAME": lambda info: _HOSTNAME,
}

SUPPORTED_OPERATORS = frozenset(_OPERATORS)


def compile_value(value: str, path: str) -> str | Callable[[object], str]:
    """A header value template as a literal (the common case) or `f(info) -> str`.

    Unavailable values format as "" (Envoy formats header values with
    omit_empty_values), so the header is then skipped unless keep_empty_value.
    """
    if "%" not in value:
        return value
    parts: list[str | Callable[[object], str]] = []
    lit: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != "%":
            lit.append(c)
            i += 1
            continue
        if value.startswith("%%", i):
            lit.append("%")
            i += 2
            continue
        m = _COMMAND.match(value, i)
        if m is None:
            raise ValueError(f"{path}: Incorrect configuration: {value}. "
                             f"Couldn't find valid command at position {i}")
        name, args, max_len = m.group(1), m.group(2), m.group(3)
        op = _OPERATORS.get(name)
        if op is None:
            raise ValueError(f"{path}: Not supported field in StreamInfo: {name} "
                             f"(supported here: {', '.join(sorted(_OPERATORS))})")
        if args is not None:
            raise ValueError(f"{path}: {name} does not take parameters")
        if max_len is not None:
            op = _truncated(op, int(max_len))
        if lit:
            parts.append("".join(lit))
            lit = []
        parts.append(op)
        i = m.end()
    if lit:
        parts.append("".join(lit))
    if len(parts) == 1 and isinstance(parts[0], str):
        return parts[0]
    frozen = tuple(parts)

    def render(info) -> str:
        if info is None:
            return "".join(p for p in frozen if isinstance(p, str))
        return "".join(p if isinstance(p, str) else p(info) for p in frozen)
    return render


def _truncated(op: Callable[[object], str], n: int) -> Callable[[object], str]:
    return lambda info: op(info)[:n]


def _modifiable(name: str) -> bool:
    """Envoy refuses to add or remove pseudo-headers and Host through these lists."""
    return not name.startswith(":") and name != "host"


class HeaderMutation:
    """One level's *_headers_to_add / *_headers_to_remove, compiled."""
    __slots__ = ("remove", "add")

    def __init__(self, to_add, to_remove, path: str, add_field: str, remove_field: str):
        """`path` is the level's location ("" for the route configuration itself)."""
        prefix = f"{path}." if path else ""
        remove = []
        for i, name in enumerate(to_remove):
            lname = name.lower()
            if not lname:
                raise ValueError(f"{prefix}{remove_field}[{i}]: value length must be at least 1 characters")
            if not _modifiable(lname):
                raise ValueError(f"{prefix}{remove_field}[{i}]: "
                                 f"':'-prefixed or host headers may not be removed")
            remove.append(wire(lname))
        add = []
        for i, opt in enumerate(to_add):
            p = f"{prefix}{add_field}[{i}]"
            hv = opt.header
            key = hv.key.lower()
            if not key:
                raise ValueError(f"{p}.header.key: value length must be at least 1 characters")
            if not _modifiable(key):
                raise ValueError(f"{p}.header.key: ':'-prefixed or host headers may not be modified")
            if hv.value and hv.raw_value:
                raise ValueError(f"{p}.header: only one of value or raw_value can be set")
            raw = hv.raw_value.decode("latin-1") if hv.raw_value else wire(hv.value)
            if opt.HasField("append"):
                if opt.append_action != APPEND_IF_EXISTS_OR_ADD:
                    raise ValueError(f"{p}: Both append and append_action are set and it's not allowed")
                action = APPEND_IF_EXISTS_OR_ADD if opt.append.value else OVERWRITE_IF_EXISTS_OR_ADD
            else:
                action = opt.append_action
            if action not in (APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT,
                              OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS):
                raise ValueError(f"{p}.append_action: unknown value {action}")
            add.append((wire(key), compile_value(raw, f"{p}.header.value"), action,
                        opt.keep_empty_value))
        self.remove = tuple(remove)
        self.add = tuple(add)

    def __bool__(self) -> bool:
        return bool(self.remove or self.add)

    def apply(self, headers, info) -> None:
        for name in self.remove:
            headers.remove(name)
        if not self.add:
            return
        overwrite = []
        append = []
        for name, value, action, keep_empty in self.add:
            if type(value) is not str:
                value = value(info)
            if not value and not keep_empty:
                continue
            if action == APPEND_IF_EXISTS_OR_ADD:
                append.append((name, value))
            elif action == ADD_IF_ABSENT:
                if name not in headers:
                    append.append((name, value))
            elif action == OVERWRITE_IF_EXISTS_OR_ADD or name in headers:
                overwrite.append((name, value))
        for name, value in overwrite:
            headers.set(name, value)
        for name, value in append:
            headers.add(name, value)


def apply_all(mutations: tuple[HeaderMutation, ...], headers, info) -> None:
    """Apply levels in the given order (later levels win for overwrites)."""
    for m in mutations:
        m.apply(headers, info)

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
from typing import Callable

from proxyd.observability.access_log import formatter
from proxyd.router.matchers import wire

APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3

# Envoy's SubstitutionFormatParser command syntax: %NAME%, %NAME(args)%, %NAME:maxlen%.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(\([^)]*\))?(?::([0-9]+))?%")

# Envoy's header formatter is its substitution formatter (the access log's operators);
# this is its syntax check: which operators take (or need) parameters and a length.
_WITH_HEADER = frozenset(("REQ", "RESP", "TRAILER"))
_PARAMS_OPTIONAL = frozenset(("START_TIME",))
SUPPORTED_OPERATORS = frozenset(formatter.OPERATORS) | _WITH_HEADER | _PARAMS_OPTIONAL


def _check_command(value: str, i: int, path: str):
    """The operator at ``value[i]`` ('%'), as Envoy's parser judges it; returns its end."""
    m = _COMMAND.match(value, i)
    if m is None:
        raise ValueError(f"{path}: Incorrect configuration: {value}. "
                         f"Couldn't find valid command at position {i}")
    name, args, max_len = m.group(1), m.group(2), m.group(3)
    if name not in SUPPORTED_OPERATORS:
        raise ValueError(f"{path}: Not supported field in StreamInfo: {name}")
    if name in _WITH_HEADER:
        if not args or args == "()":
            raise ValueError(f"{path}: {name} requires parameters")
    elif name in _PARAMS_OPTIONAL:
        if max_len is not None:
            raise ValueError(f"{path}: {name} does not take a length")
    elif args is not None or max_len is not None:
        raise ValueError(f"{path}: {name} does not take any parameters or length")
    return m.end()


def compile_value(value: str, path: str) -> str | Callable[[object], str]:
    """A header value template as a literal (the common case) or `f(info) -> str`.

    Unavailable values format as "" (Envoy formats header values with
    omit_empty_values), so the header is then skipped unless keep_empty_value.
    """
    i, commands = value.find("%"), 0
    while i >= 0:
        if value.startswith("%%", i):
            i += 2
        else:
            i = _check_command(value, i, path)
            commands += 1
        i = value.find("%", i)
    if not commands:
        return value.replace("%%", "%")
    return formatter.compile_text(value, omit_empty_values=True).format


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

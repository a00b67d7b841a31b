"""Envoy access-log format strings (command operators) compiled to one Python function.

A format is parsed once at config time and turned into generated source: one local
variable per operator, then a single f-string (text) or dict literal (JSON). That keeps
the per-line cost at a few attribute loads and one string build, about what a
hand-written f-string costs, instead of a call per operator.

Operators produce a value or None; text renders None as `-` (or `` with
omit_empty_values), JSON renders it as null (or drops the key). `compile_text` and
`compile_json` raise ValueError naming the first unknown or malformed operator, which
the config layer reports with the path and line of the format string.
"""
from __future__ import annotations

import re
import socket
import time

import orjson

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# Same grammar as Envoy's SubstitutionFormatParser: NAME, optional (ARGS), optional :MAXLEN.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")

RESPONSE_FLAGS_LONG = {
    "UH": "NoHealthyUpstream", "UF": "UpstreamConnectionFailure", "UO": "UpstreamOverflow",
    "NR": "NoRouteFound", "URX": "UpstreamRetryLimitExceeded",
    "UC": "UpstreamConnectionTermination", "DC": "DownstreamConnectionTermination",
    "LH": "FailedLocalHealthCheck", "UT": "UpstreamRequestTimeout", "LR": "LocalReset",
    "UR": "UpstreamRemoteReset", "RL": "RateLimited", "UAEX": "UnauthorizedExternalService",
    "RLSE": "RateLimitServiceError", "IH": "InvalidEnvoyRequestHeaders",
    "SI": "StreamIdleTimeout", "DI": "DelayInjected", "FI": "FaultInjected",
    "DPE": "DownstreamProtocolError", "UPE": "UpstreamProtocolError",
    "UMSDR": "UpstreamMaxStreamDurationReached", "NC": "NoClusterFound",
    "DT": "DurationTimeout", "RFCF": "ResponseFromCacheFilter",
    "NFCF": "NoFilterConfigFound", "OM": "OverloadManagerTerminated",
}

# Request pseudo-headers live on RequestHead attributes, not in Headers.
_REQ_PSEUDO = {":method": "method", ":path": "path", ":authority": "authority",
               ":scheme": "scheme"}


class TimeFormat:
    """Formats a unix timestamp in UTC like Envoy's %START_TIME(...)%.

    Plain strftime, plus `%s` (epoch seconds), `%1f`..`%9f` (fraction of a second with
    that many digits, truncated) and `%E1S`..`%E9S` (seconds with a fraction). The
    whole-second part is cached, so a line costs one int compare and a small join.
    """

    def __init__(self, fmt: str | None):
        self.default = not fmt
        if self.default:
            fmt = "%Y-%m-%dT%H:%M:%S.%3fZ"
        # Segments: ("s", strftime text) or ("f", digits) or ("e", digits).
        self.segments: list[tuple[str, object]] = []
        buf = []
        i = 0
        while i < len(fmt):
            c = fmt[i]
            if c == "%" and i + 1 < len(fmt):
                nxt = fmt[i + 1]
                if nxt.isdigit() and nxt != "0" and i + 2 < len(fmt) and fmt[i + 2] == "f":
                    self._flush(buf)
                    self.segments.append(("f", int(nxt)))
                    i += 3
                    continue
                if (nxt == "E" and i + 3 < len(fmt) and fmt[i + 2].isdigit()
                        and fmt[i + 2] != "0" and fmt[i + 3] == "S"):
                    buf.append("%S.")
                    self._flush(buf)
                    self.segments.append(("f", int(fmt[i + 2])))
                    i += 4
                    continue
                if nxt == "s":
                    self._flush(buf)
                    self.segments.append(("e", None))
                    i += 2
                    continue
                buf.append(fmt[i:i + 2])
                i += 2
                continue
            buf.append(c)
            i += 1
        self._flush(buf)
        self._has_fraction = any(kind == "f" for kind, _ in self.segments)
        self._sec = None
        self._cached: list[str] = []

    def _flush(self, buf: list) -> None:
        if buf:
            self.segments.append(("s", "".join(buf)))
            buf.clear()

    def _render_second(self, sec: int) -> None:
        tm = time.gmtime(sec)
        parts = []
        for kind, arg in self.segments:
            if kind == "s":
                parts.append(time.strftime(arg, tm))
            elif kind == "e":
                parts.append(str(sec))
            else:
                parts.append(arg)  # fraction width, filled per call
        self._sec = sec
        self._cached = parts
        if self.default:
            self._prefix = parts[0]
        elif not self._has_fraction:
            self._whole = "".join(parts)

    def _render_default(self, t: float) -> str:
        sec = int(t)
        if sec != self._sec:
            self._render_second(sec)
        # +0.5 µs: round to the microsecond a float can hold before truncating to ms,
        # so .310000 stored as .30999999 still prints 310.
        return self._prefix + _MS_Z[int((t - sec) * 1000 + 0.0005)]

    def _render_any(self, t: float) -> str:
        sec = int(t)
        if sec != self._sec:
            self._render_second(sec)
        if not self._has_fraction:
            return self._whole
        ns = min(int((t - sec) * 1e6 + 0.5), 999_999) * 1000  # a float holds ~µs
        return "".join(p if isinstance(p, str) else f"{ns:09d}"[:p] for p in self._cached)

    @property
    def render(self):
        """The fastest bound method for this format (what generated code calls)."""
        return self._render_default if self.default else self._render_any

    def __call__(self, t: float) -> str:
        return self.render(t)


_MS_Z = [f"{k:03d}Z" for k in range(1000)] + ["999Z"]


def _strip_port(addr):
    if not addr:
        return None
    if addr.startswith("["):
        return addr[1:addr.index("]")]
    host, sep, port = addr.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else addr


def _port(addr):
    if not addr:
        return None
    _, sep, port = addr.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def _flags_long(flags):
    return ",".join(RESPONSE_FLAGS_LONG.get(f, f) for f in flags) if flags else "-"


def _trace_id(trace):
    return getattr(trace, "trace_id", None) if trace is not None else None


def _ms(expr_end: str, expr_start: str) -> str:
    return (f"(int(({expr_end} - {expr_start}) * 1000) "
            f"if {expr_end} is not None and {expr_start} is not None else None)")


# Operators that always have a value, so text rendering needs no None check.
_NEVER_NONE = frozenset(("RESPONSE_CODE", "RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG",
                         "BYTES_RECEIVED", "BYTES_SENT", "CONNECTION_ID", "START_TIME",
                         "HOSTNAME"))


def _attr(name: str) -> str:
    return f"(info.{name} or None)"


# name -> (expression over `info`, json kind). Expressions may use helper names bound
# into the generated function's globals (_strip_port, _port, ...).
_SIMPLE = {
    "PROTOCOL": ("(info.protocol or None)", "str"),
    "RESPONSE_CODE": ("info.response_code", "int"),
    "RESPONSE_CODE_DETAILS": (_attr("response_code_details"), "str"),
    "RESPONSE_FLAGS": ('(",".join(info.response_flags) or "-")', "str"),
    "RESPONSE_FLAGS_LONG": ("_flags_long(info.response_flags)", "str"),
    "BYTES_RECEIVED": ("info.bytes_received", "int"),
    "BYTES_SENT": ("info.bytes_sent", "int"),
    "DURATION": (_ms("info.end_mono", "info.start_mono"), "int"),
    "REQUEST_DURATION": (_ms("info.request_end_mono", "info.start_mono"), "int"),
    "RESPONSE_DURATION": (_ms("info.response_start_mono", "info.start_mono"), "int"),
    "RESPONSE_TX_DURATION": (_ms("info.end_mono", "info.response_start_mono"), "int"),
    "UPSTREAM_HOST": (_attr("upstream_host"), "str"),
    # the connected upstream's address: unset when the connect failed (Envoy 1.40)
    "UPSTREAM_REMOTE_ADDRESS": ("(info.upstream_local_address and info.upstream_host or None)",
                                "str"),
    "UPSTREAM_CLUSTER": (_attr("upstream_cluster"), "str"),
    "UPSTREAM_LOCAL_ADDRESS": (_attr("upstream_local_address"), "str"),
    "DOWNSTREAM_REMOTE_ADDRESS": (_attr("downstream_remote_address"), "str"),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": (_attr("downstream_direct_remote_address"), "str"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
        ("_strip_port(info.downstream_remote_address)", "str"),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
        ("_strip_port(info.downstream_direct_remote_address)", "str"),
    "DOWNSTREAM_REMOTE_PORT": ("_port(info.downstream_remote_address)", "int"),
    "DOWNSTREAM_LOCAL_ADDRESS": (_attr("downstream_local_address"), "str"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
        ("_strip_port(info.downstream_local_address)", "str"),
    "DOWNSTREAM_LOCAL_PORT": ("_port(info.downstream_local_address)", "int"),
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
        ("(info.upstream_local_address and _strip_port(info.upstream_host) or None)", "str"),
    "ROUTE_NAME": (_attr("route_name"), "str"),
    "CONNECTION_ID": ("info.connection_id", "int"),
    "STREAM_ID": ("_request_id(info)", "str"),
    "TRACE_ID": ("_trace_id(info.trace)", "str"),
}


OPERATORS = frozenset(_SIMPLE) | {"START_TIME", "REQ", "RESP", "TRAILER", "HOSTNAME"}
"""Every command operator proxyd renders (the compatibility report lists them)."""


def _request_id(info):
    if info.request_id is not None:
        return info.request_id
    rq = info.request
    return rq.headers.get("x-request-id") if rq is not None else None


def _dynamic_metadata(info, namespace: str, path: tuple, text: bool):
    """%DYNAMIC_METADATA(NS:KEY:...)%: a value filters set on the stream; text formats
    render objects as JSON, as Envoy does."""
    md = info._dynamic_metadata
    v = md.get(namespace) if md else None
    for key in path:
        v = v.get(key) if isinstance(v, dict) else None
    if v is None:
        return None
    if text and not isinstance(v, str):
        return orjson.dumps(v).decode()
    return v


def _filter_state(info, key: str):
    """%FILTER_STATE(KEY:PLAIN)%: an object filters shared; serialize() if it has one."""
    fs = info._filter_state
    v = fs.get(key) if fs else None
    if v is None:
        return None
    ser = getattr(v, "serialize", None)
    return str(ser() if ser is not None else v)


_GLOBALS = {
    "_strip_port": _strip_port, "_port": _port, "_flags_long": _flags_long,
    "_trace_id": _trace_id, "_request_id": _request_id, "_dynamic_metadata": _dynamic_metadata,
    "_filter_state": _filter_state, "__builtins__": __builtins__,
}


class Command:
    __slots__ = ("name", "arg", "max_len", "text")

    def __init__(self, name, arg, max_len, text):
        self.name, self.arg, self.max_len, self.text = name, arg, max_len, text


def parse(fmt: str) -> list:
    """Split a format string into literal strings and Commands (`%%` is a literal %)."""
    out: list = []
    lit: list[str] = []
    i = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            lit.append(fmt[i:])
            break
        lit.append(fmt[i:j])
        if j + 1 < n and fmt[j + 1] == "%":
            lit.append("%")
            i = j + 2
            continue
        m = _COMMAND.match(fmt, j)
        if m is None:
            raise ValueError(f"invalid access log format: no valid command operator at "
                             f"position {j} in {fmt!r}")
        if lit:
            s = "".join(lit)
            if s:
                out.append(s)
            lit = []
        out.append(Command(m.group(1), m.group(2), int(m.group(3)) if m.group(3) else None,
                           m.group(0)))
        i = m.end()
    s = "".join(lit)
    if s:
        out.append(s)
    return out


class _Gen:
    """Collects the statements of one generated function."""

    def __init__(self):
        self.stmts: list[str] = []
        self.consts: dict[str, object] = {}
        self.n = 0
        self.header_uses = {"qh": 0, "sh": 0, "tr": 0}
        self.text = True   # a text format (objects render as JSON text)

    def const(self, value) -> str:
        name = f"_k{len(self.consts)}"
        self.consts[name] = value
        return name

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def header_lookup(self, src: str, names: list[str]) -> str:
        """Statements setting a new var to the first present header among `names`."""
        v = self.var()
        first = True
        for name in names:
            pseudo = _REQ_PSEUDO.get(name) if src == "qh" else None
            if pseudo == "path":  # a CONNECT has no :path ("" here)
                expr = "((rq.path or None) if rq is not None else None)"
            elif pseudo is not None:
                expr = f"(rq.{pseudo} if rq is not None else None)"
            elif src == "sh" and name == ":status":
                expr = "(str(rs.status) if rs is not None else None)"
            else:
                self.header_uses[src] += 1
                expr = f"_H_{src}({name!r})"
                if src == "qh" and name == "host":
                    expr = f"({expr} or (rq.authority if rq is not None else None))"
            if first:
                self.stmts.append(f"{v} = {expr}")
                first = False
            else:
                self.stmts.append(f"if {v} is None: {v} = {expr}")
        return v

    def command(self, cmd: Command) -> tuple[str, str]:
        """Emit statements for one operator; return (var, json kind)."""
        name = cmd.name
        if name in _SIMPLE:
            expr, kind = _SIMPLE[name]
            v = self.var()
            self.stmts.append(f"{v} = {expr}")
        elif name == "START_TIME":
            tf = self.const(TimeFormat(cmd.arg).render)
            v = self.var()
            self.stmts.append(f"{v} = {tf}(info.start_time)")
            kind = "str"
        elif name in ("REQ", "RESP", "TRAILER"):
            if not cmd.arg:
                raise ValueError(f"access log command operator {cmd.text} needs a header name")
            names = [h.strip().lower() for h in cmd.arg.split("?")]
            if len(names) > 2 or not all(names):
                raise ValueError(f"invalid header alternatives in access log command "
                                 f"operator {cmd.text}")
            v = self.header_lookup({"REQ": "qh", "RESP": "sh", "TRAILER": "tr"}[name], names)
            kind = "str"
        elif name == "DYNAMIC_METADATA":
            ns, *path = (cmd.arg or "").split(":")
            if not ns:
                raise ValueError(f"access log command operator {cmd.text} needs a namespace")
            v = self.var()
            self.stmts.append(f"{v} = _dynamic_metadata(info, {ns!r}, {tuple(path)!r}, "
                              f"{self.text!r})")
            kind = "str" if self.text else "any"
        elif name == "FILTER_STATE":
            key, _, mode = (cmd.arg or "").partition(":")
            if not key or mode not in ("", "PLAIN", "TYPED"):
                raise ValueError(f"invalid access log command operator {cmd.text}")
            v = self.var()
            self.stmts.append(f"{v} = _filter_state(info, {key!r})")
            kind = "str"
        elif name == "HOSTNAME":
            v = self.var()
            self.stmts.append(f"{v} = {self.const(socket.gethostname())}")
            kind = "str"
        else:
            raise ValueError(f"unknown access log command operator %{name}%")
        if cmd.max_len is not None:
            self.stmts.append(f"if {v} is not None: {v} = str({v})[:{cmd.max_len}]")
            kind = "str"
        return v, kind

    def source(self, name: str, ret: str) -> str:
        pre = ["rq = info.request", "rs = info.response"]
        for src, obj in (("qh", "rq.headers if rq is not None else None"),
                         ("sh", "rs.headers if rs is not None else None"),
                         ("tr", "info.response_trailers")):
            uses = self.header_uses[src]
            if not uses:
                continue
            # Several lookups: one dict (first value wins, like Envoy) beats repeated scans.
            if uses >= 4:
                pre.append(f"_o = {obj}")
                pre.append(f"_H_{src} = dict(reversed(_o.items)).get if _o is not None "
                           f"else _none")
            else:
                pre.append(f"_o = {obj}")
                pre.append(f"_H_{src} = _o.get if _o is not None else _none")
        body = pre + self.stmts + [f"return {ret}"]
        return f"def {name}(info):\n" + "".join(f"    {s}\n" for s in body)

    def build(self, name: str, ret: str):
        src = self.source(name, ret)
        g = dict(_GLOBALS)
        g.update(self.consts)
        g["_none"] = _none
        exec(compile(src, f"<access log format {name}>", "exec"), g)
        fn = g[name]
        fn.source = src
        return fn


def _none(_name):
    return None


def _fstring_literal(s: str) -> str:
    return (s.encode("unicode_escape").decode("ascii")
            .replace("'", "\\'").replace("{", "{{").replace("}", "}}"))


class Formatter:
    """A compiled format: `format(info) -> str` (one line, newline included for JSON)."""

    __slots__ = ("format", "source", "kind")

    def __init__(self, fn, kind: str):
        self.format = fn
        self.source = fn.source
        self.kind = kind


def _text_expr(gen: _Gen, parts: list, missing: str) -> str:
    """An f-string expression rendering `parts`, with `missing` for None values."""
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(_fstring_literal(p))
            continue
        v, _ = gen.command(p)
        if p.name not in _NEVER_NONE:
            gen.stmts.append(f"if {v} is None: {v} = {missing!r}")
        out.append("{" + v + "}")
    return "f'" + "".join(out) + "'"


def compile_text(fmt: str | None = None, omit_empty_values: bool = False) -> Formatter:
    """Compile an Envoy text format; None/empty means Envoy's default line."""
    gen = _Gen()
    parts = parse(fmt or DEFAULT_FORMAT)
    ret = _text_expr(gen, parts, "" if omit_empty_values else "-")
    return Formatter(gen.build("_format_text", ret), "text")


def compile_json(spec: dict, typed: bool = True, omit_empty_values: bool = False) -> Formatter:
    """Compile an Envoy JSON format (a dict of key -> format string, nested dicts, numbers).

    A string that is exactly one operator becomes that operator's value: numbers stay
    numbers when `typed` (SubstitutionFormatString.json_format, typed_json_format),
    strings otherwise (the legacy FileAccessLog.json_format); missing is null. A string
    mixing text and operators renders like a text format.
    """
    if not isinstance(spec, dict):
        raise ValueError("access log json_format must be a mapping")
    gen = _Gen()
    gen.text = False

    def value_expr(value) -> str:
        if isinstance(value, str):
            parts = parse(value)
            if len(parts) == 1 and isinstance(parts[0], Command):
                v, kind = gen.command(parts[0])
                if not typed and kind != "str":
                    gen.stmts.append(f"if {v} is not None: {v} = str({v})")
                return v
            if all(isinstance(p, str) for p in parts):
                return repr("".join(parts))
            return _text_expr(gen, parts, "-")
        if isinstance(value, dict):
            return "{" + ", ".join(f"{str(k)!r}: {value_expr(v)}" for k, v in value.items()) + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(value_expr(v) for v in value) + "]"
        if value is None or isinstance(value, (bool, int, float)):
            return repr(value)
        raise ValueError(f"unsupported value {value!r} in access log json_format")

    body = value_expr(spec)
    gen.consts["_dumps"] = orjson.dumps
    gen.consts["_NL"] = orjson.OPT_APPEND_NEWLINE
    if omit_empty_values:
        ret = ("_dumps({k: x for k, x in " + body +
               ".items() if x is not None and x != ''}, option=_NL).decode()")
    else:
        ret = f"_dumps({body}, option=_NL).decode()"
    return Formatter(gen.build("_format_json", ret), "json")


def struct_to_dict(struct) -> dict:
    """A google.protobuf.Struct as a dict with keys sorted at every level.

    A Struct is a map, so the YAML order is gone by the time we see it; Envoy's JSON
    logs come out with sorted keys, and so do ours.
    """
    from google.protobuf.json_format import MessageToDict

    def srt(v):
        if isinstance(v, dict):
            return {k: srt(v[k]) for k in sorted(v)}
        if isinstance(v, list):
            return [srt(x) for x in v]
        return v
    return srt(MessageToDict(struct))


def compile_substitution_format(sfs) -> Formatter:
    """From an `envoy.config.core.v3.SubstitutionFormatString` message."""
    omit = sfs.omit_empty_values
    which = sfs.WhichOneof("format")
    if which == "json_format":
        return compile_json(struct_to_dict(sfs.json_format), True, omit)
    if which == "text_format_source":
        src = sfs.text_format_source
        kind = src.WhichOneof("specifier")
        if kind == "inline_string":
            text = src.inline_string
        elif kind == "inline_bytes":
            text = src.inline_bytes.decode("utf-8")
        elif kind == "filename":
            with open(src.filename, encoding="utf-8") as f:
                text = f.read()
        else:
            raise ValueError(f"unsupported text_format_source {kind}")
        return compile_text(text, omit)
    if which == "text_format":
        return compile_text(sfs.text_format, omit)
    return compile_text(None, omit)

"""Comparison helpers: reduce what Envoy and proxyd each showed to the part that must be
equal, and list the differences as readable lines ("where: envoy X, proxyd Y").

A test passes the lines to differences.assert_explained: every line must be explained by
a recorded, named difference, and every recorded difference must still show.
"""
from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase

from harness import Response

VOLATILE_HEADERS = frozenset({"date", "x-envoy-upstream-service-time", "x-request-id"})
"""Headers whose presence must match but whose value differs by nature (time, random ids)."""

UPSTREAM_ECHO_VOLATILE = frozenset({"conn_id", "conn_requests"})
"""Keys of tests/upstream_server.py's echo that depend on connection reuse, not the proxy."""


def _headers(pairs) -> list[tuple[str, str]]:
    return sorted((k, "<volatile>" if k in VOLATILE_HEADERS else v) for k, v in pairs)


def response_view(resp: Response, echo: bool = False) -> dict:
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
    if echo or isinstance(body, dict):  # the echo's length varies with masked values
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


def response_diff(envoy: Response, proxyd: Response, echo: bool = False) -> list[str]:
    """Differences between two responses to the same request (empty when they agree);
    `echo`: the upstream's echo answered, whose length follows its connection ids."""
    e, p = response_view(envoy, echo), response_view(proxyd, echo)
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


# --- stats ---------------------------------------------------------------------------
STAT_ROOTS = ("cluster.", "http.", "listener.", "tcp.", "server.", "cluster_manager.",
              "listener_manager.")
"""The stat trees compared; filter prefixes sit under cluster.<name>. and http.<prefix>."""

VOLATILE_STATS = ("server.uptime", "server.memory_*", "server.version",
                  "http.*.downstream_cx_tx_bytes_total",  # x-envoy-upstream-service-time digits
                  "server.stats_recent_lookups", "server.total_connections",
                  "http.admin.*", "listener.admin.*")
"""Stats whose value depends on the process or on the admin polling, not on the traffic:
their presence is compared, not their value."""

_LISTENER_ADDRESS = re.compile(r"(127\.0\.0\.1_)\d+")


def normalise_stat(name: str) -> str:
    """A listener's address carries the side's own port: `listener.127.0.0.1_<port>.`."""
    return _LISTENER_ADDRESS.sub(r"\1<port>", name)


def stats_view(stats: dict) -> dict:
    """The compared trees' stats by normalised name; volatile values masked."""
    out = {}
    for name, value in stats.items():
        name = normalise_stat(name)
        if name.startswith(STAT_ROOTS):
            out[name] = ("<volatile>" if any(fnmatchcase(name, p) for p in VOLATILE_STATS)
                         else value)
    return out


def stats_diff(envoy: dict, proxyd: dict) -> list[str]:
    """Stat by stat: lacking in proxyd, or a different value. Names only proxyd has are
    not differences (the report lists them)."""
    e, p = stats_view(envoy), stats_view(proxyd)
    return dict_diff("", e, {k: v for k, v in p.items() if k in e})


# --- Prometheus ----------------------------------------------------------------------
_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def prometheus_series(text: str) -> tuple[dict, dict]:
    """({(metric name, sorted labels): value}, {metric name: TYPE}) of a text exposition,
    listener ports normalised."""
    series, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        m = _PROM_LINE.match(line)
        if not m:
            continue
        labels = tuple(sorted((k, _LISTENER_ADDRESS.sub(r"\1<port>", v))
                              for k, v in _PROM_LABEL.findall(m.group(2) or "")))
        series[(m.group(1), labels)] = float(m.group(3))
    return series, types


_CODE = re.compile(r"^(.*_rq)_(\d{3})$")
_CLASS = re.compile(r"^(.*_rq)_(\d)xx$")
_WORKER = re.compile(r"^worker_(\d+)\.(.*)$")
_ADDRESS = re.compile(r"^(\d+\.\d+\.\d+\.\d+_[^.]+|\[[^\]]*\]_[^.]+)\.")


def _san(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def prometheus_key(stat: str) -> tuple[str, tuple]:
    """The series Envoy's default tag extractors make of a stat name (the subset of
    extractors these stat trees use); checked against real Envoy in the tests."""
    labels = {}
    root, rest = stat.split(".", 1)
    if root == "cluster" and rest.count(".") >= 1:
        labels["envoy_cluster_name"], rest = rest.split(".", 1)
    elif root == "http":
        labels["envoy_http_conn_manager_prefix"], rest = rest.split(".", 1)
    elif root == "tcp":
        labels["envoy_tcp_prefix"], rest = rest.split(".", 1)
    elif root == "listener" and _ADDRESS.match(rest):
        m = _ADDRESS.match(rest)
        labels["envoy_listener_address"], rest = m.group(1), rest[m.end():]
    elif root == "listener":  # listener.admin.: no address tag
        root, rest = "listener.admin", rest.split(".", 1)[1]
    if root.startswith("listener") and rest.startswith("http."):
        _, labels["envoy_http_conn_manager_prefix"], rest = rest.split(".", 2)
        rest = "http." + rest
    m = _WORKER.match(rest)
    if m:
        labels["envoy_worker_id"], rest = m.group(1), "worker." + m.group(2)
    m = _CODE.match(rest) or None
    if m:
        labels["envoy_response_code"], rest = m.group(2), m.group(1)
    else:
        m = _CLASS.match(rest)
        if m:
            labels["envoy_response_code_class"], rest = m.group(2), m.group(1) + "_xx"
    return "envoy_" + _san(root + "." + rest), tuple(sorted(labels.items()))


def series_name(key) -> str:
    name, labels = key
    return "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in labels))


def prometheus_diff(envoy_stats: dict, proxyd_stats: dict, envoy_text: str,
                    proxyd_text: str) -> list[str]:
    """For every compared stat both proxies have: its series (Envoy's tag-extracted name
    and labels) in proxyd's /stats/prometheus, with Envoy's TYPE and value."""
    ev, pv = stats_view(envoy_stats), stats_view(proxyd_stats)
    es, et = prometheus_series(envoy_text)
    ps, pt = prometheus_series(proxyd_text)
    out = []
    for stat in sorted(set(ev) & set(pv)):
        key = prometheus_key(stat)
        shown = series_name(key)
        if key not in es:
            out.append("%s: the test's tag extraction (%s) is not what Envoy shows" % (stat, shown))
        elif key not in ps:
            out.append("%s: envoy shows it, proxyd lacks it" % shown)
        elif et.get(key[0]) != pt.get(key[0]):
            out.append("%s: TYPE envoy %s, proxyd %s" % (shown, et.get(key[0]), pt.get(key[0])))
        elif ev[stat] != "<volatile>" and es[key] != ps[key]:
            out.append("%s: envoy %g, proxyd %g" % (shown, es[key], ps[key]))
    return out


# --- admin JSON ----------------------------------------------------------------------
MAP_FIELDS = frozenset({"metadata", "filter_metadata", "typed_filter_metadata",
                        "dynamic_parameters"})
"""Fields whose keys are data (proto maps and Structs), not schema."""


def json_shape(value):
    """The keys and types of a JSON document, not its values: a list becomes the union
    of its items' shapes, a list of typed messages a map by "@type"."""
    if isinstance(value, dict):
        return {k: "map" if k in MAP_FIELDS and isinstance(v, dict) else json_shape(v)
                for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "@type" in v for v in value):
            return {"[@type=%s]" % v["@type"]: json_shape(v) for v in value}
        merged: dict = {}
        scalars = set()
        for v in value:
            s = json_shape(v)
            if isinstance(s, dict):
                _merge(merged, s)
            else:
                scalars.add(str(s))
        return [merged] if merged else sorted(scalars)
    return type(value).__name__


def _merge(into: dict, shape: dict) -> None:
    for k, v in shape.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into.setdefault(k, v)


def shape_diff(where: str, envoy, proxyd) -> list[str]:
    """Keys Envoy's document has and proxyd's lacks (or the reverse), and type mismatches."""
    if isinstance(envoy, list) and isinstance(proxyd, list):
        if envoy and proxyd and isinstance(envoy[0], dict) and isinstance(proxyd[0], dict):
            return shape_diff(where + "[]", envoy[0], proxyd[0])
        return [] if not envoy or not proxyd or envoy == proxyd else [
            "%s: envoy %s, proxyd %s" % (where, envoy, proxyd)]
    if isinstance(envoy, dict) and isinstance(proxyd, dict):
        out = []
        for k in sorted(set(envoy) | set(proxyd)):
            path = "%s.%s" % (where, k) if where else k
            if k not in proxyd:
                out.append("%s: envoy has it, proxyd lacks it" % path)
            elif k not in envoy:
                out.append("%s: proxyd has it, envoy lacks it" % path)
            else:
                out += shape_diff(path, envoy[k], proxyd[k])
        return out
    if envoy != proxyd:
        return ["%s: envoy %s, proxyd %s" % (where, _kind(envoy), _kind(proxyd))]
    return []


def _kind(shape) -> str:
    return "object" if isinstance(shape, dict) else "list" if isinstance(shape, list) else shape

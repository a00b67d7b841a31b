"""Admin endpoints: functions from (context, request) to a response; no I/O here (long
work yields to the master's loop in bounded steps).

State-changing endpoints accept only POST (405 with ``Allow: POST`` otherwise), so a link
followed by a browser cannot drain or stop the proxy.
"""

import json
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import gevent

from .. import regex
from ..stats.prometheus import render as render_prometheus
from ..stats.render import stats_json, stats_text
from ..observability.logging import get_level
from . import dumps
from .server_stats import refresh_server_stats

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=UTF-8"
LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


@dataclass
class Request:
    method: str
    path: str
    query: dict  # name -> list of values; a bare ``?usedonly`` maps to ['']
    form: dict = field(default_factory=dict)  # a url-encoded body's parameters, the same way

    def arg(self, name: str, default=None):
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: list = field(default_factory=list)
    after: Callable | None = None  # run once the response has been written


class BadRequest(Exception):
    pass


def ok() -> Response:
    return Response(200, b"OK\n")


def _filter(req: Request):
    """?filter= as Envoy's admin takes it: an RE2 pattern, searched in each stat name."""
    pattern = req.arg("filter")
    if not pattern:
        return None
    try:
        return regex.compile_unlimited(pattern)
    except regex.RegexError as exc:
        raise BadRequest("Invalid re2 regex: " + exc.reason) from None


class _Names(frozenset):
    """The stat names a filter matched, answering the renderers' `search(name)`."""

    search = frozenset.__contains__


FILTER_STEP = 512  # names matched between two yields to the master's other work


def _filtered(snap, filter_re):
    """Match the filter against the snapshot's names in bounded steps: RE2 is linear
    in each name, but a whole catalog is tens of thousands of them, and the master's
    loop also supervises workers and answers /ready."""
    if filter_re is None:
        return None
    search = filter_re.search
    names = []
    for i, (name, _, _) in enumerate(snap.entries):
        if not i % FILTER_STEP:
            gevent.idle()  # after pending I/O (sleep(0) may run before the loop polls)
        if not name.startswith("_") and search(name):
            names.append(name)
    return _Names(names)


def stats(ctx, req: Request) -> Response:
    fmt = req.arg("format", "text")
    if fmt == "prometheus":
        return prometheus(ctx, req)
    if fmt not in ("text", "json"):
        raise BadRequest(f"unsupported format {fmt!r}: use text, json or prometheus")
    filter_re, used = _filter(req), "usedonly" in req.query
    refresh_server_stats(ctx)
    snap = ctx.stats.snapshot(with_used=used)
    filter_re = _filtered(snap, filter_re)
    if fmt == "json":
        return Response(200, stats_json(snap, filter_re, used), JSON)
    return Response(200, stats_text(snap, filter_re, used).encode())


def prometheus(ctx, req: Request) -> Response:
    filter_re, used = _filter(req), "usedonly" in req.query
    refresh_server_stats(ctx)
    snap = ctx.stats.snapshot(with_used=used)
    filter_re = _filtered(snap, filter_re)
    return Response(200, render_prometheus(snap, ctx.processes(), filter_re, used).encode(), PROMETHEUS)


def ready(ctx, req: Request) -> Response:
    return Response(200 if ctx.state == "LIVE" else 503, f"{ctx.state}\n".encode())


def server_info(ctx, req: Request) -> Response:
    return Response(200, dumps.server_info(ctx, time.time()), JSON)


def _host_stats(ctx):
    """Reader of the ``_host.<cluster>.<ip:port>.<stat>`` totals, from one snapshot."""
    snap = ctx.stats.snapshot()
    totals = {name: snap.totals[row] for name, _, row in snap.entries if name.startswith("_host.")}
    return lambda cluster, address, stat: totals.get(f"_host.{cluster}.{address}.{stat}", 0)


def clusters(ctx, req: Request) -> Response:
    status, host_stat = ctx.clusters_status(), _host_stats(ctx)
    if req.arg("format") == "json":
        return Response(200, dumps.clusters_json(status, host_stat), JSON)
    lines = []
    for cluster in status:
        name = cluster["name"]
        lines.append(f"{name}::observability_name::{name}")
        for priority, values in dumps.thresholds(cluster):
            lines.extend(f"{name}::{priority}_priority::{key}::{value}" for key, value in values.items())
        if cluster.get("outlier") is not None:  # Envoy prints these for a cluster with a detector
            sra, srt, lsra, lsrt = cluster["outlier"]
            lines += [f"{name}::outlier::success_rate_average::{_num(sra)}",
                      f"{name}::outlier::success_rate_ejection_threshold::{_num(srt)}",
                      f"{name}::outlier::local_origin_success_rate_average::{_num(lsra)}",
                      f"{name}::outlier::local_origin_success_rate_ejection_threshold::{_num(lsrt)}"]
        lines.append(f"{name}::added_via_api::{'true' if cluster.get('added_via_api') else 'false'}")
        for host in cluster.get("hosts", ()):
            prefix = f"{name}::{host['address']}::"
            lines.extend(f"{prefix}{stat}::{host_stat(name, host['address'], stat)}"
                         for stat in dumps.HOST_COUNTERS + dumps.HOST_GAUGES)
            lines += [f"{prefix}hostname::{host.get('hostname', '')}",
                      f"{prefix}health_flags::{host.get('health_flags', 'healthy')}",
                      f"{prefix}weight::{host.get('weight', 1)}",
                      f"{prefix}region::", f"{prefix}zone::", f"{prefix}sub_zone::",
                      f"{prefix}canary::false", f"{prefix}priority::0",
                      f"{prefix}success_rate::{_num(host.get('success_rate', -1))}",
                      f"{prefix}local_origin_success_rate::"
                      f"{_num(host.get('local_origin_success_rate', -1))}"]
    return Response(200, "".join(line + "\n" for line in lines).encode())


def _num(v) -> str:
    """A double as Envoy prints it in /clusters: -1, 100, 97.5."""
    return str(int(v)) if v == int(v) else "%g" % v


def listeners(ctx, req: Request) -> Response:
    status = ctx.listeners_status()
    if req.arg("format") == "json":
        return Response(200, dumps.listeners_json(status), JSON)
    return Response(200, "".join(f"{name}::{address}\n" for name, address in status).encode())


def config_dump(ctx, req: Request) -> Response:
    if ctx.bootstrap is None:
        return Response(200, b'{\n "configs": []\n}\n', JSON)
    dynamic = getattr(ctx, "dynamic", None)
    sections = dynamic.config_dump_sections(dumps.stamp) if dynamic is not None else None
    include_eds = req.arg("include_eds") is not None
    return Response(200, dumps.config_dump(ctx.bootstrap, ctx.epoch_start_time, sections,
                                           include_eds), JSON)


def runtime(ctx, req: Request) -> Response:
    """Envoy's /runtime: the layers, and per key each layer's value and the final one."""
    layers = ctx.runtime_layers() if hasattr(ctx, "runtime_layers") else []
    entries: dict = {}
    for i, (_name, values) in enumerate(layers):
        for key, value in values.items():
            e = entries.setdefault(key, {"layer_values": [""] * len(layers), "final_value": ""})
            e["layer_values"][i] = value.raw
            e["final_value"] = value.raw
    body = {"layers": [name for name, _ in layers], "entries": entries}
    return Response(200, json.dumps(body, indent=1, sort_keys=True).encode() + b"\n", JSON)


RUNTIME_MODIFY_USAGE = (b"usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
                        b"       or send the parameters as form values\n"
                        b"use an empty value to remove a previously added override")


def runtime_modify(ctx, req: Request) -> Response:
    """Envoy's POST /runtime_modify?k=v (or a form body): set keys in the admin layer, an
    empty value removing one; 503 without an admin layer."""
    changes = {k: v[-1] for k, v in req.query.items()}
    changes.update({k: v[-1] for k, v in req.form.items()})
    if not changes:
        return Response(400, RUNTIME_MODIFY_USAGE)
    modify = getattr(ctx, "runtime_modify", None)
    error = modify(changes) if modify is not None else "No admin layer specified"
    if error:
        return Response(503, error.encode())
    return Response(200, b"OK\n")


def reopen_logs(ctx, req: Request) -> Response:
    ctx.reopen_logs()
    return Response(200, b"OK\n")


def healthcheck_fail(ctx, req: Request) -> Response:
    ctx.set_healthcheck_failed(True)
    return ok()


def healthcheck_ok(ctx, req: Request) -> Response:
    ctx.set_healthcheck_failed(False)
    return ok()


def drain_listeners(ctx, req: Request) -> Response:
    ctx.drain_listeners("graceful" in req.query)
    return ok()


def quitquitquit(ctx, req: Request) -> Response:
    return Response(200, b"OK\n", headers=[("Connection", "close")], after=ctx.quit)


def reset_counters(ctx, req: Request) -> Response:
    ctx.stats.reset_counters()
    return ok()


def logging_level(ctx, req: Request) -> Response:
    level = req.arg("level")
    if level is None:
        current = get_level()  # the live level (POST /logging changes it), not the flag
        return Response(200, f"active loggers:\n  proxyd: {current}\n".encode())
    if level not in LOG_LEVELS or not ctx.set_log_level(level):
        raise BadRequest(f"unknown logger level {level!r}; one of: {', '.join(LOG_LEVELS)}")
    return Response(200, f"active loggers:\n  proxyd: {level}\n".encode())


def help_text(ctx=None, req=None) -> Response:
    lines = ["admin commands are:"]
    for path, endpoint in sorted(ENDPOINTS.items()):
        method = " (POST)" if endpoint.mutates else ""
        lines.append(f"  {path}{method}: {endpoint.help}")
    return Response(200, ("\n".join(lines) + "\n").encode())


class Endpoint(NamedTuple):
    handler: Callable
    mutates: bool
    help: str


ENDPOINTS = {
    "/": Endpoint(help_text, False, "this list"),
    "/help": Endpoint(help_text, False, "this list"),
    "/stats": Endpoint(stats, False, "server stats; ?format=json|prometheus, ?filter=REGEX, ?usedonly"),
    "/stats/prometheus": Endpoint(prometheus, False, "stats in Prometheus text 0.0.4; ?filter=REGEX, ?usedonly"),
    "/metrics": Endpoint(prometheus, False, "same as /stats/prometheus"),
    "/ready": Endpoint(ready, False, "200 LIVE when live, else 503 and the state"),
    "/server_info": Endpoint(server_info, False, "version, state, command line options, uptime, node"),
    "/clusters": Endpoint(clusters, False, "upstream clusters and hosts; ?format=json"),
    "/listeners": Endpoint(listeners, False, "listeners and their addresses; ?format=json"),
    "/config_dump": Endpoint(config_dump, False, "the running configuration (admin.v3.ConfigDump)"),
    "/healthcheck/fail": Endpoint(healthcheck_fail, True, "make inbound health checks fail"),
    "/healthcheck/ok": Endpoint(healthcheck_ok, True, "make inbound health checks pass again"),
    "/drain_listeners": Endpoint(drain_listeners, True, "drain all listeners; ?graceful"),
    "/quitquitquit": Endpoint(quitquitquit, True, "exit the server"),
    "/reset_counters": Endpoint(reset_counters, True, "reset all counters to zero"),
    "/logging": Endpoint(logging_level, True, "show or set the log level; ?level=debug"),
    "/runtime": Endpoint(runtime, False, "runtime layers and values (static, disk, RTDS, admin)"),
    "/runtime_modify": Endpoint(runtime_modify, True, "set runtime keys in the admin layer; "
                                                      "?key=value, an empty value removes"),
    "/reopen_logs": Endpoint(reopen_logs, True, "reopen access log files (like SIGUSR1)"),
}


def dispatch(ctx, req: Request) -> Response:
    endpoint = ENDPOINTS.get(req.path)
    if endpoint is None:
        body = help_text().body
        return Response(404, b"invalid path. " + body)
    if endpoint.mutates and req.method != "POST":
        return Response(405, b"Method not allowed: this endpoint changes state, use POST\n",
                        headers=[("Allow", "POST")])
    if not endpoint.mutates and req.method not in ("GET", "HEAD", "POST"):
        return Response(405, b"Method not allowed\n", headers=[("Allow", "GET, HEAD")])
    try:
        return endpoint.handler(ctx, req)
    except BadRequest as exc:
        return Response(400, f"{exc}\n".encode())

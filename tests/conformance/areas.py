"""The diff lines of each compared area for one conformance run, shared by the tests
(which assert them explained, differences.py) and the compatibility report."""
from __future__ import annotations

import json
import re
import subprocess

from compare import (default_line_view, dict_diff, format_line_view, json_shape, prometheus_diff,
                     response_diff, shape_diff, stats_diff)
from harness import Response
from scenario import HCM_CASES, CUSTOM_FORMAT, VOLATILE_FORMAT

JSON_ENDPOINTS = ("/clusters?format=json", "/listeners?format=json", "/server_info",
                  "/config_dump")


def responses(observed) -> list[str]:
    diffs = []
    for name, (e, p) in observed.exchanges.items():
        if p.response is None:
            diffs.append("%s: proxyd sent no response" % name)
            continue
        diffs += ["%s: %s" % (name, d)
                  for d in response_diff(e.response, p.response, e.case.echo)]
    return diffs


def _per_case(observed, file: str, view) -> list[str]:
    envoy, proxyd = observed.logs[file]
    diffs = []
    for i, case in enumerate(HCM_CASES):
        if i >= len(envoy):
            diffs.append("%s: envoy logged no line" % case.name)
        elif i >= len(proxyd):
            diffs.append("%s: proxyd logged no line" % case.name)
        else:
            diffs += dict_diff(case.name + ": ", view(envoy[i], case), view(proxyd[i], case))
    diffs += ["extra proxyd line: %s" % line for line in proxyd[len(HCM_CASES):]]
    return diffs


H2_CASES = [c for c in HCM_CASES if c.raw is None and not c.pause and len(repr(c.headers)) < 1000
         and c.name != "upstream_reset_503"]


def curl_h2(port: int, case) -> Response:
    cmd = ["curl", "-sS", "-i", "--http2-prior-knowledge", "--max-time", "10",
           "-X", case.method, "-H", "host: %s" % case.host]
    if case.method == "HEAD":
        cmd = [c for c in cmd if c not in ("-X", "HEAD")] + ["-I"]
    for k, v in case.headers:
        cmd += ["-H", "%s: %s" % (k, v)]
    if case.body is not None:
        cmd += ["--data-binary", "@-"]
    out = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (port, case.path)],
                         input=case.body or b"", capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ")[:2]
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])]
    return Response(int(status), "", version, headers, body)


def http2(observed) -> list[str]:
    """The plain scenario requests again, over h2c from curl, compared the same way."""
    diffs = []
    for case in H2_CASES:
        e, p = observed.pair.both(lambda s: curl_h2(s.ports["listener"], case))
        assert e.version == "HTTP/2" and e.status == case.status, (case.name, e)
        diffs += ["%s: %s" % (case.name, d) for d in response_diff(e, p, case.echo)]
    return diffs


def access_log(observed) -> list[str]:
    """The default format, field by field."""
    return _per_case(observed, "default.log", lambda line, c: default_line_view(line, c.echo))


def access_log_operators(observed) -> list[str]:
    """Every operator proxyd supports: values, or shapes for the volatile ones."""
    return (_per_case(observed, "custom.log", lambda line, c: format_line_view(line, CUSTOM_FORMAT))
            + _per_case(observed, "volatile.log",
                        lambda line, c: format_line_view(line, VOLATILE_FORMAT, volatile=True)))


def stats(observed) -> list[str]:
    return stats_diff(*observed.stats)


def prometheus(observed) -> list[str]:
    return prometheus_diff(*observed.stats, *observed.prometheus)


def admin_documents(observed) -> dict:
    """{path: (envoy's JSON, proxyd's JSON)} of the admin JSON endpoints."""
    out = {}
    for path in JSON_ENDPOINTS:
        e, p = observed.pair.both(lambda s: s.admin(path))
        assert e.status == p.status == 200, (path, e.status, p.status)
        assert p.header("content-type") == e.header("content-type"), path
        out[path] = (json.loads(e.body), json.loads(p.body))
    return out


def admin(documents: dict) -> list[str]:
    return ["%s %s" % (path, d) for path, (e, p) in documents.items()
            for d in shape_diff("", json_shape(e), json_shape(p))]


def config(verdicts: dict) -> list[str]:
    diffs = []
    for name, (envoy_ok, proxyd_ok, errors) in verdicts.items():
        if envoy_ok != proxyd_ok:
            diffs.append("%s: envoy %s, proxyd %s" % (name, "accepts" if envoy_ok else "refuses",
                                                      "accepts" if proxyd_ok else "refuses"))
        elif not proxyd_ok and not re.search(r"^\S+\.yaml:\d+:\d+: ", errors, re.M):
            diffs.append("%s: proxyd refuses without file:line: %r" % (name, errors[:200]))
    return diffs

"""docs/envoy-compat.md, rendered from one conformance run (the scenario through real
Envoy 1.40 and proxyd, and the config corpus) and from proxyd/config/supported.py.

Deterministic: names and verdicts only, sorted; no times, ports or pids. Written by
scripts/envoy_compat.py; tests/conformance/test_compat_report.py fails when the committed
file differs from what the current code renders.
"""
from __future__ import annotations

import re
from pathlib import Path

import areas
from compare import operators, prometheus_key, series_name, stats_view
from differences import KNOWN, known, matches
from scenario import CASES, CUSTOM_FORMAT, VOLATILE_FORMAT

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "docs" / "envoy-compat.md"

ENVOY_OPERATORS = """
START_TIME START_TIME_LOCAL EMIT_TIME EMIT_TIME_LOCAL REQUEST_HEADERS_BYTES BYTES_RECEIVED
BYTES_RETRANSMITTED PACKETS_RETRANSMITTED UPSTREAM_WIRE_BYTES_RECEIVED
UPSTREAM_HEADER_BYTES_RECEIVED DOWNSTREAM_WIRE_BYTES_RECEIVED DOWNSTREAM_HEADER_BYTES_RECEIVED
PROTOCOL UPSTREAM_PROTOCOL RESPONSE_CODE RESPONSE_CODE_DETAILS CONNECTION_TERMINATION_DETAILS
RESPONSE_HEADERS_BYTES RESPONSE_TRAILERS_BYTES BYTES_SENT UPSTREAM_WIRE_BYTES_SENT
UPSTREAM_HEADER_BYTES_SENT DOWNSTREAM_WIRE_BYTES_SENT DOWNSTREAM_HEADER_BYTES_SENT DURATION
REQUEST_DURATION REQUEST_TX_DURATION RESPONSE_DURATION RESPONSE_TX_DURATION
DOWNSTREAM_HANDSHAKE_DURATION ROUNDTRIP_DURATION RESPONSE_FLAGS RESPONSE_FLAGS_LONG
UPSTREAM_HOST UPSTREAM_HOST_NAME UPSTREAM_HOST_NAME_WITHOUT_PORT UPSTREAM_CLUSTER
UPSTREAM_CLUSTER_RAW UPSTREAM_LOCAL_ADDRESS UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT
UPSTREAM_LOCAL_PORT UPSTREAM_REMOTE_ADDRESS UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT
UPSTREAM_REMOTE_PORT UPSTREAM_REQUEST_ATTEMPT_COUNT UPSTREAM_TLS_CIPHER UPSTREAM_TLS_VERSION
UPSTREAM_TLS_SESSION_ID UPSTREAM_PEER_ISSUER UPSTREAM_PEER_CERT UPSTREAM_PEER_SUBJECT
UPSTREAM_PEER_URI_SAN UPSTREAM_PEER_DNS_SAN UPSTREAM_LOCAL_URI_SAN UPSTREAM_LOCAL_DNS_SAN
UPSTREAM_TRANSPORT_FAILURE_REASON UPSTREAM_CONNECTION_ID DOWNSTREAM_REMOTE_ADDRESS
DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT DOWNSTREAM_REMOTE_PORT DOWNSTREAM_DIRECT_REMOTE_ADDRESS
DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT DOWNSTREAM_DIRECT_REMOTE_PORT
DOWNSTREAM_LOCAL_ADDRESS DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT DOWNSTREAM_LOCAL_PORT
DOWNSTREAM_DIRECT_LOCAL_ADDRESS DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT
DOWNSTREAM_DIRECT_LOCAL_PORT DOWNSTREAM_TRANSPORT_FAILURE_REASON CONNECTION_ID STREAM_ID
GRPC_STATUS GRPC_STATUS_NUMBER REQ RESP TRAILER DYNAMIC_METADATA CLUSTER_METADATA
UPSTREAM_METADATA FILTER_STATE UPSTREAM_FILTER_STATE REQUESTED_SERVER_NAME ROUTE_NAME
VIRTUAL_CLUSTER_NAME DOWNSTREAM_PEER_URI_SAN DOWNSTREAM_PEER_DNS_SAN DOWNSTREAM_PEER_IP_SAN
DOWNSTREAM_LOCAL_URI_SAN DOWNSTREAM_LOCAL_DNS_SAN DOWNSTREAM_LOCAL_IP_SAN
DOWNSTREAM_PEER_SUBJECT DOWNSTREAM_LOCAL_SUBJECT DOWNSTREAM_TLS_SESSION_ID DOWNSTREAM_TLS_CIPHER
DOWNSTREAM_TLS_VERSION DOWNSTREAM_PEER_FINGERPRINT_256 DOWNSTREAM_PEER_FINGERPRINT_1
DOWNSTREAM_PEER_SERIAL DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256 DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1
DOWNSTREAM_PEER_CHAIN_SERIALS DOWNSTREAM_PEER_ISSUER DOWNSTREAM_PEER_CERT
DOWNSTREAM_PEER_CERT_V_START DOWNSTREAM_PEER_CERT_V_END HOSTNAME LOCAL_REPLY_BODY TRACE_ID
ENVIRONMENT UNIQUE_ID METADATA QUERY_PARAM PATH CUSTOM_FLAGS UPSTREAM_DETECTED_CLOSE_TYPE
DOWNSTREAM_DETECTED_CLOSE_TYPE COMMON_DURATION
""".split()
"""Access-log command operators of Envoy 1.40: each one was accepted by `envoy --mode
validate` (1.40.0) in a text format when this list was written (118 of them)."""


def envoy_response_flags() -> list[str]:
    """The response flags Envoy knows: the values ResponseFlagFilter.flags may take (its
    PGV `in` rule, in the data-plane-api protos proxyd loads configs into)."""
    from envoy.config.accesslog.v3 import accesslog_pb2
    from validate import validate_pb2
    field = accesslog_pb2.ResponseFlagFilter.DESCRIPTOR.fields_by_name["flags"]
    return list(getattr(field.GetOptions().Extensions[validate_pb2.rules].repeated.items.string,
                        "in"))


def proxyd_emitted_flags() -> set[str]:
    """Flags proxyd's request and connection paths set: quoted in its source outside the
    tables that only name them (formatter, access-log filter, config)."""
    found = set()
    names = envoy_response_flags()
    for path in (REPO / "proxyd").rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("proxyd/config/") or rel.endswith(("access_log/formatter.py",
                                                               "access_log/filters.py")):
            continue
        text = path.read_text()
        found.update(f for f in names if '"%s"' % f in text)
    return found


def proxyd_operators() -> set[str]:
    from proxyd.observability.access_log import formatter
    return set(formatter.OPERATORS)


# --- helpers ---------------------------------------------------------------------------
def _explainer(line: str, area: str) -> str | None:
    for d in known(area):
        if any(matches(line, p) for p in d.lines):
            return d.name
    return None


def _recorded_value_difference(name: str, area: str) -> bool:
    """A stat whose value a recorded difference says may differ (its pattern takes any
    value): counted as differing even in a run where the two values happen to agree, so
    that the report does not change with the scheduling of the run that wrote it."""
    return _explainer("%s: envoy 0, proxyd 1" % name, area) is not None


_GENERIC = ((re.compile(r"^cluster\.(upstream|refused|empty)\."), "cluster.<name>."),
            (re.compile(r"^http\.ingress_http\."), "http.<stat_prefix>."),
            (re.compile(r"^tcp\.tcp_in\."), "tcp.<stat_prefix>."),
            (re.compile(r"^listener\.127\.0\.0\.1_<[a-z]+>\.http\.ingress_http\."),
             "listener.<address>.http.<stat_prefix>."),
            (re.compile(r"^listener\.127\.0\.0\.1_<[a-z]+>\."), "listener.<address>."),
            (re.compile(r"^listener\.admin\.http\.admin\."), "listener.admin.http.admin."),
            (re.compile(r"_rq_\d{3}$"), "_rq_<code>"), (re.compile(r"_rq_\dxx$"), "_rq_<N>xx"))


def generic(stat: str) -> str:
    for rx, repl in _GENERIC:
        stat = rx.sub(repl, stat)
    return stat


def _root(generic_name: str) -> str:
    for root in ("cluster.<name>.", "http.<stat_prefix>.", "tcp.<stat_prefix>.",
                 "listener.<address>.", "listener.admin.",
                 "http.admin.", "http.async-client.", "server.", "cluster_manager.",
                 "listener_manager."):
        if generic_name.startswith(root):
            return root
    return generic_name.split(".", 1)[0] + "."


def _names(names, limit: int = 400) -> str:
    names = sorted(names)
    return ", ".join("`%s`" % n for n in names[:limit]) or "none"


# --- sections --------------------------------------------------------------------------
def _stats_section(observed) -> list[str]:
    envoy, proxyd = stats_view(observed.stats[0]), stats_view(observed.stats[1])
    status: dict = {}  # generic name -> "matches" | "differs" | "lacks"
    why: dict = {}
    rank = {"matches": 0, "differs": 1, "lacks": 2}
    diff_lines = {line.split(":", 1)[0]: line for line in areas.stats(observed)}
    for name in envoy:
        g = generic(name)
        line = diff_lines.get(name)
        if line is None and name in proxyd and _recorded_value_difference(name, "stats"):
            line = "%s: envoy %s, proxyd %s" % (name, envoy[name], proxyd[name])
        s = "matches" if line is None else "lacks" if line.endswith("proxyd lacks it") else "differs"
        if rank[s] >= rank.get(status.get(g), -1):
            status[g] = s
            if line is not None:
                why[g] = _explainer(line, "stats")
    extra = sorted({generic(n) for n in proxyd if n not in envoy})
    out = ["## Stats", "",
           "After the scenario's traffic, every counter and gauge Envoy 1.40 shows under the "
           "compared trees, by name (cluster, listener and prefix names generalised). "
           "*matches*: proxyd has it with Envoy's value (or, for process-dependent values "
           "such as uptime or memory, has it); *differs*: the value differs; *lacks*: proxyd "
           "does not have it.", "",
           "| Tree | Envoy names | matches | differs | lacks |", "|---|---|---|---|---|"]
    roots = sorted({_root(g) for g in status})
    for root in roots:
        names = [g for g in status if _root(g) == root]
        count = {k: sum(1 for g in names if status[g] == k) for k in rank}
        out.append("| `%s` | %d | %d | %d | %d |" % (root, len(names), count["matches"],
                                                     count["differs"], count["lacks"]))
    total = {k: sum(1 for g in status if status[g] == k) for k in rank}
    out.append("| **all** | **%d** | **%d** | **%d** | **%d** |" % (
        len(status), total["matches"], total["differs"], total["lacks"]))
    out += ["", "Matching names: " + _names(g for g in status if status[g] == "matches"), ""]
    for kind in ("differs", "lacks"):
        by: dict = {}
        for g in status:
            if status[g] == kind:
                by.setdefault(why.get(g) or "unrecorded", []).append(g)
        for reason in sorted(by):
            out.append("- %s (%s, %d): %s" % (kind, reason, len(by[reason]), _names(by[reason])))
    out += ["", "Names only proxyd has (%d): %s" % (len(extra), _names(extra)), ""]
    prom = areas.prometheus(observed)
    both = set(envoy) & set(proxyd)
    checked = len(both)
    shown = {line.split(":", 1)[0] for line in prom}
    prom += sorted("%s: envoy %s, proxyd %s" % (series_name(prometheus_key(n)), envoy[n], proxyd[n])
                   for n in both if series_name(prometheus_key(n)) not in shown
                   and _recorded_value_difference(series_name(prometheus_key(n)), "prometheus"))
    out += ["### Prometheus", "",
            "For each of the %d stats both have, the series Envoy's tag extraction makes of it "
            "(name, labels, TYPE) is in proxyd's `/stats/prometheus` with Envoy's value: "
            "%d match, %d differ (%s)." % (
                checked, checked - len(prom), len(prom),
                ", ".join(sorted({_explainer(x, "prometheus") or "unrecorded" for x in prom}))
                or "none"), ""]
    return out


def _flags_section(observed) -> list[str]:
    flags = envoy_response_flags()
    exercised = {c.flags for c in CASES if c.flags != "-"}
    log_diffs = areas.access_log(observed) + areas.access_log_operators(observed)
    broken = {c.flags for c in CASES for d in log_diffs
              if d.startswith(c.name + ":") and "RESPONSE_FLAGS" in d}
    emitted = proxyd_emitted_flags()
    rows = {"matches (exercised by the conformance run, logged as Envoy does)":
            sorted((exercised - broken) & set(flags), key=flags.index),
            "differs": sorted(broken, key=flags.index),
            "emitted by proxyd, not exercised by the conformance run":
            sorted(emitted - exercised, key=flags.index),
            "lacks (proxyd never sets it)": [f for f in flags if f not in emitted | exercised]}
    out = ["## Response flags", "",
           "Envoy's %d flags (the values `ResponseFlagFilter.flags` accepts)." % len(flags), "",
           "| | count | flags |", "|---|---|---|"]
    out += ["| %s | %d | %s |" % (k, len(v), " ".join("`%s`" % f for f in v) or "none")
            for k, v in rows.items()]
    return out + [""]


def _operators_section(observed) -> list[str]:
    ours = proxyd_operators()
    compared = {re.match(r"%([A-Z0-9_]+)", op).group(1)
                for op in operators(CUSTOM_FORMAT + VOLATILE_FORMAT)}
    diffs = areas.access_log_operators(observed)
    differing = {re.match(r"^[^:]+: %([A-Z0-9_]+)", d).group(1) for d in diffs
                 if re.match(r"^[^:]+: %([A-Z0-9_]+)", d)}
    envoy = set(ENVOY_OPERATORS)
    rows = {"matches (compared line by line with Envoy's)": sorted((compared & ours) - differing),
            "differs (recorded)": sorted(differing),
            "supported, not compared": sorted((ours & envoy) - compared),
            "lacks": sorted(envoy - ours),
            "proxyd only (Envoy refuses them)": sorted(ours - envoy)}
    out = ["## Access-log operators", "",
           "Envoy 1.40's %d command operators; the default format is compared field by field "
           "for every scenario request (%d differing fields)." % (
               len(envoy), len(areas.access_log(observed))), "",
           "| | count | operators |", "|---|---|---|"]
    out += ["| %s | %d | %s |" % (k, len(v), " ".join("`%s`" % o for o in v) or "none")
            for k, v in rows.items()]
    return out + [""]


def _responses_section(observed) -> list[str]:
    diffs = areas.responses(observed)
    bad = {d.split(":", 1)[0] for d in diffs}
    out = ["## Responses", "",
           "Each scenario request, sent to both, compared by status, headers (volatile values "
           "masked) and body: %d of %d the same." % (len(CASES) - len(bad), len(CASES)), "",
           "| request | Envoy's reply | flags | same |", "|---|---|---|---|"]
    out += ["| %s | %d | %s | %s |" % (c.name, c.status, c.flags,
                                       "yes" if c.name not in bad else "no")
            for c in CASES]
    h2 = areas.http2(observed)
    h2_bad = {d.split(":", 1)[0] for d in h2}
    out += ["", "Over HTTP/2 (h2c from curl), %d of the %d plain requests (%s) are the same." % (
        len(areas.H2_CASES) - len(h2_bad), len(areas.H2_CASES),
        ", ".join(c.name for c in areas.H2_CASES))]
    return out + [""]


def _admin_section(documents) -> list[str]:
    diffs = areas.admin(documents)
    out = ["## Admin", "", "`/ready` is compared as is; the JSON endpoints by keys and types.", "",
           "| endpoint | differences |", "|---|---|"]
    for path in documents:
        mine = [d for d in diffs if d.startswith(path + " ")]
        out.append("| `%s` | %s |" % (path, "; ".join(
            "%s (%s)" % (d[len(path) + 1:], _explainer(d, "admin") or "unrecorded")
            for d in mine) or "none"))
    return out + [""]


def _config_section(verdicts) -> list[str]:
    from proxyd.config import loader, supported
    total = implemented = descriptive = 0
    rows = []
    for name in sorted(supported.FIELDS):
        fields = {f.name for f in loader.find_descriptor(name).fields}
        ok = supported.FIELDS[name] & fields
        desc = supported.DESCRIPTIVE.get(name, frozenset()) & fields
        total += len(fields)
        implemented += len(ok - desc)
        descriptive += len(desc)
        rows.append("| `%s` | %d | %d | %s | %d: %s |" % (
            name, len(fields), len(ok - desc), " ".join("`%s`" % f for f in sorted(desc)) or "-",
            len(fields - ok), " ".join("`%s`" % f for f in sorted(fields - ok)) or "-"))
    diffs = areas.config(verdicts)
    good = sum(1 for n in verdicts if n.startswith("good/"))
    out = ["## Config", "",
           "`proxyd check` against `envoy --mode validate` over the corpus in "
           "`tests/conformance/configs`: %d good configs (Envoy accepts them), %d broken ones "
           "(Envoy refuses them); %d verdicts agree, %d differ%s." % (
               good, len(verdicts) - good, len(verdicts) - len(diffs), len(diffs),
               "".join(" (%s: %s)" % (d.split(":")[0], _explainer(d, "config") or "unrecorded")
                       for d in diffs)), "",
           "Fields of the messages proxyd reads (from `proxyd/config/supported.py`): "
           "%d fields, %d implemented, %d accepted as descriptive only, %d refused with a "
           "named error." % (total, implemented, descriptive, total - implemented - descriptive),
           "", "| message | fields | implemented | descriptive | refused (named error) |",
           "|---|---|---|---|---|"]
    return out + rows + [""]


def _differences_section() -> list[str]:
    out = ["## Recorded differences", "",
           "Each is named in `tests/conformance/differences.py`; the tests fail when one "
           "stops showing (fixed) or a new one appears.", "",
           "| name | area | what | why it is left |", "|---|---|---|---|"]
    for d in sorted(KNOWN, key=lambda d: d.name):
        area = d.area if isinstance(d.area, str) else ", ".join(d.area)
        out.append("| `%s` | %s | %s | %s |" % (d.name, area, d.what, d.reason))
    return out + [""]


def render(observed, verdicts, envoy_version: str) -> str:
    documents = areas.admin_documents(observed)
    lines = ["# proxyd and Envoy %s: compatibility report" % envoy_version, "",
             "Generated by `scripts/envoy_compat.py` from the conformance run "
             "(`tests/conformance`: one bootstrap served by real Envoy %s and by proxyd, the "
             "same requests through both) and `proxyd/config/supported.py`. Do not edit: "
             "`tests/conformance/test_compat_report.py` fails when this file is stale." % (
                 envoy_version), ""]
    lines += _responses_section(observed)
    lines += _flags_section(observed)
    lines += _operators_section(observed)
    lines += _stats_section(observed)
    lines += _admin_section(documents)
    lines += _config_section(verdicts)
    lines += _differences_section()
    return "\n".join(lines).rstrip() + "\n"

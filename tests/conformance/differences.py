"""Differences from Envoy 1.40 that the conformance run finds and that are left, each
named, with the reason and the diff lines it explains (fnmatch patterns).

`assert_explained(diffs, area)` fails on any diff line no recorded difference explains,
and on a recorded difference of that area that no longer shows (it was fixed: delete it
here, and the compatibility report moves it to "matches").
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Difference:
    name: str
    area: str | tuple  # responses, access_log, access_log_operators, stats, prometheus,
    #                    admin, config (a tuple when one cause shows in several)
    what: str
    reason: str
    lines: tuple[str, ...]


def lacks(*names: str) -> tuple[str, ...]:
    """Diff lines of stats Envoy shows and proxyd lacks (fnmatch patterns)."""
    return tuple("%s: envoy *, proxyd lacks it" % n for n in names)


KNOWN = (
    Difference(
        "redirect_logs_rewritten_path", "access_log_operators",
        "a redirect with prefix_rewrite: Envoy logs %REQ(:PATH)% as the rewritten path (it "
        "rewrites the request's :path while building the Location), proxyd logs the path "
        "the client sent",
        "an Envoy quirk: the client sent the original path, which is what the log is for",
        ("redirect_prefix: %REQ(:PATH)%: envoy '/new/page', proxyd '/old/page'",)),
    Difference(
        "config_dump_sections", "admin",
        "/config_dump: Envoy adds RoutesConfigDump (the inline route configs), empty "
        "ScopedRoutesConfigDump and SecretsConfigDump sections, and the node it runs as "
        "to the bootstrap dump; proxyd dumps the bootstrap as written, clusters and listeners",
        "the /config_dump builder is being changed under issue 11 (xDS listeners, order); "
        "these sections belong with that work",
        ("/config_dump configs.[@type=type.googleapis.com/envoy.admin.v3.BootstrapConfigDump]"
         ".bootstrap.node: envoy has it, proxyd lacks it",
         "/config_dump configs.[@type=type.googleapis.com/envoy.admin.v3.RoutesConfigDump]: "
         "envoy has it, proxyd lacks it",
         "/config_dump configs.[@type=type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump]: "
         "envoy has it, proxyd lacks it",
         "/config_dump configs.[@type=type.googleapis.com/envoy.admin.v3.SecretsConfigDump]: "
         "envoy has it, proxyd lacks it")),
    Difference(
        "load_balancer_features", "stats",
        "stats of load-balancer features proxyd does not implement: subsets, "
        "the max_host_weight gauge",
        "not implemented: no subset load balancer",
        lacks("cluster.*.lb_subsets_*", "cluster.*.max_host_weight",
              "cluster.*.default.total_match_count")),
    Difference(
        "circuit_breaker_and_retry_stats", "stats",
        "circuit-breaker gauges, pending-request, overflow, retry and per-try stats",
        "circuit breakers, pending queues and retries are the upstream pool helper's work "
        "(not in proxyd yet)",
        lacks("cluster.*.circuit_breakers.*", "cluster.*.upstream_rq_pending_*",
              "cluster.*.upstream_cx_overflow", "cluster.*.upstream_cx_pool_overflow",
              "cluster.*.upstream_rq_active_overflow",
              # retries are implemented except rate-limited back-off and per_try_idle_timeout
              "cluster.*.upstream_rq_retry_backoff_ratelimited",
              "cluster.*.upstream_rq_per_try_idle_timeout")),
    Difference(
        "upstream_connection_accounting", ("stats", "prometheus"),
        "connection-pool accounting: Envoy counts a refused connect as a remote destroy "
        "and not in upstream_rq_total (the request never left its pending queue), closes "
        "timed-out HTTP/1 upstream connections without counting upstream_rq_tx_reset, counts "
        "an upstream that closes before answering as a destroy with an active request (not "
        "upstream_rq_rx_reset), and has per-protocol and with-active-request destroy "
        "counters proxyd lacks",
        "the upstream pool is being reworked by the upstream pool helper; its counters "
        "follow that work",
        lacks("cluster.*.upstream_cx_destroy", "cluster.*.upstream_cx_destroy_*_with_active_rq",
              "cluster.*.upstream_cx_destroy_with_active_rq", "cluster.*.upstream_cx_http?_total",
              "cluster.*.upstream_cx_close_notify",
              "cluster.*.upstream_cx_connect_with_0_rtt", "cluster.*.upstream_cx_preconnect_skipped",
              "cluster.*.upstream_cx_protocol_error", "cluster.*.upstream_rq_cancelled",
              "cluster.*.upstream_rq_rx_reset_no_error",
              "cluster.*.upstream_rq_0rtt", "cluster.*.upstream_http3_broken",
              "cluster.*.upstream_queue_overloaded", "cluster.*.upstream_rq_maintenance_mode",
              "cluster.*.bind_errors") + tuple(
            p for stat in ("upstream_cx_destroy_local", "upstream_cx_destroy_remote",
                           "upstream_rq_total", "upstream_rq_tx_reset", "upstream_rq_rx_reset",
                           "upstream_rq_pending_total")
            for p in ("cluster.*.%s: envoy *, proxyd *" % stat,
                      "envoy_cluster_%s{*}: envoy *, proxyd *" % stat))),
    Difference(
        "flow_control_buffers", "stats",
        "buffered-bytes gauges and flow-control counters",
        "proxyd writes through gevent sockets and keeps no watermark buffers to report",
        lacks("*_bytes_buffered", "*flow_control*")),
    Difference(
        "cluster_updates", "stats",
        "cluster update/assignment stats and the cluster_manager. tree",
        "not implemented: proxyd's master applies cluster updates but does not count them",
        lacks("cluster.*.assignment_*", "cluster.*.update_*", "cluster.*.version",
              "cluster.*.warming_state", "cluster.*.membership_degraded",
              "cluster.*.membership_excluded", "cluster_manager.*")),
    Difference(
        "internal_external_split", "stats",
        "cluster.<name>.external.upstream_rq_* (requests from external clients, by code)",
        "not implemented: proxyd has no internal/external request classification yet",
        lacks("cluster.*.external.*")),
    Difference(
        "upstream_codec_stats", "stats", "cluster.<name>.http1.* codec counters",
        "not implemented", lacks("cluster.*.http1.*")),
    Difference(
        "internal_redirects", "stats", "internal-redirect counters",
        "internal redirects are not implemented", lacks("*internal_redirect*")),
    Difference(
        "hcm_features", "stats",
        "HCM stats of features proxyd lacks: HTTP/3, TLS connection counts, "
        "overload manager, path normalisation, header timeout, IP "
        "detection, premature resets, rs_too_large",
        "not implemented (TLS counts belong to their feature's work)",
        lacks("http.ingress_http.downstream_cx_delayed_close_timeout", "http.ingress_http.*_active_rq",
              "http.ingress_http.*soft_drain", "http.ingress_http.*http3*",
              "http.ingress_http.*overload*", "http.ingress_http.*ssl*",
              "http.ingress_http.*path_normalization", "http.ingress_http.*header_timeout",
              "http.ingress_http.*non_relative_path", "http.ingress_http.*normalized_path",
              "http.ingress_http.*ip_detection", "http.ingress_http.*premature_resets",
              "http.ingress_http.rs_too_large",
              "http.ingress_http.rq_reset_after_downstream_response_started")),
    Difference(
        "delayed_close", ("stats", "prometheus"),
        "after a reply that closes the connection (400, 431, 408) Envoy half-closes and waits "
        "for the client's FIN (delayed_close_timeout), so the client's close is counted "
        "(destroy_remote); proxyd closes at once (destroy_local)",
        "delayed close is not implemented; the reply the client reads is the same",
        ("http.ingress_http.downstream_cx_destroy_local: envoy *, proxyd *",
         "http.ingress_http.downstream_cx_destroy_remote: envoy *, proxyd *",
         "envoy_http_downstream_cx_destroy_local{*}: envoy *, proxyd *",
         "envoy_http_downstream_cx_destroy_remote{*}: envoy *, proxyd *")),
    Difference(
        "tcp_proxy_details", "stats",
        "tcp_proxy counters of features proxyd's tcp_proxy lacks: drain and overload closes, "
        "max connection duration, early data, delayed routing",
        "not implemented (the network filters' work)",
        lacks("tcp.*.downstream_cx_drain_close", "tcp.*.downstream_cx_overload_close",
              "tcp.*.early_data_received_count_total", "tcp.*.max_downstream_connection_duration",
              "tcp.*.route_delayed_total")),
    Difference(
        "admin_is_not_an_hcm", "stats",
        "Envoy's admin and async client are HTTP connection managers with their own "
        "http.admin., listener.admin. and http.async-client. stats",
        "proxyd's admin is a small server in the master, not a listener",
        lacks("http.admin.*", "listener.admin.*", "http.async-client.*")),
    Difference(
        "listener_details", "stats",
        "per-listener HCM codes (listener.<addr>.http.<prefix>.downstream_rq_*), per-worker "
        "listener stats, overflow/overload/listener-filter/pre-connection counters and the "
        "listener_manager. tree",
        "not implemented",
        lacks("listener.*.http.*", "listener.*.worker_*", "listener.*.downstream_cx_overflow",
              "listener.*.downstream_cx_overload_reject",
              "listener.*.downstream_cx_transport_socket_connect_timeout",
              "listener.*.downstream_global_cx_overflow", "listener.*.downstream_listener_filter_*",
              "listener.*.downstream_pre_cx_*", "listener.*extension_config_missing",
              "listener_manager.*")),
    Difference(
        "server_details", "stats",
        "server. gauges and counters of Envoy internals (watchdogs, heap, FIPS, OCSP and "
        "certificate expiry, unknown-field counts, envoy_bug/notifications, parent_connections)",
        "Envoy internals without a proxyd counterpart, or not implemented yet",
        lacks("server.compilation_settings.*", "server.days_until_first_cert_expiring",
              "server.debug_assertion_failures", "server.dropped_stat_flushes",
              "server.*_unknown_fields", "server.envoy_*", "server.*watchdog*",
              "server.memory_heap_size", "server.memory_physical_size", "server.parent_connections",
              "server.seconds_until_first_ocsp_response_expiring", "server.stats_recent_lookups",
              "server.version", "server.wip_protos")),
)


def matches(line: str, pattern: str) -> bool:
    """fnmatch with `*` and `?` only: a `[` in a pattern is literal."""
    return fnmatchcase(line, pattern.replace("[", "[[]"))


def known(area: str) -> list[Difference]:
    return [d for d in KNOWN if area in ((d.area,) if isinstance(d.area, str) else d.area)]


def explain(diffs: list[str], area: str) -> tuple[list[str], list[Difference]]:
    """(diff lines no recorded difference of `area` explains, recorded differences of
    `area` that explain none of `diffs`)."""
    recorded = known(area)
    unexplained = [x for x in diffs if not any(matches(x, p) for d in recorded for p in d.lines)]
    unseen = [d for d in recorded if not any(matches(x, p) for x in diffs for p in d.lines)]
    return unexplained, unseen


def assert_explained(diffs: list[str], area: str) -> None:
    unexplained, unseen = explain(diffs, area)
    msg = []
    if unexplained:
        msg.append("differences from Envoy 1.40 nobody recorded:\n  " + "\n  ".join(unexplained))
    if unseen:
        msg.append("recorded differences that no longer show (fixed? delete them from "
                   "differences.py):\n  " + "\n  ".join("%s: %s" % (d.name, d.what) for d in unseen))
    assert not msg, "\n".join(msg)

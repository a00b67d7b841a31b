"""Load-time checks: a bad format or filter is reported at its path, before any worker runs."""
from __future__ import annotations

from envoy.config.trace.v3 import zipkin_pb2  # noqa: F401  (registers ZipkinConfig for Any)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2)
from google.protobuf import json_format

from proxyd.observability.config_check import check_access_logs, check_tracing

from .test_sinks import to_access_log_list

FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def test_good_access_logs_have_no_errors():
    assert check_access_logs(to_access_log_list([
        {"typed_config": {"@type": FILE, "path": "/nonexistent/dir/is/not/opened.log",
                          "log_format": {"text_format_source": {"inline_string": "%PROTOCOL%"}}}},
    ]), ("access_log",)) == []


def test_format_and_filter_errors_are_located():
    errors = check_access_logs(to_access_log_list([
        {"typed_config": {"@type": FILE, "path": "/tmp/x",
                          "log_format": {"text_format_source": {"inline_string": "%FOO%"}}}},
        {"typed_config": {"@type": FILE, "path": "/tmp/x", "format": "100% done"}},
        {"filter": {"grpc_status_filter": {}},
         "typed_config": {"@type": FILE, "path": "/tmp/x",
                          "log_format": {"json_format": {"a": "%BAR(x)%"}}}},
    ]), ("access_log",))
    assert errors == [
        (("access_log", 0, "typed_config", "log_format", "text_format_source", "inline_string"),
         "unknown access log command operator %FOO%"),
        (("access_log", 1, "typed_config", "format"),
         "invalid access log format: no valid command operator at position 3 in '100% done'"),
        (("access_log", 2, "filter"), "filter.grpc_status_filter: access log filter not supported"),
        (("access_log", 2, "typed_config", "log_format", "json_format"),
         "unknown access log command operator %BAR%"),
    ]


def test_tracing_checks():
    t = json_format.ParseDict({"provider": {"name": "envoy.tracers.zipkin", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
        "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
        "collector_endpoint_version": "GRPC"}}}, hcm_pb2.HttpConnectionManager.Tracing())
    assert check_tracing(t, ("tracing",), {"backend"}) == [
        (("tracing", "provider", "typed_config", "collector_endpoint_version"),
         "only HTTP_JSON is supported by proxyd"),
        (("tracing", "provider", "typed_config", "collector_cluster"),
         "unknown collector cluster 'zipkin'"),
    ]
    assert check_tracing(hcm_pb2.HttpConnectionManager.Tracing(), ("tracing",)) == []

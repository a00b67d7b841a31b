"""envoy.filters.http.header_to_metadata over HTTP/2 and HTTP/1.1 (curl): request and
response headers become dynamic metadata (seen in the access log), removed headers do
not reach the upstream or the client."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness import Proxyd, bootstrap, cluster, free_port, hcm, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

H2M = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def test_metadata_from_headers_over_http2_and_curl(upstream, tmp_path):
    log = tmp_path / "access.log"
    h = hcm(stat_prefix="h2m", access_log=[{"name": "f", "typed_config": {
        "@type": LOG, "path": str(log), "log_format": {"text_format_source": {
            "inline_string": "%PROTOCOL% %DYNAMIC_METADATA(app:tenant)% "
                             "%DYNAMIC_METADATA(app:served_by)%\n"}}}}])
    h["http_filters"].insert(0, {"name": "envoy.filters.http.header_to_metadata",
                                 "typed_config": {"@type": H2M, "request_rules": [
                                     {"header": "x-tenant", "remove": True,
                                      "on_header_present": {"metadata_namespace": "app",
                                                            "key": "tenant"}}],
                                     "response_rules": [
                                     {"header": "x-served-by", "remove": True,
                                      "on_header_present": {"metadata_namespace": "app",
                                                            "key": "served_by"}}]}})
    port = free_port()
    lst = {"name": "h2m", "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
           "filter_chains": [{"filters": [{
               "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}
    cfg = bootstrap([lst], [cluster("upstream", [("127.0.0.1", upstream.port)])], free_port())
    with Proxyd(write_config(tmp_path, cfg)).start():
        with H2Client(port) as c:
            r = c.get("/echo?hdr=x-served-by:b1", [("x-tenant", "acme")])
            assert "x-tenant" not in dict(json.loads(bytes(r.body))["headers"])
            assert r.header("x-served-by") is None
        out = subprocess.run(["curl", "-s", "-H", "x-tenant: globex",
                              "http://127.0.0.1:%d/echo?hdr=x-served-by:b2" % port],
                             capture_output=True, timeout=10)
        assert "x-tenant" not in dict(json.loads(out.stdout)["headers"])
        deadline = time.monotonic() + 10
        while len(log.read_text().splitlines() if log.exists() else []) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert log.read_text().splitlines() == ["HTTP/2 acme b1", "HTTP/1.1 globex b2"]

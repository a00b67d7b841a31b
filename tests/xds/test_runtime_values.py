"""The layered runtime reaches the workers: a static layer and RTDS updates change what an
access log's runtime_filter samples and what a comparison filter's RuntimeUInt32 compares
with, through real proxyd processes; `/runtime` and the runtime.* stats with a static
layer only (no xDS at all)."""
from __future__ import annotations

import json
import time

import pytest

import harness as H
from proxyd.xds import resources as R
from test_rest import stats
from test_rtds import runtime
from test_xds_e2e import wait
from xds_server import XdsServer

pytestmark = pytest.mark.timeout(90)

FILE_AL = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
ROUTES = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]


def file_log(path, flt=None) -> dict:
    al = {"name": "envoy.access_loggers.file",
          "typed_config": {"@type": FILE_AL, "path": str(path),
                           "log_format": {"text_format_source": {"inline_string": "%REQ(:PATH)%\n"}}}}
    if flt is not None:
        al["filter"] = flt
    return al


def sampled(key: str, default: int) -> dict:
    return {"runtime_filter": {"runtime_key": key,
                               "percent_sampled": {"numerator": default, "denominator": "HUNDRED"}}}


def lines(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def send(port: int, tag: str, n: int = 20) -> None:
    """n requests, each on its own connection (so both workers serve some)."""
    for i in range(n):
        assert H.http(port, path="/%s/%d" % (tag, i), timeout=5).status == 200


def logged(marker, path, tag: str, n: int = 20) -> int:
    """How many of the n `tag` requests `path` logged, once the unfiltered `marker` log
    has all n and a flush interval (1 s) more has passed."""
    wait(lambda: sum(line.startswith("/%s/" % tag) for line in lines(marker)) >= n,
         what="%d %s lines in the marker log" % (n, tag))
    time.sleep(1.3)
    return sum(line.startswith("/%s/" % tag) for line in lines(path))


def get_runtime(admin_port: int) -> dict:
    r = H.http(admin_port, path="/runtime", timeout=5)
    assert r.status == 200
    return json.loads(r.body)


def test_static_layer_and_rtds_updates_drive_the_runtime_filter(tmp_path):
    server = XdsServer().start()
    admin, port = H.free_port(), H.free_port()
    marker, log = tmp_path / "all.log", tmp_path / "sampled.log"
    api = {"api_type": "AGGREGATED_GRPC", "transport_api_version": "V3",
           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}
    bs = H.bootstrap([H.listener(port, routes=ROUTES,
                                 access_log=[file_log(marker), file_log(log, sampled("al.sample", 100))])],
                     [dict(H.cluster("xds", [("127.0.0.1", server.port)]), http2_protocol_options={})],
                     admin)
    bs["layered_runtime"] = {"layers": [
        {"name": "base", "static_layer": {"al": {"sample": 0}}},
        {"name": "rt0", "rtds_layer": {"name": "rt0", "rtds_config": {"ads": {}, "resource_api_version": "V3"}}}]}
    bs["dynamic_resources"] = {"ads_config": api}
    proxy = H.Proxyd(H.write_config(tmp_path, bs), concurrency=2)
    try:
        server.set(R.RUNTIME, "1", [runtime("rt0", {"other": 1})])
        proxy.start(wait=False)
        proxy.wait_live(timeout=20)
        # The static layer's 0 overrides the filter's default of 100%.
        send(port, "static0")
        assert logged(marker, log, "static0") == 0

        # RTDS (a later layer) overrides the static value: every request is sampled.
        server.set(R.RUNTIME, "2", [runtime("rt0", {"al.sample": 100})])
        wait(lambda: get_runtime(admin)["entries"]["al.sample"]["final_value"] == "100", what="RTDS v2")
        time.sleep(0.3)
        send(port, "rtds100")
        assert logged(marker, log, "rtds100") == 20

        # The RTDS layer drops the key: the static 0 applies again.
        server.set(R.RUNTIME, "3", [runtime("rt0", {})])
        wait(lambda: get_runtime(admin)["entries"]["al.sample"]["final_value"] == "0", what="RTDS v3")
        time.sleep(0.3)
        send(port, "back0")
        assert logged(marker, log, "back0") == 0
        assert stats(proxy)["runtime.load_success"] == 4   # start-up and 3 updates
    finally:
        proxy.cleanup()
        server.stop()


def test_static_only_runtime(tmp_path):
    admin, port = H.free_port(), H.free_port()
    marker, quiet, loud, ok = (tmp_path / n for n in ("all.log", "quiet.log", "loud.log", "ok.log"))
    status_ge = {"status_code_filter": {"comparison": {"op": "GE", "value": {
        "default_value": 500, "runtime_key": "al.min_status"}}}}
    bs = H.bootstrap([H.listener(port, routes=ROUTES, access_log=[
        file_log(marker), file_log(quiet, sampled("al.quiet", 100)),
        file_log(loud, sampled("al.loud", 0)), file_log(ok, status_ge)])], [], admin)
    bs["layered_runtime"] = {"layers": [
        {"name": "base", "static_layer": {"al": {"quiet": 0, "loud": 5, "min_status": 200}}},
        {"name": "over", "static_layer": {"al.loud": "100"}}]}
    with H.Proxyd(H.write_config(tmp_path, bs), concurrency=2) as proxy:
        rt = get_runtime(admin)
        assert rt["layers"] == ["base", "over"]
        assert rt["entries"]["al.loud"] == {"layer_values": ["5", "100"], "final_value": "100"}
        assert rt["entries"]["al.quiet"] == {"layer_values": ["0", ""], "final_value": "0"}
        st = stats(proxy)
        assert st["runtime.num_layers"] == 2 and st["runtime.num_keys"] == 3
        assert st["runtime.load_success"] == 1 and st["runtime.load_error"] == 0
        send(port, "s")
        assert logged(marker, quiet, "s") == 0
        assert sum(line.startswith("/s/") for line in lines(loud)) == 20
        assert sum(line.startswith("/s/") for line in lines(ok)) == 20   # 200 >= runtime 200

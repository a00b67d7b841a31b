"""The /stats/prometheus text, judged by prometheus_client's parser and promtool."""

import os
import re
import shutil
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxyd.stats import StatsStore
from proxyd.stats.prometheus import render
from proxyd.stats.render import stats_json, stats_text
from proxyd.stats.tags import extract_tags

import orjson


@pytest.mark.parametrize("name, extracted, tags", [
    ("cluster.web.upstream_rq_200", "cluster.upstream_rq",
     [("envoy.response_code", "200"), ("envoy.cluster_name", "web")]),
    ("http.ingress_http.downstream_rq_2xx", "http.downstream_rq_xx",
     [("envoy.response_code_class", "2"), ("envoy.http_conn_manager_prefix", "ingress_http")]),
    ("cluster.service1.upstream_cx_active", "cluster.upstream_cx_active", [("envoy.cluster_name", "service1")]),
    ("server.live", "server.live", []),
    ("listener.0.0.0.0_10000.downstream_cx_total", "listener.downstream_cx_total",
     [("envoy.listener_address", "0.0.0.0_10000")]),
    ("listener.admin.downstream_cx_total", "listener.admin.downstream_cx_total", []),
    ("listener.0.0.0.0_80.http.ingress.downstream_rq_5xx", "listener.http.downstream_rq_xx",
     [("envoy.response_code_class", "5"), ("envoy.http_conn_manager_prefix", "ingress"),
      ("envoy.listener_address", "0.0.0.0_80")]),
    ("tcp.db.downstream_cx_total", "tcp.downstream_cx_total", [("envoy.tcp_prefix", "db")]),
])
def test_envoy_default_tag_extraction(name, extracted, tags):
    assert extract_tags(name) == (extracted, tags)


def populated(path):
    store = StatsStore.create(path)
    store.bind(store.claim_slot(os.getpid(), "master"))
    for cluster in ("web", "api"):
        store.counter(f"cluster.{cluster}.upstream_rq_total").inc(10)
        store.counter(f"cluster.{cluster}.upstream_rq_200").inc(9)
        store.counter(f"cluster.{cluster}.upstream_rq_503").inc(1)
        store.counter(f"cluster.{cluster}.upstream_rq_2xx").inc(9)
        store.gauge(f"cluster.{cluster}.upstream_cx_active").set(2)
        hist = store.histogram(f"cluster.{cluster}.upstream_rq_time")
        for ms in (0.3, 4, 4, 700):
            hist.record(ms)
    store.counter("http.ingress.downstream_rq_2xx").inc(18)
    store.gauge("server.live").set(1)
    store.counter('odd"name\\with.chars').inc()
    store.counter("_host.web.10.0.0.1:80.rq_total").inc(5)
    store.histogram("cluster.web.upstream_cx_connect_ms")
    return store


def families(text):
    """Family name -> family. The parser strips ``_total`` from counter family names, so Envoy's
    ``envoy_cluster_upstream_rq_total`` lands under ``envoy_cluster_upstream_rq`` too: merge."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name in out:
            assert out[family.name].type == family.type
            out[family.name].samples.extend(family.samples)
        else:
            out[family.name] = family
    return out


def samples_named(fams, sample_name, **has_labels):
    """Samples of one metric. The parser renames counter samples ``x`` to ``x_total``, which
    folds Envoy's ``upstream_rq{code}`` into ``upstream_rq_total``: tell them apart by labels."""
    return [s for f in fams.values() for s in f.samples
            if s.name in (sample_name, sample_name + "_total")
            and all((label in s.labels) == wanted for label, wanted in has_labels.items())]


def test_prometheus_text_parses_with_envoy_names_and_labels(stats_path):
    store = populated(stats_path)
    text = render(store.snapshot(), [("master", os.getpid())])
    fams = families(text)
    rq = fams["envoy_cluster_upstream_rq"]
    assert rq.type == "counter"
    by_code = {(s.labels["envoy_cluster_name"], s.labels["envoy_response_code"]): s.value
               for s in samples_named(fams, "envoy_cluster_upstream_rq", envoy_response_code=True)}
    assert by_code == {("web", "200"): 9, ("web", "503"): 1, ("api", "200"): 9, ("api", "503"): 1}
    assert 'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="web"} 9\n' in text
    totals = samples_named(fams, "envoy_cluster_upstream_rq", envoy_response_code=False)
    assert {s.labels["envoy_cluster_name"]: s.value for s in totals} == {"web": 10, "api": 10}
    assert all(set(s.labels) == {"envoy_cluster_name"} for s in totals)
    xx = fams["envoy_cluster_upstream_rq_xx"].samples
    assert {(s.labels["envoy_cluster_name"], s.labels["envoy_response_code_class"]) for s in xx} == {
        ("web", "2"), ("api", "2")}
    assert fams["envoy_cluster_upstream_cx_active"].type == "gauge"
    assert fams["envoy_server_live"].samples[0].value == 1 and fams["envoy_server_live"].samples[0].labels == {}
    hist = fams["envoy_cluster_upstream_rq_time"]
    assert hist.type == "histogram"
    web = [s for s in hist.samples if s.labels["envoy_cluster_name"] == "web"]
    by_name = {(s.name, s.labels.get("le")): s.value for s in web}
    assert by_name[("envoy_cluster_upstream_rq_time_bucket", "0.5")] == 1
    assert by_name[("envoy_cluster_upstream_rq_time_bucket", "5")] == 3
    assert by_name[("envoy_cluster_upstream_rq_time_bucket", "1000")] == 4
    assert by_name[("envoy_cluster_upstream_rq_time_bucket", "3600000")] == 4
    assert by_name[("envoy_cluster_upstream_rq_time_bucket", "+Inf")] == 4
    assert by_name[("envoy_cluster_upstream_rq_time_count", None)] == 4
    assert by_name[("envoy_cluster_upstream_rq_time_sum", None)] == pytest.approx(708.3)
    assert "envoy_odd_name_with_chars" in fams
    assert not any("_host" in name for name in fams)
    cpu = fams["proxyd_process_cpu_seconds"]  # the parser strips _total from the family name
    assert cpu.type == "counter" and cpu.samples[0].labels == {"process": "master", "pid": str(os.getpid())}
    assert fams["proxyd_process_resident_memory_bytes"].samples[0].value > 1e6
    assert fams["proxyd_process_open_fds"].samples[0].value >= 3
    assert text.count("# TYPE envoy_cluster_upstream_rq counter\n") == 1


def test_filter_and_usedonly(stats_path):
    store = populated(stats_path)
    text = render(store.snapshot(with_used=True), (), re.compile(r"^cluster\.web\."), used_only=True)
    fams = families(text)
    assert "envoy_cluster_upstream_rq_time" in fams
    assert "envoy_cluster_upstream_cx_connect_ms" not in fams  # never recorded
    assert all(s.labels.get("envoy_cluster_name") == "web" for f in fams.values() for s in f.samples)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_exposition(stats_path):
    store = populated(stats_path)
    text = render(store.snapshot(), [("master", os.getpid())])
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # Envoy's own names carry no HELP, no _total on counters and units like _ms: lint only.
    style = re.compile(r' (no help text|counter metrics should have "_total" suffix'
                       r'|metric names should not contain abbreviated units)$')
    assert result.returncode in (0, 3), problems
    assert [p for p in problems if not style.search(p)] == []


def test_stats_text_and_json_shapes(stats_path):
    store = populated(stats_path)
    text = stats_text(store.snapshot())
    lines = text.splitlines()
    assert "cluster.web.upstream_rq_200: 9" in lines
    assert "cluster.web.upstream_cx_connect_ms: No recorded values" in lines
    hist_line = next(line for line in lines if line.startswith("cluster.web.upstream_rq_time: "))
    assert hist_line.split(": ", 1)[1].startswith("P0(nan,") and " P99.9(nan," in hist_line
    scalars = [line.split(":")[0] for line in lines if "P0(" not in line and "No recorded" not in line]
    assert scalars == sorted(scalars)
    assert not any(line.startswith("_host") for line in lines)
    doc = orjson.loads(stats_json(store.snapshot()))
    assert {"name": "cluster.api.upstream_rq_total", "value": 10} in doc["stats"]
    hists = doc["stats"][-1]["histograms"]
    assert hists["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    web = next(q for q in hists["computed_quantiles"] if q["name"] == "cluster.web.upstream_rq_time")
    assert len(web["values"]) == 10 and web["values"][0]["interval"] is None


def test_scrape_of_10000_series_across_4_slots_is_under_50ms(stats_path):
    store = StatsStore.create(stats_path)
    writers = [StatsStore.attach(stats_path) for _ in range(4)]
    for i, writer in enumerate(writers):
        writer.bind(writer.claim_slot(os.getpid(), f"worker_{i}"))
    series = 0
    c = 0
    while series < 10000:
        name = f"cluster.c{c}"
        for writer in writers:
            writer.counter(f"{name}.upstream_rq_total").inc()
            writer.counter(f"{name}.upstream_rq_200").inc()
            writer.counter(f"{name}.upstream_rq_2xx").inc()
            writer.gauge(f"{name}.upstream_cx_active").inc()
        series += 4
        if c % 40 == 0:
            for writer in writers:
                writer.histogram(f"{name}.upstream_rq_time").record(3)
            series += 22
        c += 1
    render(store.snapshot(), ())  # first scrape also fills the tag cache
    best = min(_timed(lambda: render(store.snapshot(), ())) for _ in range(5))
    assert best < 0.050, f"scrape took {best * 1000:.1f} ms"
    assert len(samples_named(families(render(store.snapshot(), ())), "envoy_cluster_upstream_rq",
                               envoy_response_code=True)) == c


def _timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started

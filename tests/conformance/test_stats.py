"""Stats after the same traffic: every counter and gauge Envoy 1.40 shows under
cluster.<name>., http.<prefix>., listener., server. (and the managers) is in proxyd
with the same value where the value follows from the traffic; Prometheus names, labels,
types and values of /stats/prometheus match for the stats both have."""
from __future__ import annotations

import areas
from compare import stats_view
from differences import assert_explained


def test_the_traffic_shows_in_envoys_stats(observed):
    """The scenario moved the counters it is there to compare."""
    envoy = stats_view(observed.stats[0])
    assert envoy["http.ingress_http.downstream_rq_total"] == 26
    assert envoy["tcp.tcp_in.downstream_cx_total"] == 1
    assert envoy["cluster.upstream.upstream_rq_200"] == 6
    assert envoy["cluster.refused.upstream_cx_connect_fail"] == 2
    assert envoy["http.ingress_http.no_route"] == 2


def test_stats_match_envoy(observed):
    assert_explained(areas.stats(observed), "stats")


def test_prometheus_series_match_envoy(observed):
    assert_explained(areas.prometheus(observed), "prometheus")

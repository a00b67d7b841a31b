"""Shared helpers: a dict-backed stats store and a fully populated StreamInfo."""
from __future__ import annotations

import pytest

from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead, ResponseHead, StreamInfo


class FakeStat:
    def __init__(self):
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def dec(self, n: int = 1) -> None:
        self.value -= n

    def set(self, v) -> None:
        self.value = v


class FakeStats:
    """Just enough of StatsStore (counter/gauge by name) to read values back."""

    def __init__(self):
        self.stats: dict[str, FakeStat] = {}

    def counter(self, name):
        return self.stats.setdefault(name, FakeStat())

    gauge = counter

    def __getitem__(self, name) -> int:
        return self.stats[name].value if name in self.stats else 0


# 2016-04-15T20:17:00.310Z, the timestamp in Envoy's docs.
START = 1460751420.3105


def make_info(**over) -> StreamInfo:
    info = StreamInfo(42, "10.1.2.3:51234", "10.0.0.2:10000", "HTTP/1.1")
    info.start_time = START
    info.start_mono = 1000.0
    info.request_end_mono = 1000.004
    info.upstream_start_mono = 1000.005
    info.response_start_mono = 1000.0155
    info.end_mono = 1000.0237
    headers = Headers([
        ("user-agent", "curl/8.5.0"), ("x-forwarded-for", "203.0.113.7"),
        ("x-request-id", "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"), ("content-length", "11"),
        ("x-dup", "first"), ("x-dup", "second"),
    ])
    info.request = RequestHead("POST", "/api/v1?x=1", "svc.example.com", "https", "HTTP/1.1",
                               headers)
    info.response = ResponseHead(201, Headers([
        ("content-type", "application/json"), ("x-envoy-upstream-service-time", "9"),
    ]))
    info.response_trailers = Headers([("grpc-status", "0")])
    info.response_code = 201
    info.response_code_details = "via_upstream"
    info.bytes_received = 11
    info.bytes_sent = 27
    info.upstream_host = "10.0.0.9:8080"
    info.upstream_cluster = "backend"
    info.upstream_local_address = "10.0.0.2:40000"
    info.route_name = "api_route"
    info.request_id = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
    for k, v in over.items():
        setattr(info, k, v)
    return info


@pytest.fixture
def stats():
    return FakeStats()

"""Every invalid request of the corpus sent over a real socket to a running proxyd:
the client gets 400/431 and the connection is closed, and the upstream never sees the
bad request. Valid corpus requests reach the upstream intact."""
import json

import pytest

from harness import Upstream, free_port, http1_corpus, raw_exchange, simple_config

INVALID = http1_corpus("invalid")
VALID = http1_corpus("valid")


@pytest.fixture(scope="module")
def setup(module_proxyd_factory):
    up = Upstream("smuggling")
    px = module_proxyd_factory(simple_config(free_port(), up.port))
    yield px, up
    up.stop()


def split_responses(data: bytes, methods=()) -> list[tuple[int, dict, bytes]]:
    """Parse back-to-back Content-Length-framed final responses (what proxyd sends
    here); `methods` are the requests' methods in order (HEAD responses have no body)."""
    out = []
    methods = list(methods)
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if 100 <= status < 200:
            data = rest
            continue
        n = int(headers.get("content-length", 0))
        if len(out) < len(methods) and methods[len(out)] == "HEAD":
            n = 0
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


@pytest.mark.parametrize("case_id,raw,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_request_refused_and_closed(setup, case_id, raw, expected):
    px, up = setup
    before = up.stats()["requests"]
    data, closed = raw_exchange(px.port, raw, timeout=5)
    assert closed, "%s: connection left open" % expected["description"]
    responses = split_responses(data)
    good = expected.get("valid_before", 0)
    assert [s for s, _, _ in responses] == [200] * good + [expected["status"]], \
        (expected["description"], data[:300])
    status, headers, body = responses[-1]
    assert headers.get("connection") == "close"
    assert body == {400: b"Bad Request", 431: b"Request Header Fields Too Large",
                    501: b"Not Implemented"}[status]
    assert up.stats()["requests"] - before == good


@pytest.mark.parametrize("case_id,raw,expected", VALID, ids=[c[0] for c in VALID])
def test_valid_request_reaches_upstream(setup, case_id, raw, expected):
    px, up = setup
    data, closed = raw_exchange(px.port, raw + b"GET /__end HTTP/1.1\r\nHost: e\r\n"
                                b"Connection: close\r\n\r\n", timeout=5)
    responses = split_responses(data, [r["method"] for r in expected["requests"]])
    assert closed
    persistent = expected["requests"][-1]["version"] == "HTTP/1.1" or \
        ["connection", "keep-alive"] in expected["requests"][-1]["headers"]
    assert len(responses) == len(expected["requests"]) + persistent
    for (status, headers, body), exp in zip(responses, expected["requests"]):
        if exp["target"] == "*":
            assert status == 404  # Envoy: a path not starting with "/" matches no route
            continue
        assert status == 200, (exp, body)
        if exp["method"] == "HEAD":
            assert body == b"" and up.requests_log()[-2]["method"] == "HEAD"
            continue
        echo = json.loads(body)
        assert echo["method"] == exp["method"]
        assert echo["path"] == exp["target"]
        assert echo["body"] == exp["body"]
        seen = [tuple(kv) for kv in echo["headers"]]
        for name, value in exp["headers"]:
            if name in ("connection", "transfer-encoding", "expect", "content-length"):
                continue
            assert (name, value) in seen, (name, value, seen)

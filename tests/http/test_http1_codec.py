"""The HTTP/1.1 request corpus (tests/corpus/http1) through the sans-IO RequestParser:
valid requests parse to the expected heads and bodies however the bytes are split;
invalid ones raise ProtocolError with the expected status."""
import random
import zlib

import pytest

from harness import http1_corpus
from proxyd.http.codec.http1 import DATA, END, HEAD, ProtocolError, RequestParser

VALID = http1_corpus("valid")
INVALID = http1_corpus("invalid")


def splits(raw: bytes, case_id: str):
    """Ways to cut `raw` into feeds: whole, byte by byte, every single cut, and random
    cuts seeded by the case (reproducible: str hashes differ per process)."""
    yield [raw]
    if len(raw) < 4096:
        yield [raw[i:i + 1] for i in range(len(raw))]
        for i in range(1, len(raw)):
            yield [raw[:i], raw[i:]]
    rnd = random.Random(zlib.crc32(case_id.encode()))
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, len(raw)), min(len(raw) - 1, rnd.randint(1, 8))))
        yield [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]


def parse(pieces, max_header_bytes=60 * 1024):
    """Feed `pieces`; return ([(head, body)] for complete requests, ProtocolError or None)."""
    p = RequestParser(max_header_bytes)
    done, cur = [], [None, []]
    err = None

    def drain():
        while p.events:
            kind, payload = p.events.popleft()
            if kind == HEAD:
                cur[:] = [payload, []]
            elif kind == DATA:
                cur[1].append(payload)
            elif kind == END:
                done.append((cur[0], b"".join(cur[1])))
    try:
        for piece in pieces:
            p.feed(piece)
            drain()
    except ProtocolError as e:
        err = e
        drain()
    return done, err or p.error


@pytest.mark.parametrize("case_id,raw,expected", VALID, ids=[c[0] for c in VALID])
def test_valid_request_parses(case_id, raw, expected):
    for n, pieces in enumerate(splits(raw, case_id)):
        done, err = parse(pieces)
        assert err is None, "%s (split %d): %s" % (expected["description"], n, err.details)
        assert len(done) == len(expected["requests"])
        for (head, body), exp in zip(done, expected["requests"]):
            assert head.method == exp["method"]
            assert head.path == exp["target"]
            assert head.version == exp["version"]
            assert [list(kv) for kv in head.headers.items] == exp["headers"]
            assert body == exp["body"].encode("latin-1")
            assert head.expect_continue == exp.get("expect_continue", False)
            host = [v for k, v in exp["headers"] if k == "host"]
            assert head.authority == (host[0] if host else "")


@pytest.mark.parametrize("case_id,raw,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_request_is_refused(case_id, raw, expected):
    for n, pieces in enumerate(splits(raw, case_id)):
        done, err = parse(pieces)
        assert err is not None, "%s (split %d): accepted" % (expected["description"], n)
        assert err.status == expected["status"], (expected["description"], n, err.details)
        assert len(done) == expected.get("valid_before", 0)


def test_header_limit_is_configurable():
    """max_request_headers_kb: a 2 KiB header passes at the default, fails at 1 KiB."""
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 2048 + b"\r\n\r\n"
    assert parse([raw])[1] is None
    done, err = parse([raw], max_header_bytes=1024)
    assert err is not None and err.status == 431


def test_error_after_complete_requests_is_deferred():
    """Requests completed before a malformed one are delivered; the error waits in
    `error` and is raised by the next feed."""
    p = RequestParser()
    p.feed(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"
           b"GET / HTTP/1.1\r\nHost: a\r\nX(: 1\r\n\r\n")
    assert [(k, getattr(v, "path", v)) for k, v in p.events] == [
        (HEAD, "/a"), (END, None), (HEAD, "/b"), (END, None)]
    assert p.error is not None and p.error.status == 400
    with pytest.raises(ProtocolError):
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_keep_alive_flags():
    """HTTP/1.1 is persistent unless Connection: close; HTTP/1.0 only with keep-alive."""
    cases = [(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
             (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
             (b"GET / HTTP/1.0\r\n\r\n", False),
             (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True)]
    for raw, keep in cases:
        done, err = parse([raw])
        assert err is None
        assert done[0][0].keep_alive is keep, raw


def test_idle_between_messages():
    p = RequestParser()
    assert p.idle
    p.feed(b"GET / HTTP/1.1\r\nHo")
    assert not p.idle
    p.feed(b"st: a\r\n\r\n")
    assert not p.idle  # events queued
    p.events.clear()
    assert p.idle


def test_body_is_streamed_not_buffered():
    """A Content-Length body arrives as DATA events as it is fed, before it is complete."""
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    kinds = [k for k, _ in p.events]
    assert kinds == [HEAD, DATA]
    p.events.clear()
    p.feed(b"y" * 5000)
    assert [(k, len(v)) for k, v in p.events] == [(DATA, 5000)]


def test_absolute_form_target():
    """The absolute-form authority replaces Host; the path goes on in origin-form."""
    done, err = parse([b"GET http://a.example:81/p?q HTTP/1.1\r\nHost: b.example\r\n\r\n"
                       b"GET http://c.example HTTP/1.1\r\nHost: c.example\r\n\r\n"])
    assert err is None
    (h1, _), (h2, _) = done
    assert (h1.path, h1.authority, h1.headers.get_all("host")) == ("/p?q", "a.example:81", ["a.example:81"])
    assert (h2.path, h2.authority) == ("/", "c.example")

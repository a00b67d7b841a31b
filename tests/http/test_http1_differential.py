"""Differential tests: proxyd's RequestParser (httptools + checks) against zttp's strict
HTTP/1.1 parser (test-only second opinion, research/ecosystem.md section 1) on
generated header names, values, request lines and framing headers.

Both must agree on accept/reject, and on what was parsed when both accept, except for
the documented intended disagreements in `intended_disagreement`."""
import re

import zttp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxyd.http.codec.http1 import HEAD, ProtocolError, RequestParser

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SPECIAL_NAMES = (b"host", b"content-length", b"transfer-encoding", b"connection", b"expect",
                 b"upgrade", b"te", b"trailer")


def ours(raw: bytes):
    """(accepted, head or None) from RequestParser, for the first request in `raw`."""
    p = RequestParser()
    try:
        p.feed(raw)
    except ProtocolError:
        return False, None
    heads = [v for k, v in p.events if k == HEAD]
    return bool(heads), (heads[0] if heads else None)


def theirs(raw: bytes):
    """(accepted, Request event or None) from zttp."""
    c = zttp.H1Connection(zttp.SERVER)
    try:
        c.receive_data(raw)
        req = None
        for _ in range(64):
            ev = c.next_event()
            if isinstance(ev, zttp.Request):
                req = ev
            elif isinstance(ev, (zttp.NeedData, zttp.EndOfMessage)) or ev is zttp.NEED_DATA:
                if not isinstance(ev, zttp.EndOfMessage):
                    break
        return req is not None, req
    except (zttp.ProtocolError, ValueError):
        return False, None


STANDARD_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS",
                    b"TRACE", b"PATCH"}


def intended_disagreement(raw: bytes, our_ok: bool) -> str | None:
    """Why proxyd deliberately differs from zttp on `raw`, or None."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    method = lines[0].split(b" ", 1)[0]
    version = lines[0].rsplit(b" ", 1)[-1]
    names = [ln.split(b":", 1)[0].lower() for ln in lines[1:]]
    if not our_ok and method not in STANDARD_METHODS:
        return "llhttp knows a fixed method list (like Envoy's); other tokens get 400"
    if not our_ok and any(c >= 0x80 for c in lines[0]):
        return "non-ASCII bytes in the request target: refused (RFC 3986 is ASCII); zttp passes them"
    if not our_ok and names.count(b"host") > 1:
        return "duplicate Host: refused on HTTP/1.0 too; zttp checks it on 1.1 only"
    if not our_ok and names.count(b"content-length") > 1:
        return "duplicate Content-Length with the same value: llhttp and Envoy refuse it"
    if not our_ok and version == b"HTTP/1.0" and b"transfer-encoding" in names:
        return "Transfer-Encoding on HTTP/1.0: refused (smuggling guard); zttp accepts it"
    if not our_ok and re.fullmatch(rb"HTTP/1\.[2-9]", version):
        return "HTTP/1.x, x > 1: llhttp refuses it (RFC 9112 would treat it as 1.1)"
    return None


def check(raw: bytes) -> None:
    our_ok, head = ours(raw)
    their_ok, req = theirs(raw)
    if our_ok != their_ok:
        why = intended_disagreement(raw, our_ok)
        assert why is not None, "verdicts differ (proxyd %s, zttp %s) on %r" % (
            "accepts" if our_ok else "rejects", "accepts" if their_ok else "rejects", raw)
        return
    if our_ok:
        assert head.method == req.method.decode("latin-1")
        assert head.path == req.target.decode("latin-1")
        assert head.version == "HTTP/" + req.http_version.decode()
        theirs_headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in req.headers]
        assert head.headers.items == theirs_headers


def no_crlf(b: bytes) -> bool:
    return b"\r" not in b and b"\n" not in b  # line structure is the corpus' business


header_name = st.one_of(
    st.binary(min_size=1, max_size=12).filter(lambda b: no_crlf(b) and b.lower() not in SPECIAL_NAMES),
    st.lists(st.sampled_from(list(TCHAR)), min_size=1, max_size=12).map(bytes),
)
header_value = st.one_of(
    st.binary(max_size=24).filter(no_crlf),
    st.lists(st.sampled_from(list(b" \t\x7f\x00\x01\x80\xff") + list(TCHAR)), max_size=24).map(bytes),
)


@SETTINGS
@given(name=header_name, value=header_value)
@example(name=b"X-A", value=b"a\x00b")
@example(name=b"X A", value=b"1")
@example(name=b"X-A", value=b"caf\xe9")
@example(name=b"X-A", value=b"  a  b \t")
def test_header_field_verdicts_agree(name, value):
    check(b"GET / HTTP/1.1\r\nHost: example.com\r\n" + name + b": " + value + b"\r\n\r\n")


methods = st.one_of(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS",
                                     b"PATCH", b"get", b"G(T", b""]),
                    st.lists(st.sampled_from(list(TCHAR)), min_size=1, max_size=8).map(bytes))
targets = st.one_of(st.sampled_from([b"/", b"/a/b?c=d", b"*", b"/%20x", b"/a#f", b""]),
                    st.binary(max_size=12).map(lambda b: b"/" + b))
separators = st.sampled_from([b" ", b" ", b" ", b"  ", b"\t", b""])
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9",
                            b"http/1.1", b"HTTX/1.1", b"HTTP/1.1 ", b"HTTP/11", b""])


@SETTINGS
@given(method=methods, sep1=separators, target=targets, sep2=separators, version=versions)
@example(method=b"GET", sep1=b"  ", target=b"/", sep2=b" ", version=b"HTTP/1.1")
@example(method=b"GET", sep1=b" ", target=b"/a\x01", sep2=b" ", version=b"HTTP/1.1")
def test_request_line_verdicts_agree(method, sep1, target, sep2, version):
    if method == b"CONNECT" or b"\r" in target or b"\n" in target:
        return
    check(method + sep1 + target + sep2 + version + b"\r\nHost: example.com\r\n\r\n")


framing_header = st.sampled_from([
    b"Content-Length: 3", b"Content-Length: 3", b"Content-Length: 5", b"Content-Length: 3, 3",
    b"Content-Length: +3", b"Content-Length: -1", b"Content-Length: x",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, gzip", b"Transfer-Encoding: xchunked",
    b"Host: example.com", b"Host: example.com", b"Host: other.example",
    b"X-Other: 1",
])


@SETTINGS
@given(headers=st.lists(framing_header, max_size=4), version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
@example(headers=[b"Host: example.com", b"Content-Length: 3", b"Transfer-Encoding: chunked"],
         version=b"HTTP/1.1")
@example(headers=[], version=b"HTTP/1.1")
def test_framing_header_verdicts_agree(headers, version):
    te = any(h.startswith(b"Transfer-Encoding: chunked") for h in headers)
    body = b"3\r\nabc\r\n0\r\n\r\n" if te else b"abc"
    check(b"POST / " + version + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)

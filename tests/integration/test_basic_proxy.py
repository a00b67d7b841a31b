"""Smoke: GET and POST through a real proxyd to a real upstream."""
from harness import free_port, http, simple_config


def test_get_is_proxied(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    r = http(px.port, path="/hello?x=1")
    assert r.status == 200
    echo = r.json()
    assert echo["method"] == "GET"
    assert echo["path"] == "/hello?x=1"
    assert echo["server"] == "shared"


def test_post_body_reaches_upstream(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    r = http(px.port, "POST", "/submit", body=b"a=1&b=2")
    assert r.status == 200
    echo = r.json()
    assert (echo["method"], echo["body"], echo["body_len"]) == ("POST", "a=1&b=2", 7)

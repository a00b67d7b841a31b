"""Admin endpoints: the JSON shapes (keys and types, not values) of /clusters, /listeners,
/server_info and /config_dump, and /ready, from Envoy 1.40 and proxyd on one bootstrap."""
from __future__ import annotations

import json

from compare import json_shape, shape_diff
from differences import assert_explained

JSON_ENDPOINTS = ("/clusters?format=json", "/listeners?format=json", "/server_info",
                  "/config_dump")


def test_ready_matches_envoy(observed):
    e, p = observed.pair.both(lambda s: s.admin("/ready"))
    assert (p.status, p.body, p.header("content-type")) == (e.status, e.body, e.header("content-type"))
    assert e.body == b"LIVE\n"


def test_json_shapes_match_envoy(observed):
    diffs = []
    for path in JSON_ENDPOINTS:
        e, p = observed.pair.both(lambda s: s.admin(path))
        assert e.status == p.status == 200
        assert p.header("content-type") == e.header("content-type")
        envoy, proxyd = json.loads(e.body), json.loads(p.body)
        assert envoy, "Envoy answered %s with an empty document" % path
        diffs += ["%s %s" % (path, d) for d in shape_diff("", json_shape(envoy), json_shape(proxyd))]
    assert_explained(diffs, "admin")

"""Admin endpoints: the JSON shapes (keys and types, not values) of /clusters, /listeners,
/server_info and /config_dump, and /ready, from Envoy 1.40 and proxyd on one bootstrap."""
from __future__ import annotations

import areas
from differences import assert_explained


def test_ready_matches_envoy(observed):
    e, p = observed.pair.both(lambda s: s.admin("/ready"))
    assert (p.status, p.body, p.header("content-type")) == (e.status, e.body, e.header("content-type"))
    assert e.body == b"LIVE\n"


def test_json_shapes_match_envoy(observed):
    documents = areas.admin_documents(observed)
    assert all(e for e, _ in documents.values()), "Envoy answered with an empty document"
    assert_explained(areas.admin(documents), "admin")

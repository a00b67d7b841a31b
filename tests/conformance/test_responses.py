"""Responses: every scenario request answered the same by Envoy 1.40 and proxyd (status,
headers with volatile values masked, body), local replies included."""
from __future__ import annotations

import areas
from differences import assert_explained
from scenario import CASES


def test_envoy_gives_each_case_the_reply_it_is_there_for(observed):
    """The scenario reaches what it claims (else the comparison below would prove little)."""
    got = {name: e.response.status for name, (e, _) in observed.exchanges.items()}
    assert got == {c.name: c.status for c in CASES}


def test_responses_match_envoy(observed):
    assert_explained(areas.responses(observed), "responses")

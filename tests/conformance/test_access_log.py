"""Access logs: the default line, a format with every deterministic operator proxyd
supports (%RESPONSE_FLAGS% and %RESPONSE_CODE_DETAILS% included), and the volatile
operators by shape, for the same traffic through Envoy 1.40 and proxyd."""
from __future__ import annotations

import areas
from differences import assert_explained
from scenario import HCM_CASES


def test_envoy_logs_the_flags_each_case_is_there_for(observed):
    lines = observed.logs["custom.log"][0]
    assert [line.split(" ")[:2] for line in lines] == [[str(c.status), c.flags] for c in HCM_CASES]


def test_default_format_matches_envoy(observed):
    assert_explained(areas.access_log(observed), "access_log")


def test_operators_match_envoy(observed):
    assert_explained(areas.access_log_operators(observed), "access_log_operators")

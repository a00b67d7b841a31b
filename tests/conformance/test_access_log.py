"""Access logs: the default line, a format with every deterministic operator proxyd
supports (%RESPONSE_FLAGS% and %RESPONSE_CODE_DETAILS% included), and the volatile
operators by shape, for the same traffic through Envoy 1.40 and proxyd."""
from __future__ import annotations

from compare import default_line_view, dict_diff, format_line_view
from differences import assert_explained
from scenario import CASES, CUSTOM_FORMAT, VOLATILE_FORMAT


def _per_case(observed, file: str, view) -> list[str]:
    envoy, proxyd = observed.logs[file]
    assert len(envoy) == len(CASES), "Envoy logs every case"
    diffs = []
    for i, case in enumerate(CASES):
        if i >= len(proxyd):
            diffs.append("%s: proxyd logged no line" % case.name)
            continue
        diffs += dict_diff(case.name + ": ", view(envoy[i], case), view(proxyd[i], case))
    diffs += ["extra proxyd line: %s" % line for line in proxyd[len(CASES):]]
    return diffs


def test_envoy_logs_the_flags_each_case_is_there_for(observed):
    lines = observed.logs["custom.log"][0]
    assert [line.split(" ")[:2] for line in lines] == [[str(c.status), c.flags] for c in CASES]


def test_default_format_matches_envoy(observed):
    diffs = _per_case(observed, "default.log", lambda line, c: default_line_view(line, c.echo))
    assert_explained(diffs, "access_log")


def test_operators_match_envoy(observed):
    diffs = _per_case(observed, "custom.log", lambda line, c: format_line_view(line, CUSTOM_FORMAT))
    diffs += _per_case(observed, "volatile.log",
                       lambda line, c: format_line_view(line, VOLATILE_FORMAT, volatile=True))
    assert_explained(diffs, "access_log_operators")

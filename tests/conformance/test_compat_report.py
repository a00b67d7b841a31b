"""docs/envoy-compat.md is what the current code and this conformance run render: a
change that moves a stat, flag, operator or field from one column to another must come
with the regenerated report (python scripts/envoy_compat.py)."""
from __future__ import annotations

import difflib
import shutil

import pytest

from compat_report import REPORT, render
from config_corpus import verdicts
from real_envoy import envoy_version


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (the HTTP/2 "
                    "comparison the report includes uses it)")
def test_committed_report_is_current(observed):
    fresh = render(observed, verdicts(), envoy_version())
    committed = REPORT.read_text() if REPORT.exists() else ""
    assert committed == fresh, (
        "docs/envoy-compat.md is stale; run `python scripts/envoy_compat.py`:\n" + "".join(
            difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                 "committed", "current", n=1))[:6000])

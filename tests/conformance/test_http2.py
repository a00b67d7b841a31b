"""Responses over HTTP/2 (h2c, prior knowledge, from curl: a client neither proxy wrote):
the scenario's plain requests answered the same by Envoy 1.40 and proxyd."""
from __future__ import annotations

import shutil

import pytest

import areas
from differences import assert_explained


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_http2_responses_match_envoy(observed):
    assert_explained(areas.http2(observed), "http2")

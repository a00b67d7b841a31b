"""Conformance fixtures: real Envoy 1.40 and proxyd on the same bootstrap (see pair.py).

The whole folder skips, with the reason, only where the Envoy binary cannot run.
"""
from __future__ import annotations

import sys

import pytest

from harness import closed_port
from pair import Pair
from real_envoy import unusable_reason
from scenario import TEMPLATE, observe


def pytest_collection_modifyitems(config, items):
    reason = unusable_reason()
    if reason:
        for item in items:
            if "/conformance/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def refused_port():
    return closed_port()


@pytest.fixture(scope="module")
def pair_factory(tmp_path_factory, upstream, refused_port, request):
    """Module-scoped: `pair_factory(template)` -> a started Pair (see pair.py)."""
    made = []

    def make(template: str) -> Pair:
        p = Pair(template, tmp_path_factory.mktemp("pair"), upstream.port, refused_port).start()
        made.append(p)
        return p
    yield make
    for p in made:
        if request.session.testsfailed:
            for side in p.sides:
                sys.stderr.write("---- %s log ----\n%s\n" % (side.name, side.log()[-6000:]))
        p.cleanup()


@pytest.fixture(scope="session")
def observed(tmp_path_factory, upstream, refused_port, request):
    """The scenario (scenario.py) run once through a pair, shared by the response,
    access-log, stats and report tests."""
    pair = Pair(TEMPLATE, tmp_path_factory.mktemp("scenario"), upstream.port, refused_port).start()
    try:
        yield observe(pair)
    finally:
        if request.session.testsfailed:
            for side in pair.sides:
                sys.stderr.write("---- %s log ----\n%s\n" % (side.name, side.log()[-6000:]))
        pair.cleanup()

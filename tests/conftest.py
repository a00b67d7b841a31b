"""Shared fixtures: upstream processes, proxyd processes, nginx. See tests/harness.py.

    def test_x(upstream, proxyd_factory):
        px = proxyd_factory(simple_config(free_port(), upstream.port))
        assert http(px.port, path="/hi").json()["path"] == "/hi"
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import Nginx, Proxyd, Upstream, write_config  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


class ProxydFactory:
    """Makes started Proxyd instances from a config dict or text; cleans all of them up."""

    def __init__(self, directory):
        self.directory = directory
        self.made: list[Proxyd] = []
        self._n = 0

    def __call__(self, config, concurrency: int = 1, drain_time_s: float = 5.0,
                 start: bool = True, **kwargs) -> Proxyd:
        self._n += 1
        path = write_config(self.directory, config, "proxyd-%d.yaml" % self._n)
        px = Proxyd(path, concurrency=concurrency, drain_time_s=drain_time_s, **kwargs)
        self.made.append(px)
        if start:
            px.start()
        return px

    def cleanup(self, show_logs: bool) -> None:
        for px in self.made:
            if show_logs and px.proc is not None:
                sys.stderr.write("---- proxyd log (%s) ----\n%s\n" % (px.config_path, px.log()[-20000:]))
            px.cleanup()


@pytest.fixture
def proxyd_factory(tmp_path, request):
    """Function-scoped: `proxyd_factory(config_dict, concurrency=1, drain_time_s=5)`."""
    f = ProxydFactory(tmp_path)
    yield f
    f.cleanup(_failed(request))


@pytest.fixture(scope="module")
def module_proxyd_factory(tmp_path_factory):
    """Module-scoped variant, for a proxyd shared by a module's read-only tests."""
    f = ProxydFactory(tmp_path_factory.mktemp("proxyd"))
    yield f
    f.cleanup(False)


@pytest.fixture(scope="session")
def upstream():
    """A shared upstream process (counters are shared: use upstream_factory to count)."""
    up = Upstream("shared")
    yield up
    up.stop()


@pytest.fixture
def upstream_factory():
    """Function-scoped: `upstream_factory(name)` starts a fresh upstream process."""
    made = []

    def make(name: str = "upstream") -> Upstream:
        up = Upstream(name)
        made.append(up)
        return up
    yield make
    for up in made:
        up.stop()


@pytest.fixture
def nginx_factory():
    """`nginx_factory({name: bytes})` -> a running Nginx upstream; skips if not installed."""
    made = []

    def make(files=None) -> Nginx:
        try:
            n = Nginx(files)
        except FileNotFoundError:
            pytest.skip("nginx is not installed")
        made.append(n)
        return n
    yield make
    for n in made:
        n.stop()

"""Runtime disk and admin layers side by side with real Envoy 1.40: a directory tree of
values (read at start, reloaded when the symlink root is swapped), POST /runtime_modify
into the admin layer, what GET /runtime shows, the runtime.* stats, and a runtime key
that turns a filter on and off (local_ratelimit's filter_enabled)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness import http
from pair import Pair

TEMPLATE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
node: {id: "n1", cluster: svc}
layered_runtime:
  layers:
  - {name: base, static_layer: {lrl_on: 0, s.key: static}}
  - {name: disk, disk_layer: {symlink_root: $dir/root, subdirectory: sub}}
  - {name: missing, disk_layer: {symlink_root: $dir/nowhere}}
  - {name: adm, admin_layer: {}}
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          route_config:
            virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /},
              direct_response: {status: 200, body: {inline_string: ok}}}]}]
          http_filters:
          - name: lrl
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}
              filter_enabled: {default_value: {numerator: 100}, runtime_key: lrl_on}
              filter_enforced: {default_value: {numerator: 100}}
          - name: r
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""


def _tree(base: Path, name: str, files: dict) -> None:
    for rel, text in files.items():
        p = base / name / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _swap(side_dir: Path, target: str) -> None:
    """Point root at `target` atomically, as Envoy's docs say to (symlink, then rename)."""
    tmp = side_dir / "root.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(side_dir / target, tmp)
    os.rename(tmp, side_dir / "root")


def _runtime(side) -> dict:
    return json.loads(side.admin("/runtime").body)


COUNTERS = ("runtime.load_success", "runtime.load_error", "runtime.override_dir_exists",
            "runtime.override_dir_not_exists")
_baseline: dict = {}


def _stats(side) -> dict:
    """runtime.* stats; the load counters as counted since the first look: Envoy 1.40
    loads its runtime twice at start-up (observed, with or without layers), proxyd once."""
    text = side.admin("/stats").body.decode()
    out = {k: int(v) for k, v in (ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
           if k.startswith("runtime.") and "deprecated" not in k}
    base = _baseline.setdefault(side.name, {k: out.get(k, 0) for k in COUNTERS})
    for k in COUNTERS:
        out[k] = out.get(k, 0) - base[k]
    return out


def _post(side, query: str = "", body: bytes | None = None):
    headers = [("content-type", "application/x-www-form-urlencoded")] if body else []
    return http(side.ports["admin"], method="POST", path="/runtime_modify" + query,
                host="127.0.0.1", headers=headers, body=body if body is not None else b"")


def _statuses(side, n=2):
    return [side.http("/").status for _ in range(n)]


def _wait_value(side, key, value, deadline=10.0):
    end = time.monotonic() + deadline
    while True:
        e = _runtime(side)["entries"].get(key)
        if (e and e["final_value"]) == value or time.monotonic() > end:
            return
        time.sleep(0.05)


@pytest.fixture
def pair(tmp_path, upstream, refused_port):
    p = Pair(TEMPLATE, tmp_path, upstream.port, refused_port)
    for side in p.sides:
        _tree(side.dir, "v1", {"sub/a/b": "10\n", "sub/c": "hello world \n\n", "sub/.dot": "true",
                               "other/x": "1"})
        _tree(side.dir, "v2", {"sub/a/b": "20", "sub/lrl_on": "100\n"})
        os.symlink(side.dir / "v1", side.dir / "root")
    p.start()
    _baseline.clear()
    yield p
    p.cleanup()


def test_disk_and_admin_layers_match_envoy(pair):
    def step(side, action):
        action(side)
        return _runtime(side), _stats(side), _statuses(side)

    def start(side):
        return _runtime(side), _stats(side), _statuses(side)

    envoy, proxyd = pair.both(start)
    assert envoy[0]["layers"] == ["base", "disk", "adm"]          # a missing dir is left out
    assert envoy[0]["entries"]["c"]["final_value"] == "hello world"
    assert proxyd == envoy

    def modify(side):
        r = _post(side, "?lrl_on=100&new.key=x&s.key=")           # '' on a key it lacks: no-op
        assert (r.status, r.body) == (200, b"OK\n")

    envoy, proxyd = pair.both(lambda s: step(s, modify))
    assert envoy[2] == [200, 429]
    assert proxyd == envoy

    def swap(side):
        _swap(side.dir, "v2")
        _wait_value(side, "a.b", "20")

    envoy, proxyd = pair.both(lambda s: step(s, swap))
    assert "c" not in envoy[0]["entries"]
    assert proxyd == envoy

    def unset(side):
        r = _post(side, body=b"lrl_on=&new.key=")                  # form values; '' removes
        assert r.status == 200
        _post(side, "?lrl_on=0")

    envoy, proxyd = pair.both(lambda s: step(s, unset))
    assert envoy[2] == [200, 200]
    assert proxyd == envoy

    def errors(side):
        r = _post(side)
        return r.status, r.body, side.admin("/runtime_modify").status
    envoy, proxyd = pair.both(errors)
    assert envoy[0] == 400
    assert proxyd[:2] == envoy[:2]


def test_runtime_modify_without_admin_layer_matches_envoy(pair_factory):
    pair = pair_factory("""
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources: {}
""")

    def run(side):
        r = _post(side, "?x=1")
        return r.status, r.body.strip(), _runtime(side)
    envoy, proxyd = pair.both(run)
    assert envoy[:2] == (503, b"No admin layer specified")
    assert proxyd == envoy

"""`proxyd check` on mongo_proxy configs."""
from __future__ import annotations

from harness import run_cli, write_config

from .conftest import mongo_bootstrap


def check(tmp_path, cfg):
    return run_cli("check", "-c", write_config(tmp_path, cfg))


def test_a_full_mongo_config_passes(tmp_path):
    cfg = mongo_bootstrap(9, 10, 11, access_log=str(tmp_path / "m.log"), commands=["find", "ping"],
                          delay={"fixed_delay": "0.01s", "percentage": {"numerator": 5,
                                                                        "denominator": "TEN_THOUSAND"}})
    r = check(tmp_path, cfg)
    assert r.returncode == 0, r.stdout + r.stderr


def test_emit_dynamic_metadata_is_reported_unsupported(tmp_path):
    r = check(tmp_path, mongo_bootstrap(9, 10, 11, emit_dynamic_metadata=True))
    assert r.returncode != 0 and "emit_dynamic_metadata" in r.stdout + r.stderr

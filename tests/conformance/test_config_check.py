"""Config: `proxyd check` against `envoy --mode validate -c FILE` over a corpus of good
configs (features proxyd implements; both must accept) and broken ones (both must
refuse, proxyd naming file:line). The corpus is tests/conformance/configs/{good,bad}."""
from __future__ import annotations

import areas
from config_corpus import BAD, GOOD, proxyd_check, verdicts
from differences import assert_explained
from harness import run_cli


def test_corpus_has_both_kinds():
    assert len(GOOD) >= 5 and len(BAD) >= 10


def test_the_cli_gives_the_same_verdicts():
    good, bad = run_cli("check", "-c", GOOD[0]), run_cli("check", "-c", BAD[0])
    assert (good.returncode, bad.returncode) == (0, 1)
    assert proxyd_check(BAD[0])[1].splitlines()[0] in bad.stderr


def test_proxyd_check_agrees_with_envoy_validate():
    got = verdicts()
    for name, (envoy_ok, _, _) in got.items():
        assert envoy_ok == name.startswith("good/"), "%s: Envoy 1.40 %s it" % (
            name, "accepts" if envoy_ok else "refuses")
    assert_explained(areas.config(got), "config")

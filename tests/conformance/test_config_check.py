"""Config: `proxyd check` against `envoy --mode validate -c FILE` over a corpus of good
configs (features proxyd implements; both must accept) and broken ones (both must
refuse, proxyd naming file:line). The corpus is tests/conformance/configs/{good,bad}."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from differences import assert_explained
from harness import run_cli
from real_envoy import validate

CORPUS = Path(__file__).resolve().parent / "configs"
GOOD = sorted((CORPUS / "good").glob("*.yaml"))
BAD = sorted((CORPUS / "bad").glob("*.yaml"))


def proxyd_check(path) -> tuple[bool, str]:
    """What `proxyd check -c FILE` decides and prints (its cmd_check, in this process:
    one interpreter start per file would cost a second each)."""
    from proxyd.config import ConfigError, load_bootstrap
    try:
        load_bootstrap(str(path))
    except ConfigError as e:
        return False, "\n".join(e.errors)
    return True, ""


def verdicts() -> dict:
    """{"good/name": (envoy accepts, proxyd accepts, proxyd's errors)}."""
    with ThreadPoolExecutor(4) as pool:
        envoy = dict(zip(GOOD + BAD, pool.map(validate, GOOD + BAD)))
    return {"%s/%s" % (p.parent.name, p.stem): (envoy[p].returncode == 0,) + proxyd_check(p)
            for p in GOOD + BAD}


def test_corpus_has_both_kinds():
    assert len(GOOD) >= 5 and len(BAD) >= 10


def test_the_cli_gives_the_same_verdicts():
    good, bad = run_cli("check", "-c", GOOD[0]), run_cli("check", "-c", BAD[0])
    assert (good.returncode, bad.returncode) == (0, 1)
    assert proxyd_check(BAD[0])[1].splitlines()[0] in bad.stderr


def test_proxyd_check_agrees_with_envoy_validate():
    got = verdicts()
    diffs = []
    for name, (envoy_ok, proxyd_ok, stderr) in got.items():
        assert envoy_ok == name.startswith("good/"), "%s: Envoy 1.40 %s it" % (
            name, "accepts" if envoy_ok else "refuses")
        if envoy_ok != proxyd_ok:
            diffs.append("%s: envoy %s, proxyd %s" % (name, "accepts" if envoy_ok else "refuses",
                                                      "accepts" if proxyd_ok else "refuses"))
        elif not proxyd_ok:
            where = re.search(r"^\S+\.yaml:\d+:\d+: ", stderr, re.M)
            if where is None:
                diffs.append("%s: proxyd refuses without file:line: %r" % (name, stderr[:200]))
    assert_explained(diffs, "config")

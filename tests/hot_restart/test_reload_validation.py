"""`proxyd reload` validates the new config in a child process, so a hostile or huge file
cannot stall the serving master: /ready keeps answering, a killed worker is replaced,
and the bad reload exits 1 with nothing changed."""
import os
import signal
import threading
import time
import urllib.request

import pytest

from harness import billion_laughs, free_port, http
from hr_helpers import config, reload, status

pytestmark = pytest.mark.timeout(120)


class ReadyProbe(threading.Thread):
    """GET /ready every 20 ms; records each answer's latency (a failure counts as 10 s)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.latencies, self.done = url + "/ready", [], threading.Event()

    def run(self):
        while not self.done.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    r.read()
                self.latencies.append(time.monotonic() - t0)
            except OSError:
                self.latencies.append(10.0)
            time.sleep(0.02)

    def stop(self) -> float:
        self.done.set()
        self.join(15)
        return max(self.latencies)


def big_config(good_text: str, clusters: int) -> str:
    """The config with thousands more clusters and one error at its very end."""
    lines = [good_text.rstrip("\n")]
    for i in range(clusters):
        lines.append(f"  - name: extra_{i}\n    type: STATIC\n    connect_timeout: 0.25s\n"
                     f"    load_assignment:\n      cluster_name: extra_{i}\n"
                     f"      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: "
                     f"{{address: 10.1.{i // 256 % 256}.{i % 256}, port_value: 8000}}}}}}}}]}}]")
    lines.append("  - name: last\n    connect_timeout: forever")
    return "\n".join(lines) + "\n"


def test_alias_bomb_reload_is_refused_while_ready_answers(upstream, proxyd_factory):
    port, admin = free_port(), free_port()
    px = proxyd_factory(config(port, upstream.port, admin_port=admin), concurrency=1)
    before = status(px)
    with open(px.config_path, "w") as f:
        f.write(billion_laughs())
    probe = ReadyProbe(px.admin_url)
    probe.start()
    r = reload(px)
    worst = probe.stop()
    assert r.rc == 1, r
    assert "invalid config, nothing changed" in r.stderr
    assert "(an alias bomb?)" in r.stderr and "%s:10:" % px.config_path in r.stderr
    assert worst < 2.0, worst
    after = status(px)
    assert (after["pid"], after["epoch"], after["workers"]) == (before["pid"], 0, before["workers"])
    assert http(px.port, path="/version").body == b"v1"


def test_slow_validation_runs_beside_a_master_that_keeps_serving(upstream, proxyd_factory):
    """A config that takes seconds to validate: meanwhile /ready answers and a SIGKILLed
    worker is replaced, as when nothing happens (in the master's own loop the check
    would hold both until it ended)."""
    port, admin = free_port(), free_port()
    px = proxyd_factory(config(port, upstream.port, admin_port=admin), concurrency=1)
    text = big_config(open(px.config_path).read(), 2500)
    with open(px.config_path, "w") as f:
        f.write(text)
    (old_worker,) = status(px)["workers"]
    probe = ReadyProbe(px.admin_url)
    probe.start()
    result = {}
    reloader = threading.Thread(target=lambda: result.setdefault("r", reload(px, timeout=110)))
    t0 = time.monotonic()
    reloader.start()
    time.sleep(0.5)
    os.kill(old_worker, signal.SIGKILL)
    replaced = None
    while reloader.is_alive() and replaced is None:
        workers = status(px)["workers"]
        if workers and workers != [old_worker]:
            replaced = time.monotonic() - t0
        time.sleep(0.05)
    reloader.join(110)
    took = time.monotonic() - t0
    worst = probe.stop()
    r = result["r"]
    assert r.rc == 1, r
    assert "%s:%d:" % (px.config_path, text.count("\n")) in r.stderr, r.stderr
    assert "clusters[2501].connect_timeout" in r.stderr, r.stderr
    assert took > 2.0, took            # the check really took a while ...
    assert replaced is not None and replaced < took, (replaced, took)  # ... and the worker came back during it
    assert worst < 2.0, (worst, took)
    assert status(px)["epoch"] == 0

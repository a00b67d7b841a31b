"""sd_notify as systemd sees it, through a datagram socket the test owns as NOTIFY_SOCKET
(sender pids from SCM_CREDENTIALS, BARRIER=1 fds closed on receipt as systemd does)."""
import time

from harness import free_port, listener, route
from hr_helpers import NotifySocket, config, reload, rewrite, stop, take_port, wait_gone


def _index(ns, pred, start: int = 0, timeout: float = 20.0) -> int:
    """Index of the first message at or after `start` satisfying `pred` (waits for it)."""
    ns.wait_for(lambda m: m in ns.messages[start:] and pred(m), timeout)
    return next(i for i, m in enumerate(ns.messages) if i >= start and pred(m))


def _has(m, pid, **fields) -> bool:
    return m["pid"] == pid and all(m["fields"].get(k) == v for k, v in fields.items())


def test_notify_sequence_start_reload_failed_reload_stop(upstream, proxyd_factory):
    ns = NotifySocket()
    try:
        port = free_port()
        px = proxyd_factory(config(port, upstream.port), concurrency=2, env=ns.env())
        first = px.pid
        ready = _index(ns, lambda m: _has(m, first, READY="1"))
        assert "STATUS" in ns.messages[ready]["fields"]
        assert "MAINPID" not in ns.messages[ready]["fields"]

        ns.watch_pids.add(first)
        mark = len(ns.messages)
        r = reload(px)
        assert r.rc == 0, r
        new = r.pid
        reloading = _index(ns, lambda m: _has(m, first, RELOADING="1"), mark)
        usec = int(ns.messages[reloading]["fields"]["MONOTONIC_USEC"])
        assert 0 <= ns.messages[reloading]["now_usec"] - usec < 5_000_000
        mainpid = _index(ns, lambda m: _has(m, new, MAINPID=str(new)), mark)
        new_ready = _index(ns, lambda m: _has(m, new, READY="1"), mark)
        barrier = _index(ns, lambda m: _has(m, new, BARRIER="1"), mark)
        assert reloading < mainpid <= new_ready < barrier
        assert ns.messages[barrier]["nfds"] == 1
        assert first in ns.messages[barrier]["alive"], \
            "the old master exited before systemd acknowledged the new main pid"
        assert wait_gone(first, 15)
        assert [m["fields"] for m in ns.messages[mark:] if m["pid"] == first] == \
            [ns.messages[reloading]["fields"]], "the old master sent more than RELOADING=1"

        # A failed reload: RELOADING=1 answered by READY=1 from the same (still main) pid.
        blocker, taken = take_port()
        try:
            rewrite(px, config(port, upstream.port, extra_listeners=[
                listener(taken, name="second", stat_prefix="second", routes=[route("/")])]))
            mark = len(ns.messages)
            r = reload(px)
            assert r.rc == 1, r
        finally:
            blocker.close()
        again = _index(ns, lambda m: _has(m, new, RELOADING="1"), mark)
        back = _index(ns, lambda m: _has(m, new, READY="1"), again + 1)
        assert "reload failed" in ns.messages[back]["fields"].get("STATUS", "")
        assert "MAINPID" not in ns.messages[back]["fields"]

        mark = len(ns.messages)
        cp = stop(px)
        assert cp.returncode == 0, cp.stderr
        _index(ns, lambda m: _has(m, new, STOPPING="1"), mark, timeout=5)
        time.sleep(0.2)
        senders = {m["pid"] for m in ns.messages}
        assert senders <= {first, new}, "notify messages from a non-master: %r" % ns.summary()
    finally:
        ns.close()

"""HTTP upgrades (WebSocket over HTTP/1.1): whether one is allowed, and the byte tunnel
an accepted one becomes (Envoy's `upgrade_configs` on the HCM and on routes).

After the upstream's 101 went downstream, both connections carry the upgraded protocol:
bytes go both ways unparsed, a FIN from one side is passed on as a half-close (the other
direction goes on), and the tunnel ends when both directions ended, on an error, or
after the stream idle timeout with nothing moving.
"""
from __future__ import annotations

import time

import gevent

from proxyd.network.splice import PumpError, copy_pump, splice_pump
from proxyd.transport.tls import is_tls


def allowed(hcm_upgrades: dict, route_upgrades: dict | None, upgrade: str) -> bool:
    """Envoy's createUpgradeFilterChain: a route that names the type decides (disabled:
    refused; enabled: allowed even if the HCM does not list it); otherwise the HCM's
    upgrade_configs entry for it (case-insensitive), which must exist and be enabled."""
    kind = upgrade.lower()
    if route_upgrades is not None:
        enabled = route_upgrades.get(kind)
        if enabled is not None:
            return enabled
    return hcm_upgrades.get(kind, False)


def tunnel(down, down_rest: bytes, up, up_rest: bytes, idle_timeout: float | None,
           on_down_rx, on_up_rx) -> str:
    """Relay between the downstream and upstream sockets until both directions end.
    `*_rest`: bytes each side sent after its HTTP head (they go first). `on_down_rx(n)`
    / `on_up_rx(n)` count bytes read from each side. Returns why it ended:
    "upstream_closed" or "downstream_closed" (the side whose FIN came first), "error"
    or "idle"."""
    last = [time.monotonic()]

    def down_rx(n: int) -> None:
        last[0] = time.monotonic()
        on_down_rx(n)

    def up_rx(n: int) -> None:
        last[0] = time.monotonic()
        on_up_rx(n)

    def noop() -> None:
        pass

    try:
        if down_rest:
            on_down_rx(len(down_rest))
            up.sendall(down_rest)
        if up_rest:
            on_up_rx(len(up_rest))
            down.sendall(up_rest)
    except OSError:
        return "error"
    # behind network filters (a ChainSocket) the tunnel's bytes go through them too
    pump = copy_pump if (is_tls(down) or is_tls(up) or getattr(down, "through_chain", False)) \
        else splice_pump
    pumps = [gevent.spawn(pump, down, up, down_rx, noop),
             gevent.spawn(pump, up, down, up_rx, noop)]
    why = None
    alive = list(pumps)
    try:
        while alive:
            wait = None
            if idle_timeout:
                wait = max(0.0, last[0] + idle_timeout - time.monotonic())
            done = gevent.wait(alive, timeout=wait, count=1)
            if done:
                for g in done:
                    alive.remove(g)
                    if not g.successful():
                        why = "error"  # a reset on one side: the other cannot go on
                    elif why is None:
                        why = "downstream_closed" if g is pumps[0] else "upstream_closed"
                if why == "error":
                    break
                continue  # one direction ended (its FIN passed on): the other goes on
            if idle_timeout and time.monotonic() - last[0] >= idle_timeout:
                why = "idle"
                break
    finally:
        for g in alive:
            g.kill(block=False)
        gevent.joinall(pumps, timeout=1.0, raise_error=False)
    for p in pumps:
        if p.exception is not None and not isinstance(p.exception, (PumpError, OSError,
                                                                    gevent.GreenletExit)):
            raise p.exception
    return why

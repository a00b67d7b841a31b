"""Envoy's watchdog (the guard dog) for a prefork proxy: who notices a frozen worker.

Each worker's loop stores CLOCK_MONOTONIC into its own stats slot every few tens of
milliseconds (`HEARTBEAT_STAT`, a hidden gauge: one memoryview store, no syscall, and a
reaped worker's value goes with its slot). The master reads every live worker's value;
a worker silent for longer than `miss_timeout` counts one miss, longer than
`megamiss_timeout` one mega miss (once per silence, as Envoy), and with `kill_timeout`
set it is SIGKILLed and its supervisor respawns it. The master watches its own loop
the same way, by how late its check wakes up: `main_thread.*`.

Stats are Envoy 1.40's, all present from the start: `main_thread.watchdog_miss`,
`main_thread.watchdog_mega_miss`, the same under `server.main_thread.`,
`workers.watchdog_miss`, `workers.watchdog_mega_miss`, and per worker
`server.worker_<index>.watchdog_miss` / `watchdog_mega_miss`.

Config: bootstrap `watchdogs.main_thread_watchdog` / `watchdogs.worker_watchdog`, or
the deprecated `watchdog` for both; Envoy's defaults (200 ms, 1 s, no kill). A main
thread past `kill_timeout` is only logged: Envoy aborts the whole process, and a master
that notices its own freeze afterwards has nothing left to gain by killing itself.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import gevent

HEARTBEAT_STAT = "_watchdog.heartbeat_ns"


@dataclass(frozen=True)
class Timeouts:
    miss_s: float = 0.2
    megamiss_s: float = 1.0
    kill_s: float = 0.0       # 0: never kill

    @classmethod
    def of(cls, watchdog) -> "Timeouts":
        """From an envoy.config.bootstrap.v3.Watchdog (unset fields: Envoy's defaults)."""
        def seconds(field, default):
            if not watchdog.HasField(field):
                return default
            d = getattr(watchdog, field)
            return d.seconds + d.nanos / 1e9
        return cls(seconds("miss_timeout", cls.miss_s), seconds("megamiss_timeout", cls.megamiss_s),
                   seconds("kill_timeout", cls.kill_s))

    @property
    def heartbeat_s(self) -> float:
        """How often a worker beats: several times per miss_timeout."""
        return min(max(self.miss_s / 4, 0.005), 0.25)


def timeouts(bootstrap) -> tuple[Timeouts, Timeouts]:
    """(main thread, workers) timeouts of a bootstrap."""
    if bootstrap.HasField("watchdogs"):
        w = bootstrap.watchdogs
        return (Timeouts.of(w.main_thread_watchdog) if w.HasField("main_thread_watchdog") else Timeouts(),
                Timeouts.of(w.worker_watchdog) if w.HasField("worker_watchdog") else Timeouts())
    if bootstrap.HasField("watchdog"):
        both = Timeouts.of(bootstrap.watchdog)
        return both, both
    return Timeouts(), Timeouts()


def heartbeat(gauge, interval_of) -> None:
    """A worker's beat loop: `gauge` is its HEARTBEAT_STAT handle, `interval_of()` the
    current interval (the config may change it)."""
    now = time.monotonic_ns
    while True:
        gauge.set(now())
        gevent.sleep(interval_of())


class _Silence:
    """What was already counted for one worker process's current silence."""
    __slots__ = ("missed", "mega", "since_ns")

    def __init__(self):
        self.missed = self.mega = False
        self.since_ns = 0


class GuardDog:
    def __init__(self, master):
        self.m = master
        self.main, self.worker = timeouts(master.bootstrap)
        s = master.stats
        self.main_miss = [s.counter("main_thread.watchdog_miss"),
                          s.counter("server.main_thread.watchdog_miss")]
        self.main_mega = [s.counter("main_thread.watchdog_mega_miss"),
                          s.counter("server.main_thread.watchdog_mega_miss")]
        self.workers_miss = s.counter("workers.watchdog_miss")
        self.workers_mega = s.counter("workers.watchdog_mega_miss")
        self.per_worker = {}
        for i in range(master.options.concurrency):
            self.per_worker[i] = (s.counter("server.worker_%d.watchdog_miss" % i),
                                  s.counter("server.worker_%d.watchdog_mega_miss" % i))
        s.gauge(HEARTBEAT_STAT)   # the row workers write; the master's own share stays 0
        self.silences: dict[int, _Silence] = {}   # by worker pid
        self.log = master.log

    @property
    def interval_s(self) -> float:
        """Envoy's guard dog wakes at a fraction of its shortest timeout."""
        shortest = min(t for t in (self.main.miss_s, self.main.megamiss_s, self.worker.miss_s,
                                   self.worker.megamiss_s, self.worker.kill_s or 1e9) if t > 0)
        return min(max(shortest / 2, 0.01), 1.0)

    def run(self) -> None:
        interval = self.interval_s
        expected = time.monotonic() + interval
        while not self.m.stopping:
            gevent.sleep(max(expected - time.monotonic(), 0))
            now = time.monotonic()
            self._check_main(now - expected)
            self._check_workers()
            expected = now + interval

    def _check_main(self, late_s: float) -> None:
        """The master's own loop was blocked for about `late_s` (its wake-up came late)."""
        if late_s > self.main.miss_s:
            for c in self.main_miss:
                c.inc()
            if late_s > self.main.megamiss_s:
                for c in self.main_mega:
                    c.inc()
                self.log.warning("watchdog_main_thread_mega_miss", blocked_ms=round(late_s * 1000))

    def _check_workers(self) -> None:
        t = self.worker
        now_ns = time.monotonic_ns()
        seen = set()
        for w in self.m.workers:
            proc = w.proc
            if proc is None or proc.returncode is not None or w.applied_version < 0:
                continue   # not started, exited, or still starting (no loop to watch yet)
            beat = self.m.stats.slot_value(w.slot, HEARTBEAT_STAT)
            if beat <= 0:
                continue
            seen.add(proc.pid)
            silent_s = (now_ns - beat) / 1e9
            st = self.silences.get(proc.pid)
            if silent_s <= t.miss_s:
                if st is not None and st.mega:
                    self.log.info("watchdog_worker_responsive", worker=w.index, pid=proc.pid,
                                  unresponsive_ms=round((now_ns - st.since_ns) / 1e6))
                self.silences.pop(proc.pid, None)
                continue
            if st is None:
                st = self.silences[proc.pid] = _Silence()
                st.since_ns = beat
            miss, mega = self.per_worker.get(w.index, (None, None))
            if not st.missed:
                st.missed = True
                self.workers_miss.inc()
                if miss is not None:
                    miss.inc()
            if silent_s > t.megamiss_s and not st.mega:
                st.mega = True
                self.workers_mega.inc()
                if mega is not None:
                    mega.inc()
                self.log.warning("watchdog_worker_unresponsive", worker=w.index, pid=proc.pid,
                                 unresponsive_ms=round(silent_s * 1000),
                                 kill_timeout_s=t.kill_s or None)
            if t.kill_s and silent_s > t.kill_s:
                self.log.error("watchdog_kill", worker=w.index, pid=proc.pid,
                               unresponsive_ms=round(silent_s * 1000), kill_timeout_s=t.kill_s)
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                del self.silences[proc.pid]
                seen.discard(proc.pid)
        for pid in list(self.silences):
            if pid not in seen:
                del self.silences[pid]

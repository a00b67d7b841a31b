"""Hot-path handles. Each writes only its own process's slot: one memoryview store, no lock.

A handle holds the 64-bit view of the slot it writes and its row. ``StatsStore.bind``
re-points every handle made earlier, so handles may be created before the slot is bound
(writes made before binding go to a private scratch block and are not recorded).
"""

from bisect import bisect_left
from dataclasses import dataclass

from .layout import BUCKETS_MS, HIST_BUCKET_ROWS, HIST_SUM_ROW, SUM_SCALE


@dataclass(frozen=True)
class HistogramValue:
    """A histogram summed over slots: cumulative counts per bound in ``BUCKETS_MS`` then +Inf."""

    buckets: list       # cumulative; len(BUCKETS_MS) + 1 entries, the last equals count
    sum: float          # milliseconds
    count: int

    bounds = BUCKETS_MS

    @classmethod
    def from_rows(cls, rows) -> "HistogramValue":
        """Build from the histogram's summed raw rows (non-cumulative buckets, then sum in us)."""
        cumulative, running = [], 0
        for n in rows[:HIST_BUCKET_ROWS]:
            running += n
            cumulative.append(running)
        return cls(cumulative, rows[HIST_SUM_ROW] / SUM_SCALE, running)

    def quantile(self, q: float) -> float:
        """Estimate the q-quantile (0..1) by linear interpolation inside buckets, like PromQL."""
        if self.count <= 0:
            return float("nan")
        rank = q * self.count
        lower, prev = 0.0, 0
        for i, cum in enumerate(self.buckets):
            upper = self.bounds[i] if i < len(self.bounds) else self.bounds[-1]
            if cum > prev and cum >= rank:
                if q == 0:
                    return lower
                return lower + (upper - lower) * (rank - prev) / (cum - prev)
            lower, prev = upper, cum
        return float(self.bounds[-1])


class _Handle:
    __slots__ = ("name", "_v", "_i", "_store", "recorded")

    def __init__(self, store, name: str, view, row: int, recorded: bool):
        self.name = name
        self._store = store
        self._v = view
        self._i = row
        self.recorded = recorded  # False for the stand-in given when the table was full

    def _rebind(self, view) -> None:
        if self.recorded:
            self._v = view

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


class Counter(_Handle):
    __slots__ = ()

    def inc(self, n: int = 1) -> None:
        self._v[self._i] += n

    def value(self) -> int:
        """Total over every slot (what /stats shows)."""
        return self._store._row_total(self) if self.recorded else self._v[self._i]


class Gauge(_Handle):
    """A gauge is the sum of per-process shares; ``set`` sets this process's share."""

    __slots__ = ()

    def inc(self, n: int = 1) -> None:
        self._v[self._i] += n

    def dec(self, n: int = 1) -> None:
        self._v[self._i] -= n

    def set(self, value: int) -> None:
        self._v[self._i] = value

    def value(self) -> int:
        return self._store._row_total(self) if self.recorded else self._v[self._i]


class Histogram(_Handle):
    """Values in milliseconds, Envoy's default buckets."""

    __slots__ = ()

    def record(self, ms: float, _bisect=bisect_left, _bounds=BUCKETS_MS) -> None:
        v, base = self._v, self._i
        v[base + _bisect(_bounds, ms)] += 1
        v[base + HIST_SUM_ROW] += int(ms * SUM_SCALE)

    def value(self) -> HistogramValue:
        if self.recorded:
            return self._store._histogram_total(self)
        return HistogramValue.from_rows(self._v[self._i:self._i + HIST_SUM_ROW + 1].tolist())

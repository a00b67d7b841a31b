"""Stats in mmap shared memory: one single-writer slot per process, summed on read."""

from .handles import Counter, Gauge, Histogram, HistogramValue
from .layout import BUCKETS_MS
from .store import OVERFLOW_STAT, IncompatibleStatsFile, SlotTableFull, Snapshot, StatsStore

__all__ = ["StatsStore", "Snapshot", "Counter", "Gauge", "Histogram", "HistogramValue", "BUCKETS_MS",
           "OVERFLOW_STAT", "IncompatibleStatsFile", "SlotTableFull"]

"""StatsStore: the process-facing API over the shared stats file.

Who writes what:
- every process writes only the value block of the slot it ``bind``s (single writer, no lock);
- names are added by any process under the file flock (rare);
- the master claims slots for workers, and when one exits ``retire_slot`` folds its counters
  and histograms into the retired slot (totals never go backwards) and drops its gauges.

Reads sum every active slot plus the retired slot under a seqlock, so a scrape never sees a
fold half done.

Gauges owned by one process, such as the master's ``server.*``, are simply set in that
process's slot. When a hot-restarted master takes over, the old master's slot is retired
(explicitly, or by ``reap_dead_slots`` once the old master is gone), so the old master's
gauges drop out and only the new master's remain.
"""

import contextlib
import os
import time
from array import array

import psutil

from . import layout as L
from . import limits
from .catalog import Catalog
from .handles import Counter, Gauge, Histogram, HistogramValue
from .region import IncompatibleStatsFile, Region

__all__ = ["StatsStore", "SlotTableFull", "IncompatibleStatsFile", "OVERFLOW_STAT"]

OVERFLOW_STAT = "server.stats_overflow"
_KIND_OF = {Counter: L.COUNTER, Gauge: L.GAUGE, Histogram: L.HISTOGRAM}
_PID_REUSE_SLACK_S = 1.0  # psutil create_time is rounded; a reused pid is newer than this


class SlotTableFull(RuntimeError):
    """Every slot is in use by a live process."""


class StatsStore:
    def __init__(self, region: Region):
        self._region = region
        self.layout = region.layout
        self.path = region.path
        self.catalog = Catalog(region)
        self.slot: int | None = None
        self._handles: dict[str, object] = {}
        self._scratch = None
        self._render_cache: dict = {}

    @classmethod
    def create(cls, path: str, *, max_rows: int = L.DEFAULT_MAX_ROWS, max_slots: int = L.DEFAULT_MAX_SLOTS,
               name_bytes: int | None = None) -> "StatsStore":
        """Cold start: a new, empty file replaces whatever was at ``path``."""
        if name_bytes is None:
            name_bytes = max_rows * L.DEFAULT_NAME_BYTES_PER_ROW
        store = cls(Region.create(path, max_rows, max_slots, name_bytes))
        store.catalog.add(OVERFLOW_STAT, L.COUNTER)
        return store

    @classmethod
    def attach(cls, path: str) -> "StatsStore":
        """Hot-restarted master or worker: map the existing file, never wiping it."""
        return cls(Region.attach(path))

    @classmethod
    def attach_fd(cls, fd: int, path: str) -> "StatsStore":
        """As ``attach``, through an fd handed over by the master (``fd`` is consumed), so a
        path that now names another file or nothing does not matter; ``path`` is the
        family's stats path, which ``unlink`` removes."""
        return cls(Region.attach_fd(fd, path))

    def fileno(self) -> int:
        """The mapped file's descriptor, to hand to a worker or a successor master."""
        return self._region.fileno()

    # -- slots ---------------------------------------------------------------------------

    def claim_slot(self, pid: int, role: str = "worker") -> int:
        """Reserve a free slot for ``pid`` (0: set it later with ``set_slot_pid``)."""
        region = self._region
        with region.lock():
            free = self._free_slot()
            if free is None:
                self.reap_dead_slots()
                free = self._free_slot()
            if free is None:
                raise SlotTableFull(f"all {self.layout.max_slots} stats slots are held by live processes")
            region.set_slot_word(free, L.S_STATE, L.SLOT_ACTIVE)
            region.set_slot_role(free, role)
            self._set_pid(free, pid or os.getpid())
            region.set_slot_word(free, L.S_SERIAL, region.slot_word(free, L.S_SERIAL) + 1)
            if role == "master":
                region.header[L.H_MASTERS] += 1
        return free

    def _free_slot(self):
        region = self._region
        for slot in range(self.layout.max_slots):
            if region.slot_word(slot, L.S_STATE) == L.SLOT_FREE:
                return slot
        return None

    def _set_pid(self, slot: int, pid: int) -> None:
        self._region.set_slot_word(slot, L.S_PID, pid)
        self._region.set_slot_word(slot, L.S_SET_NS, time.time_ns())

    def set_slot_pid(self, slot: int, pid: int) -> None:
        """Record the pid of the process that writes ``slot`` (after the master spawned it)."""
        with self._region.lock():
            self._set_pid(slot, pid)

    def bind(self, slot: int) -> None:
        """Make this process the writer of ``slot``; every handle of this store now writes there."""
        region = self._region
        with region.lock():
            if region.slot_word(slot, L.S_STATE) != L.SLOT_ACTIVE:
                raise ValueError(f"stats slot {slot} is not claimed")
            if region.slot_word(slot, L.S_PID) != os.getpid():
                self._set_pid(slot, os.getpid())
        self.slot = slot
        view = region.values(slot)
        for handle in self._handles.values():
            handle._rebind(view)

    def slots(self) -> list[dict]:
        """The claimed slots: [{'slot', 'pid', 'role'}]."""
        region = self._region
        return [{"slot": s, "pid": region.slot_word(s, L.S_PID), "role": region.slot_role(s)}
                for s in range(self.layout.max_slots) if region.slot_word(s, L.S_STATE) == L.SLOT_ACTIVE]

    def live_slots(self) -> list[dict]:
        """The claimed slots whose process still runs (not a zombie, pid not reused):
        what a new master checks for orphans of a dead one, and for stale files."""
        region = self._region
        return [e for e in self.slots() if _alive(e["pid"], region.slot_word(e["slot"], L.S_SET_NS))]

    def slot_value(self, slot: int, name: str) -> int:
        """One process's own share of counter or gauge ``name`` (0 if no one made it)."""
        found = self.catalog.lookup(name)
        return 0 if found is None else self._region.values(slot)[found[1]]

    @property
    def created_ns(self) -> int:
        """When the file was created (wall clock, ns)."""
        return self._region.header[L.H_CREATED_NS]

    def retire_slot(self, slot: int) -> None:
        """Fold an exited process's slot: counters/histograms into the retired slot, gauges dropped.

        The slot's writer must be gone (after waitpid), otherwise its later writes are lost.
        """
        region = self._region
        with region.rewriting():
            if region.slot_word(slot, L.S_STATE) != L.SLOT_ACTIVE:
                return
            self.catalog.refresh()
            rows = region.header[L.H_ROWS_USED]
            src, dst = region.values(slot), region.values(self.layout.retired_slot)
            moved = src[:rows].tolist()
            for row in self.catalog.rows_of_kind((L.GAUGE,)):
                moved[row] = 0
            # row by row, never a block rewrite: the retired slot also holds shared words
            # (token buckets) that other processes update meanwhile under their own locks
            for row, value in enumerate(moved):
                if value:
                    dst[row] += value
            src[:rows] = array("q", bytes(rows * 8))
            region.set_slot_word(slot, L.S_STATE, L.SLOT_FREE)
            region.set_slot_word(slot, L.S_PID, 0)
            region.set_slot_role(slot, "")
        if slot == self.slot:
            self.slot = None

    def reap_dead_slots(self) -> list[int]:
        """Retire every slot whose process no longer exists (SIGKILLed worker, previous master)."""
        region = self._region
        reaped = []
        with region.lock():
            for entry in self.slots():
                slot, pid = entry["slot"], entry["pid"]
                if pid != os.getpid() and not _alive(pid, region.slot_word(slot, L.S_SET_NS)):
                    self.retire_slot(slot)
                    reaped.append(slot)
        return reaped

    def reset_counters(self) -> None:
        """Zero every counter's total (Envoy's /reset_counters) without touching writers' slots.

        The retired slot absorbs minus the current total, so writers keep plain stores.
        """
        region = self._region
        with region.rewriting():
            self.catalog.refresh()
            rows = self.catalog.rows_of_kind((L.COUNTER,))
            totals = self._sum_rows(region.header[L.H_ROWS_USED])
            retired = region.values(self.layout.retired_slot)
            for row in rows:
                retired[row] -= totals[row]

    @property
    def master_generation(self) -> int:
        """How many masters have claimed a slot since the cold start (server.hot_restart_generation)."""
        return self._region.header[L.H_MASTERS]

    # -- handles -------------------------------------------------------------------------

    def counter(self, name: str) -> Counter:
        return self._handle(name, Counter)

    def gauge(self, name: str) -> Gauge:
        return self._handle(name, Gauge)

    def histogram(self, name: str) -> Histogram:
        return self._handle(name, Histogram)

    def _handle(self, name, cls):
        handle = self._handles.get(name)
        if handle is not None:
            if type(handle) is not cls:
                raise ValueError(f"stat {name!r} is a {type(handle).__name__.lower()}, not a {cls.__name__.lower()}")
            return handle
        if not name:
            raise ValueError("empty stat name")
        kind = _KIND_OF[cls]
        found = self.catalog.add(name, kind)
        if found is None:
            self._count_overflow()
            size = L.HIST_ROWS if kind == L.HISTOGRAM else 1
            handle = cls(self, name, memoryview(bytearray(size * 8)).cast("q"), 0, recorded=False)
        else:
            if found[0] != kind:
                raise ValueError(f"stat {name!r} is a {L.KIND_NAMES[found[0]]}, not a {L.KIND_NAMES[kind]}")
            handle = cls(self, name, self._write_view(), found[1], recorded=True)
        self._handles[name] = handle
        return handle

    def shared_word(self, name: str):
        """(view, row, fd, file offset) of one word every process reads and writes (not a
        per-slot share): hidden gauge ``name``'s row in the retired slot, which folds and
        resets never rewrite. Writers serialise with a record lock on those 8 bytes
        (``proxyd.stats.token_bucket``). When the table is full: a private word, fd None."""
        found = self.catalog.add(name, L.GAUGE)
        if found is None:
            self._count_overflow()
            return memoryview(bytearray(8)).cast("q"), 0, None, 0
        if found[0] != L.GAUGE:
            raise ValueError(f"stat {name!r} is a {L.KIND_NAMES[found[0]]}, not a gauge")
        lay, row = self.layout, found[1]
        offset = lay.values_off + lay.retired_slot * lay.slot_stride + row * 8
        return self._region.values(lay.retired_slot), row, self._region.fileno(), offset

    def total_view(self, handle):
        """A view of ``handle``'s row in every slot block (active, free and retired), so
        ``sum(view)`` is its total across processes without a seqlock: for gauges, whose
        rows are zero in free slots and in the retired slot. As racy as an atomic read."""
        if not handle.recorded:
            return handle._v[handle._i:handle._i + 1]
        lay = self.layout
        words = self._region.values_block().cast("q")
        return words[handle._i::lay.slot_stride // 8]

    def _write_view(self):
        if self.slot is not None:
            return self._region.values(self.slot)
        if self._scratch is None:
            self._scratch = memoryview(bytearray(self.layout.max_rows * 8)).cast("q")
        return self._scratch

    def _count_overflow(self) -> None:
        if self.slot is not None:
            self.counter(OVERFLOW_STAT).inc()
            return
        region = self._region
        with region.lock():
            kind, row = self.catalog.lookup(OVERFLOW_STAT)
            region.values(self.layout.retired_slot)[row] += 1

    # -- reads ---------------------------------------------------------------------------

    def _sum_rows(self, rows: int, start: int = 0) -> list[int]:
        """Per-row totals over active slots and the retired slot (caller handles the seqlock)."""
        region = self._region
        blocks = [region.values(s)[start:rows].tolist() for s in self._read_slots()]
        if len(blocks) == 1:
            return blocks[0]
        return list(map(sum, zip(*blocks)))

    def _read_slots(self) -> list[int]:
        region = self._region
        active = [s for s in range(self.layout.max_slots) if region.slot_word(s, L.S_STATE) == L.SLOT_ACTIVE]
        active.append(self.layout.retired_slot)
        return active

    def _row_total(self, handle) -> int:
        row = handle._i
        return self._region.read_stable(lambda: self._sum_rows(row + 1, row)[0])

    def _histogram_total(self, handle) -> HistogramValue:
        row = handle._i
        return HistogramValue.from_rows(self._region.read_stable(lambda: self._sum_rows(row + L.HIST_ROWS, row)))

    def snapshot(self, with_used: bool = False) -> "Snapshot":
        """Consistent totals of every stat, for rendering."""
        region = self._region

        def read():
            self.catalog.refresh()
            entries = list(self.catalog.entries)
            rows = region.header[L.H_ROWS_USED]
            blocks = [region.values(s)[:rows].tolist() for s in self._read_slots()]
            totals = blocks[0] if len(blocks) == 1 else list(map(sum, zip(*blocks)))
            used = list(map(any, zip(*blocks))) if with_used else None
            limits.derive(entries, totals, self._render_cache)
            return Snapshot(entries, totals, used, self._render_cache)

        return region.read_stable(read)

    def items(self, include_internal: bool = True):
        """(name, kind, value) for every stat: int for counters/gauges, HistogramValue for histograms."""
        return self.snapshot().items(include_internal)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap; handles made here keep working but write to private scratch memory."""
        if self._handles:
            self.slot = None
            scratch = self._write_view()
            for handle in self._handles.values():
                handle._rebind(scratch)
        self._region.close()

    def unlink(self) -> None:
        """Final stop: remove the file at ``path`` if it is still this one (mappings stay
        valid until closed); a file that replaced it there is not ours."""
        with contextlib.suppress(FileNotFoundError):
            if self.fileno() >= 0:
                st, mine = os.stat(self.path), os.fstat(self.fileno())
                if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
                    return
            os.unlink(self.path)


class Snapshot:
    """Totals of every catalog entry at one instant."""

    def __init__(self, entries, totals, used, cache=None):
        self.entries = entries    # [(name, kind, row)]
        self.totals = totals      # per-row totals
        self.used = used          # per-row "any slot non-zero", when asked for
        self.cache = {} if cache is None else cache  # renderers' layouts, keyed by catalog size

    def value(self, kind: int, row: int):
        if kind == L.HISTOGRAM:
            return HistogramValue.from_rows(self.totals[row:row + L.HIST_ROWS])
        return self.totals[row]

    def is_used(self, kind: int, row: int) -> bool:
        """Envoy's "used" approximated: some slot (or the retired slot) holds a non-zero value."""
        if kind == L.HISTOGRAM:
            return any(self.used[row:row + L.HIST_BUCKET_ROWS])
        return self.used[row]

    def select(self, filter_re=None, used_only: bool = False):
        """(name, kind, row) of the public stats (names not starting with ``_``) that pass the filters."""
        for entry in self.entries:
            name, kind, row = entry
            if name.startswith("_"):
                continue
            if filter_re is not None and not filter_re.search(name):
                continue
            if used_only and not self.is_used(kind, row):
                continue
            yield entry

    def items(self, include_internal: bool = True):
        for name, kind, row in self.entries:
            if include_internal or not name.startswith("_"):
                yield name, L.KIND_NAMES[kind], self.value(kind, row)


def _alive(pid: int, since_ns: int) -> bool:
    """True if ``pid`` still runs as the process recorded at ``since_ns`` (not a zombie, not reused)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= since_ns / 1e9 + _PID_REUSE_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True

"""Byte layout of the shared stats file: one place that says where everything lives.

The file is shared by processes of different proxyd versions during a hot restart, so the
layout is versioned: bump ``VERSION`` on any change here and ``attach`` refuses a mismatch.

    page 0          header: 64-bit words, indexes H_* below
    slot table      max_slots entries of SLOT_ENTRY_BYTES (state, pid, set_ns, role)
    catalog         max_rows entries of ENTRY_BYTES (name offset, name length, kind, row)
    name heap       name_bytes of UTF-8 names (no per-name length limit)
    value blocks    (max_slots + 1) page-aligned blocks of max_rows signed 64-bit values;
                    the last block is the retired slot (folded totals of exited processes)
"""

import mmap
from dataclasses import dataclass

MAGIC = int.from_bytes(b"PRXDSTAT", "little")
VERSION = 1
PAGE = mmap.PAGESIZE

# Header words (signed 64-bit each).
H_MAGIC = 0
H_VERSION = 1
H_MAX_ROWS = 2
H_MAX_SLOTS = 3
H_NAME_BYTES = 4
H_ROWS_USED = 5
H_ENTRIES = 6        # published catalog entries; written last when a name is added
H_NAMES_USED = 7
H_FOLD_SEQ = 8       # seqlock: odd while a fold/reset rewrites values
H_CREATED_NS = 9
H_MASTERS = 10       # masters that claimed a slot since the cold start (hot_restart_generation)
H_SLOT_TABLE_OFF = 11
H_CATALOG_OFF = 12
H_NAMES_OFF = 13
H_VALUES_OFF = 14
H_SLOT_STRIDE = 15
H_HIST_ROWS = 16
HEADER_WORDS = 17

# Slot table entry: 4 words, then the role name (UTF-8, NUL padded).
SLOT_ENTRY_BYTES = 64
S_STATE, S_PID, S_SET_NS, S_SERIAL = 0, 1, 2, 3
SLOT_ROLE_OFF = 32
SLOT_ROLE_BYTES = SLOT_ENTRY_BYTES - SLOT_ROLE_OFF
SLOT_FREE, SLOT_ACTIVE = 0, 1

# Catalog entry: 4 words.
ENTRY_BYTES = 32
E_NAME_OFF, E_NAME_LEN, E_KIND, E_ROW = 0, 1, 2, 3

COUNTER, GAUGE, HISTOGRAM = 1, 2, 3
KIND_NAMES = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}

# Envoy's default histogram buckets (ms). A histogram owns len(BUCKETS) + 1 non-cumulative
# bucket rows (the last is the overflow bucket) and one row for the sum in microseconds.
# The count is not stored: it is the sum of the buckets, so `+Inf` always equals `_count`.
# Floats: bisect of a float latency against float bounds is ~40% faster than against ints.
BUCKETS_MS = (0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
              30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0)
HIST_BUCKET_ROWS = len(BUCKETS_MS) + 1
HIST_SUM_ROW = HIST_BUCKET_ROWS
HIST_ROWS = HIST_BUCKET_ROWS + 1
SUM_SCALE = 1000  # stored sum unit: microseconds

DEFAULT_MAX_ROWS = 65536
DEFAULT_MAX_SLOTS = 64
DEFAULT_NAME_BYTES_PER_ROW = 96


def _page_round(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclass(frozen=True)
class Layout:
    """Offsets derived from the capacities; the header stores both so attach can verify."""

    max_rows: int
    max_slots: int
    name_bytes: int

    @property
    def slot_table_off(self) -> int:
        return PAGE

    @property
    def catalog_off(self) -> int:
        return _page_round(self.slot_table_off + self.max_slots * SLOT_ENTRY_BYTES)

    @property
    def names_off(self) -> int:
        return _page_round(self.catalog_off + self.max_rows * ENTRY_BYTES)

    @property
    def values_off(self) -> int:
        return _page_round(self.names_off + self.name_bytes)

    @property
    def slot_stride(self) -> int:
        return _page_round(self.max_rows * 8)

    @property
    def retired_slot(self) -> int:
        return self.max_slots

    @property
    def file_size(self) -> int:
        return self.values_off + (self.max_slots + 1) * self.slot_stride

    def header_words(self) -> dict:
        return {
            H_MAGIC: MAGIC, H_VERSION: VERSION, H_MAX_ROWS: self.max_rows,
            H_MAX_SLOTS: self.max_slots, H_NAME_BYTES: self.name_bytes,
            H_SLOT_TABLE_OFF: self.slot_table_off, H_CATALOG_OFF: self.catalog_off,
            H_NAMES_OFF: self.names_off, H_VALUES_OFF: self.values_off,
            H_SLOT_STRIDE: self.slot_stride, H_HIST_ROWS: HIST_ROWS,
        }

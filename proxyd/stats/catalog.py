"""The name catalog: stat name -> (kind, first row), shared by every process of the family.

Entries are appended under the file lock and published by bumping the entry count last,
so a reader that sees the count sees complete entries. Each process caches what it has
read and scans only the entries added since, when a lookup misses.
"""

from . import layout as L
from .region import Region


class Catalog:
    def __init__(self, region: Region):
        self._region = region
        self._index: dict[str, tuple[int, int]] = {}
        self.entries: list[tuple[str, int, int]] = []  # (name, kind, row) in catalog order

    def refresh(self) -> None:
        """Read the entries published since the last call."""
        region = self._region
        seen, published = len(self.entries), region.header[L.H_ENTRIES]
        if published == seen:
            return
        step = L.ENTRY_BYTES // 8
        words = region.catalog[seen * step:published * step].tolist()
        first, last = words[L.E_NAME_OFF], words[-step + L.E_NAME_OFF] + words[-step + L.E_NAME_LEN]
        heap = bytes(region.names[first:last])  # names are appended in entry order
        index, entries = self._index, self.entries
        for base in range(0, len(words), step):
            off = words[base + L.E_NAME_OFF] - first
            name = heap[off:off + words[base + L.E_NAME_LEN]].decode("utf-8")
            kind, row = words[base + L.E_KIND], words[base + L.E_ROW]
            entries.append((name, kind, row))
            index[name] = (kind, row)

    def lookup(self, name: str):
        """(kind, row) of ``name``, or None if no process has added it yet."""
        found = self._index.get(name)
        if found is None:
            self.refresh()
            found = self._index.get(name)
        return found

    def add(self, name: str, kind: int):
        """(kind, row) of ``name``, adding it if needed; None when the table is full."""
        found = self.lookup(name)
        if found is not None:
            return found
        region = self._region
        raw = name.encode("utf-8")
        rows = L.HIST_ROWS if kind == L.HISTOGRAM else 1
        with region.lock():
            self.refresh()
            found = self._index.get(name)
            if found is not None:
                return found
            header, lay = region.header, region.layout
            entry, row, name_off = header[L.H_ENTRIES], header[L.H_ROWS_USED], header[L.H_NAMES_USED]
            if row + rows > lay.max_rows or name_off + len(raw) > lay.name_bytes or entry >= lay.max_rows:
                return None
            region.names[name_off:name_off + len(raw)] = raw
            base = entry * (L.ENTRY_BYTES // 8)
            words = region.catalog
            words[base + L.E_NAME_OFF] = name_off
            words[base + L.E_NAME_LEN] = len(raw)
            words[base + L.E_KIND] = kind
            words[base + L.E_ROW] = row
            header[L.H_NAMES_USED] = name_off + len(raw)
            header[L.H_ROWS_USED] = row + rows
            header[L.H_ENTRIES] = entry + 1
            self.refresh()
        return kind, row

    def rows_of_kind(self, kinds) -> list[int]:
        """Every value row that belongs to a stat of one of ``kinds`` (histograms: all their rows)."""
        out = []
        for _, kind, row in self.entries:
            if kind in kinds:
                out.extend(range(row, row + (L.HIST_ROWS if kind == L.HISTOGRAM else 1)))
        return out

"""The mmap'd stats file: creation, attachment, typed views, the name lock and the seqlock.

Locking: adding names, claiming/retiring slots and resetting counters take an exclusive
``flock`` on the stats file itself. The kernel drops a flock when its holder dies, so a
SIGKILLed process can never leave the table locked (the failure of Envoy issue 33446, whose
"initializing" flag lived in memory). Value updates never lock: each slot has one writer.
"""

import contextlib
import fcntl
import mmap
import os
import time

from . import layout as L


class IncompatibleStatsFile(RuntimeError):
    """The file at the path is not a stats file of this layout version."""


class Region:
    """One mapping of the stats file with 64-bit views of its sections."""

    def __init__(self, path: str, fd: int, lay: L.Layout):
        self.path = path
        self.layout = lay
        self._fd = fd
        self._mm = mmap.mmap(fd, lay.file_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        whole = memoryview(self._mm)
        self._whole = whole
        self.header = whole[0:L.PAGE].cast("q")
        self.slot_table = whole[lay.slot_table_off:lay.slot_table_off + lay.max_slots * L.SLOT_ENTRY_BYTES]
        self.slot_words = self.slot_table.cast("q")
        self.catalog = whole[lay.catalog_off:lay.catalog_off + lay.max_rows * L.ENTRY_BYTES].cast("q")
        self.names = whole[lay.names_off:lay.names_off + lay.name_bytes]
        self._values = [
            whole[off:off + lay.max_rows * 8].cast("q")
            for off in (lay.values_off + i * lay.slot_stride for i in range(lay.max_slots + 1))
        ]
        self._lock_depth = 0

    @classmethod
    def create(cls, path: str, max_rows: int, max_slots: int, name_bytes: int) -> "Region":
        """Build a fresh file beside ``path`` and rename it into place (old mappings keep the old inode)."""
        lay = L.Layout(max_rows, max_slots, name_bytes)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, lay.file_size)
            region = cls(path, fd, lay)
            for index, value in lay.header_words().items():
                region.header[index] = value
            region.header[L.H_CREATED_NS] = time.time_ns()
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return region

    @classmethod
    def attach(cls, path: str) -> "Region":
        """Map an existing file after checking magic, version and that its offsets are ours."""
        return cls._attach(os.open(path, os.O_RDWR | os.O_CLOEXEC), path)

    @classmethod
    def attach_fd(cls, fd: int, path: str) -> "Region":
        """Map the file behind an inherited ``fd`` (closed here), whatever ``path`` names now.

        The file is reopened through /proc/self/fd: an own open file description, since
        ``flock`` locks per description and the sender keeps using its own."""
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        finally:
            os.close(fd)
        return cls._attach(own, path)

    @classmethod
    def _attach(cls, fd: int, path: str) -> "Region":
        try:
            head = os.pread(fd, L.HEADER_WORDS * 8, 0)
            if len(head) < L.HEADER_WORDS * 8:
                raise IncompatibleStatsFile(f"{path}: too short to be a stats file")
            words = memoryview(head).cast("q")
            if words[L.H_MAGIC] != L.MAGIC:
                raise IncompatibleStatsFile(f"{path}: bad magic, not a proxyd stats file")
            if words[L.H_VERSION] != L.VERSION:
                raise IncompatibleStatsFile(
                    f"{path}: layout version {words[L.H_VERSION]}, this proxyd needs {L.VERSION}")
            lay = L.Layout(words[L.H_MAX_ROWS], words[L.H_MAX_SLOTS], words[L.H_NAME_BYTES])
            for index, value in lay.header_words().items():
                if words[index] != value:
                    raise IncompatibleStatsFile(f"{path}: header word {index} is {words[index]}, expected {value}")
            if os.fstat(fd).st_size < lay.file_size:
                raise IncompatibleStatsFile(f"{path}: file is shorter than its header says")
            return cls(path, fd, lay)
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        return self._fd

    def values_block(self) -> memoryview:
        """Every slot's value block, retired slot last, as one byte view."""
        lay = self.layout
        return self._whole[lay.values_off:lay.values_off + (lay.max_slots + 1) * lay.slot_stride]

    def values(self, slot: int) -> memoryview:
        """The 64-bit value block of ``slot`` (``layout.retired_slot`` for the retired one)."""
        return self._values[slot]

    def slot_role(self, slot: int) -> str:
        off = slot * L.SLOT_ENTRY_BYTES + L.SLOT_ROLE_OFF
        return bytes(self.slot_table[off:off + L.SLOT_ROLE_BYTES]).rstrip(b"\0").decode("utf-8", "replace")

    def set_slot_role(self, slot: int, role: str) -> None:
        raw = role.encode("utf-8")[:L.SLOT_ROLE_BYTES].ljust(L.SLOT_ROLE_BYTES, b"\0")
        off = slot * L.SLOT_ENTRY_BYTES + L.SLOT_ROLE_OFF
        self.slot_table[off:off + L.SLOT_ROLE_BYTES] = raw

    def slot_word(self, slot: int, word: int) -> int:
        return self.slot_words[slot * (L.SLOT_ENTRY_BYTES // 8) + word]

    def set_slot_word(self, slot: int, word: int, value: int) -> None:
        self.slot_words[slot * (L.SLOT_ENTRY_BYTES // 8) + word] = value

    @contextlib.contextmanager
    def lock(self):
        """Exclusive flock on the file; re-entrant within this process."""
        if self._lock_depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def rewriting(self):
        """Hold the lock and keep the seqlock odd while values move between slots."""
        with self.lock():
            header = self.header
            if header[L.H_FOLD_SEQ] & 1:
                header[L.H_FOLD_SEQ] += 1  # a previous rewriter died mid-way: its lock is gone
            header[L.H_FOLD_SEQ] += 1
            try:
                yield
            finally:
                header[L.H_FOLD_SEQ] += 1

    def read_stable(self, read):
        """Run ``read()`` until no fold or reset overlapped it (seqlock reader side)."""
        header = self.header
        if self._lock_depth:
            return read()
        while True:
            seq = header[L.H_FOLD_SEQ]
            if seq & 1:
                # A rewrite holds the lock: wait for it. If the seq is still odd once we hold
                # the lock, the rewriter died; the next rewrite repairs it, we just read.
                with self.lock():
                    return read()
            result = read()
            if header[L.H_FOLD_SEQ] == seq:
                return result

    def close(self) -> None:
        """Release our views and unmap; views still held by handles keep the mapping alive."""
        for view in (self.header, self.slot_words, self.slot_table, self.catalog, self.names, *self._values):
            view.release()
        self._whole.release()
        with contextlib.suppress(BufferError):
            self._mm.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1

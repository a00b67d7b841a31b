"""One connection's network filters, run as Envoy's `Network::FilterManagerImpl` runs them.

Sans-IO: the connection driver calls `initialize_read_filters()` once, `on_read()` for
every chunk read (and once with end_stream at EOF), and `on_write()` for every write a
filter makes, sending the bytes only if it returns True.
"""
from __future__ import annotations

from proxyd.network.filter import FilterStatus

STOP = FilterStatus.STOP_ITERATION


class _ActiveReadFilter:
    """A read filter's place in the chain, and the callbacks it was given."""

    __slots__ = ("manager", "index", "filter", "initialized", "held", "held_end", "connection")

    @property
    def upstream_host(self) -> str | None:
        """The upstream address the terminal filter connected to (Envoy's upstreamHost())."""
        return self.manager.upstream_host

    @upstream_host.setter
    def upstream_host(self, address: str | None) -> None:
        self.manager.upstream_host = address

    def __init__(self, manager, index: int, read_filter):
        self.manager = manager
        self.index = index
        self.filter = read_filter
        self.initialized = False
        self.held = b""         # bytes this filter stopped on, not yet seen by the next ones
        self.held_end = False
        self.connection = manager.connection

    def continue_reading(self) -> None:
        data, end_stream = self.held, self.held_end
        self.held, self.held_end = b"", False
        self.manager._iterate(self.index + 1, data, end_stream)

    def inject_read_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        self.manager._iterate(self.index + 1, data, end_stream)


class _ActiveWriteFilter:
    __slots__ = ("manager", "filter", "connection")

    def __init__(self, manager, write_filter):
        self.manager = manager
        self.filter = write_filter
        self.connection = manager.connection

    def inject_write_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        """Send `data` through the write filters that run after this one."""
        self.manager._write_from(self, data, end_stream)


class FilterManager:
    __slots__ = ("connection", "upstream_host", "_read", "_write")

    def __init__(self, connection):
        self.connection = connection
        self.upstream_host: str | None = None
        self._read: list[_ActiveReadFilter] = []
        self._write: list[_ActiveWriteFilter] = []  # in run order: last added first

    def add_read_filter(self, read_filter) -> None:
        active = _ActiveReadFilter(self, len(self._read), read_filter)
        self._read.append(active)
        read_filter.initialize_read_filter_callbacks(active)

    def add_write_filter(self, write_filter) -> None:
        active = _ActiveWriteFilter(self, write_filter)
        self._write.insert(0, active)
        init = getattr(write_filter, "initialize_write_filter_callbacks", None)
        if init is not None:
            init(active)

    def add_filter(self, f) -> None:
        """A filter that is both: it reads first and writes last."""
        self.add_read_filter(f)
        self.add_write_filter(f)

    def initialize_read_filters(self) -> bool:
        """Run `on_new_connection` down the chain; False when there is no read filter."""
        if not self._read:
            return False
        self._iterate(0, b"", False)
        return True

    def holding(self) -> bool:
        """A filter stopped on bytes (or an end of stream) it has not let go yet."""
        for active in self._read:
            if active.held or active.held_end:
                return True
        return False

    def has_write_filters(self) -> bool:
        return bool(self._write)

    def terminal(self):
        """The last read filter (the chain's terminal filter), None without any."""
        return self._read[-1].filter if self._read else None

    def on_read(self, data: bytes, end_stream: bool) -> None:
        self._iterate(0, data, end_stream)

    def _iterate(self, start: int, data: bytes, end_stream: bool) -> None:
        chain = self._read
        last = len(chain) - 1
        for i in range(start, last + 1):
            active = chain[i]
            if not active.initialized:
                active.initialized = True
                if active.filter.on_new_connection() is STOP:
                    if i < last and (data or end_stream):
                        active.held += data
                        active.held_end = active.held_end or end_stream
                    return
            if data or end_stream:
                if active.filter.on_data(data, end_stream) is STOP:
                    if i < last:
                        active.held += data
                        active.held_end = active.held_end or end_stream
                    return
                if active.held or active.held_end:  # it stopped before, and goes on now
                    data, active.held = active.held + data, b""
                    end_stream, active.held_end = end_stream or active.held_end, False

    def on_write(self, data: bytes, end_stream: bool) -> bool:
        """Run the write filters; True when the bytes may go to the socket."""
        for active in self._write:
            if active.filter.on_write(data, end_stream) is STOP:
                return False
        return True

    def _write_from(self, after: _ActiveWriteFilter, data: bytes, end_stream: bool) -> None:
        chain = self._write
        for active in chain[chain.index(after) + 1:]:
            if active.filter.on_write(data, end_stream) is STOP:
                return
        self.connection.send(data, end_stream)

"""The network filter contract, shaped like Envoy's `Network::ReadFilter` / `WriteFilter`.

A network filter extension's `create(config, ctx)` is called once per filter chain
config and returns a factory; the factory is called once per connection with the
connection's `FilterManager` and adds the connection's own filter instances to it
(`add_read_filter`, `add_write_filter` or `add_filter`), as Envoy's `FilterFactoryCb`.
Per-connection state lives on those instances.

Read filters see downstream bytes in the order they were added; write filters see
the bytes written to the downstream in the reverse order. Nothing here does I/O: the
manager is driven by a connection driver (`proxyd.network.connection`) or by a test.
"""
from __future__ import annotations

import enum
from typing import Protocol


class FilterStatus(enum.Enum):
    CONTINUE = 0
    """Pass the data (or the new connection) on to the next filter."""
    STOP_ITERATION = 1
    """Stop here. On the read side, bytes this filter stopped on are held by the
    manager and go to the next filters when it calls `continue_reading()`."""


class ConnectionEvent(enum.Enum):
    REMOTE_CLOSE = 0
    LOCAL_CLOSE = 1


class ConnectionCallbacks(Protocol):
    def on_event(self, event: ConnectionEvent) -> None:
        """The connection closed (once, whichever side closed it)."""


class Connection(Protocol):
    """What filters see of the downstream connection."""

    id: int
    remote_address: str
    local_address: str
    draining: bool
    """The listener drains (or its config changed): a filter may close at a good point."""

    def write(self, data: bytes, end_stream: bool = False) -> None:
        """Send `data` downstream through the write filters; `end_stream` half-closes."""

    def close(self) -> None:
        """Close the connection (after what was written so far)."""

    def enable_half_close(self, enabled: bool) -> None:
        """With half-close enabled, a downstream end of stream does not close the
        connection: a filter closes it, or it closes once both directions ended."""

    def add_connection_callbacks(self, callbacks: ConnectionCallbacks) -> None:
        """`callbacks.on_event(event)` is called when the connection closes."""


class ReadFilterCallbacks(Protocol):
    connection: Connection
    upstream_host: str | None
    """The upstream address the terminal filter connected to, set by it (Envoy's
    read callbacks upstreamHost()); None before that."""

    def continue_reading(self) -> None:
        """Resume the read chain after this filter returned STOP_ITERATION: held bytes
        (and a held end of stream) go to the filters after it."""

    def inject_read_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        """Hand `data` to the filters after this one, as if it had been read."""


class ReadFilter(Protocol):
    def initialize_read_filter_callbacks(self, callbacks: ReadFilterCallbacks) -> None: ...

    def on_new_connection(self) -> FilterStatus: ...

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus: ...


class WriteFilter(Protocol):
    def on_write(self, data: bytes, end_stream: bool) -> FilterStatus:
        """STOP_ITERATION drops the write (nothing reaches the socket)."""

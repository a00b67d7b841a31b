"""envoy.filters.network.echo: write every byte read back to the downstream (Envoy's
terminal test filter; useful to see the filter chain contract work on its own)."""
from __future__ import annotations

from proxyd.network.filter import FilterStatus


class EchoFilter:
    __slots__ = ("connection",)

    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.connection = callbacks.connection

    def on_new_connection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.connection.write(data, end_stream)
        return FilterStatus.STOP_ITERATION


def _factory(filter_manager) -> None:
    filter_manager.add_read_filter(EchoFilter())


def create(config, ctx):
    return _factory

"""What the network ext_authz and ratelimit filters share: a read filter that holds the
connection's bytes while a side call (over the internal gRPC client) decides, then lets
them go on or closes the connection.

The call runs in its own greenlet. Resuming hands the held bytes to the later filters
(`continue_reading`); bytes the reading greenlet delivers while a later filter is still
being set up (tcp_proxy connecting upstream) stay held and follow in order, so nothing
overtakes the bytes ahead of it. A connection that closes first kills the call.
"""
from __future__ import annotations

import gevent

from proxyd.network.filter import FilterStatus

WAITING, CALLING, RESUMING, PASSING, CLOSED = range(5)


class SideCallFilter:
    """Subclasses implement `decide() -> bool` (True: go on), run in the call greenlet,
    and start the call with `start()` from on_new_connection or on_data."""
    state = WAITING
    _greenlet = None

    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks
        callbacks.connection.add_connection_callbacks(self)

    def on_event(self, event) -> None:
        """The connection closed: drop a call still running."""
        if self.state in (CALLING, RESUMING, WAITING):
            self.state = CLOSED
        g = self._greenlet
        if g is not None and not g.dead and g is not gevent.getcurrent():
            g.kill(block=False)

    def start(self) -> FilterStatus:
        self.state = CALLING
        self._greenlet = gevent.spawn(self._run)
        return FilterStatus.STOP_ITERATION

    def _run(self) -> None:
        try:
            go = self.decide()
        except Exception:  # noqa: BLE001 - a failed call is the subclass's error case
            go = self.on_error()
        if self.state == CLOSED:
            return
        if not go:
            self.state = CLOSED
            self.callbacks.connection.close()
            return
        self.state = RESUMING
        cb = self.callbacks
        cb.continue_reading()
        while self.state == RESUMING and (cb.held or cb.held_end):
            cb.continue_reading()
        if self.state == RESUMING:
            self.state = PASSING

    def on_error(self) -> bool:
        return False

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        return FilterStatus.CONTINUE if self.state == PASSING else FilterStatus.STOP_ITERATION

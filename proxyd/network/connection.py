"""A downstream connection served by a chain of network filters (`FilterManager`).

The gevent driver of the sans-IO manager: the accepting greenlet reads and feeds the
read filters; any greenlet may write (writes are serialised, and a full socket blocks
the writer, which is the back-pressure). Used for chains other than the HTTP connection
manager or tcp_proxy alone, which keep their own loops.
"""
from __future__ import annotations

import socket

from gevent.event import Event
from gevent.lock import Semaphore

from proxyd.network.filter import ConnectionEvent
from proxyd.network.filter_manager import FilterManager
from proxyd.network.io import WaitingReader, send_all
from proxyd.observability.logging import get_logger
from proxyd.transport.tls import shutdown_write

READ_SIZE = 64 * 1024
_log = None


def _logger():
    global _log
    if _log is None:
        _log = get_logger("network")
    return _log


class FilterChainConnection:
    """It is also the connection's `protocol` for the listener's drain: never idle, so
    a drain leaves it to the drain deadline, as Envoy leaves L4 connections."""

    idle = False
    idle_since = 0.0

    def __init__(self, downstream, factories):
        self.downstream = downstream
        self.sock = downstream.sock
        self.id = downstream.id
        self.remote_address = downstream.remote_address
        self.local_address = downstream.local_address
        self.requested_server_name = downstream.requested_server_name
        self.closed = False
        self.half_close = False
        self.read_ended = False
        self.write_ended = False
        self._callbacks: list = []
        self._wlock = Semaphore()
        self._done = Event()
        self.manager = FilterManager(self)
        for factory in factories:
            factory(self.manager)

    # --- what filters see (proxyd.network.filter.Connection) ---------------------
    @property
    def draining(self) -> bool:
        return self.downstream.draining

    def write(self, data: bytes, end_stream: bool = False) -> None:
        if self.closed or self.write_ended:
            return
        if self.manager.on_write(data, end_stream):
            self.send(data, end_stream)

    def close(self) -> None:
        self._close(ConnectionEvent.LOCAL_CLOSE)

    def enable_half_close(self, enabled: bool) -> None:
        self.half_close = enabled

    def add_connection_callbacks(self, callbacks) -> None:
        self._callbacks.append(callbacks)

    # --- transport -------------------------------------------------------------------
    def send(self, data: bytes, end_stream: bool = False) -> None:
        """Write to the socket (after the write filters)."""
        if self.closed or self.write_ended:
            return
        try:
            with self._wlock:
                if data:
                    send_all(self.sock, data)
                if end_stream:
                    self.write_ended = True
                    shutdown_write(self.sock)
        except OSError:
            self._close(ConnectionEvent.REMOTE_CLOSE)
            return
        if end_stream and self.read_ended:
            self._close(ConnectionEvent.LOCAL_CLOSE)

    def serve(self) -> None:
        """Run until the connection closes."""
        self.downstream.protocol = self
        reader = WaitingReader(self.sock, READ_SIZE)
        try:
            if not self.manager.initialize_read_filters():
                return
            recv, on_read = reader.recv, self.manager.on_read
            while not self.closed:
                try:
                    data = recv()
                except OSError:
                    self._close(ConnectionEvent.REMOTE_CLOSE)
                    return
                if self.closed:
                    return
                if data:
                    on_read(data, False)
                    continue
                self.read_ended = True
                on_read(b"", True)
                if not self.half_close:
                    self._close(ConnectionEvent.REMOTE_CLOSE)
                elif self.write_ended:      # the peer's FIN came last: Envoy's RemoteClose
                    self._close(ConnectionEvent.REMOTE_CLOSE)
                else:
                    self._done.wait()
                return
        except Exception as e:  # noqa: BLE001 - a filter bug ends its connection, not the worker
            _logger().exception("network_filter_failed", connection=self.id, error=str(e))
        finally:
            reader.close()
            self._close(ConnectionEvent.LOCAL_CLOSE)

    def serve_pulled(self) -> None:
        """Run until the connection closes, for a chain whose terminal filter runs its own
        blocking loop (the HTTP connection manager): that loop reads through a
        `ChainSocket`, each read running the filters in front of it (see there)."""
        from proxyd.network.chain_socket import ChainSocket
        downstream = self.downstream
        downstream.protocol = self
        real = self.sock
        sock = ChainSocket(self, real)
        terminal = self.manager.terminal()
        terminal.attach(sock)
        event = ConnectionEvent.LOCAL_CLOSE
        try:
            self.manager.initialize_read_filters()
            if not self.closed:
                downstream.sock = sock
                terminal.serve(downstream)
            if sock.eof or self.read_ended:
                event = ConnectionEvent.REMOTE_CLOSE
        except Exception as e:  # noqa: BLE001 - a filter bug ends its connection, not the worker
            _logger().exception("network_filter_failed", connection=self.id, error=str(e))
        finally:
            downstream.sock = real
            self._close(event)

    def _close(self, event: ConnectionEvent) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the read loop; the listener closes the fd
        except OSError:
            pass
        self._done.set()
        for cb in self._callbacks:
            try:
                cb.on_event(event)
            except Exception as e:  # noqa: BLE001
                _logger().exception("network_filter_failed", connection=self.id, error=str(e))

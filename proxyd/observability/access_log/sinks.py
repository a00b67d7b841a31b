"""Access-log files written off the request path.

`FileSink.write(line)` only appends to an in-memory list. A flusher greenlet per file
hands the joined buffer to a small dedicated gevent ThreadPool, whose thread does the
blocking `os.write` (regular-file writes never return EAGAIN, so a non-blocking fd
would not help; a thread is the only way a slow disk cannot stall the event loop).
Workers are exec'd and never fork, so a thread there is safe; the master never logs
access lines and so never starts one.

Behaviour follows Envoy's AccessLogFileImpl: flush every `flush_interval` (1 s) or as
soon as the buffer passes `min_flush_size` (64 KiB); counters under `access_log_file.`.
A write that is slow or failing makes the buffer grow to `max_buffer` (4 MiB); beyond
that lines are dropped and counted (`lines_dropped`), never waited for.

Files are opened O_APPEND and every write is whole lines, so lines from several
workers sharing one path never interleave (a single write(2) to a regular file is
placed atomically at the end). Pipes only guarantee that up to PIPE_BUF, so writes to
a pipe or socket are split at line boundaries into chunks of at most PIPE_BUF.

One sink per path per process, shared by every logger and config version naming it;
`reopen_all()` (SIGUSR1, POST /reopen_logs) makes each reopen its path on the next
flush, which is what logrotate's rename + signal needs.
"""
from __future__ import annotations

import errno
import os
import select
import stat

import gevent
import gevent.event
import gevent.lock
import gevent.threadpool

FLUSH_INTERVAL = 1.0
MIN_FLUSH_SIZE = 64 * 1024
MAX_BUFFER = 4 * 1024 * 1024
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)

_STD_PATHS = {"/dev/stdout": 1, "/dev/stderr": 2}
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC

_pool: gevent.threadpool.ThreadPool | None = None
_sinks: dict[str, "FileSink"] = {}


def _threadpool() -> gevent.threadpool.ThreadPool:
    """A private pool, so a disk stuck in write(2) cannot starve gevent's resolver."""
    global _pool
    if _pool is None:
        _pool = gevent.threadpool.ThreadPool(2)
    return _pool


class _NullStat:
    def inc(self, n: int = 1) -> None:
        pass

    def set(self, v) -> None:
        pass


class _NullStats:
    def counter(self, _name):
        return _NullStat()

    def gauge(self, _name):
        return _NullStat()


def _is_stream(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _line_chunks(data: bytes, limit: int):
    """Split at newlines into pieces of at most `limit` bytes (a longer line stays whole)."""
    start, n = 0, len(data)
    while start < n:
        if n - start <= limit:
            yield data[start:]
            return
        cut = data.rfind(b"\n", start, start + limit)
        if cut < 0:
            cut = data.find(b"\n", start + limit)
            if cut < 0:
                yield data[start:]
                return
        yield data[start:cut + 1]
        start = cut + 1


def _write_blocking(fd: int, data: bytes, stream: bool):
    """Runs in the pool thread. Returns (bytes written, errno or 0)."""
    written = 0
    chunks = _line_chunks(data, PIPE_BUF) if stream else (data,)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    return written, errno.EIO
                written += n
                view = view[n:]
    except OSError as e:
        return written, e.errno or errno.EIO
    return written, 0


class FileSink:
    """One access-log file in this process (see module docstring)."""

    def __init__(self, path: str, stats=None, flush_interval: float = FLUSH_INTERVAL,
                 min_flush_size: int = MIN_FLUSH_SIZE, max_buffer: int = MAX_BUFFER):
        self.path = path
        self.flush_interval = flush_interval
        self.min_flush_size = min_flush_size
        self.max_buffer = max_buffer
        stats = stats if stats is not None else _NullStats()
        self._c_buffered = stats.counter("access_log_file.write_buffered")
        self._c_completed = stats.counter("access_log_file.write_completed")
        self._c_failed = stats.counter("access_log_file.write_failed")
        self._c_timer = stats.counter("access_log_file.flushed_by_timer")
        self._c_reopen_failed = stats.counter("access_log_file.reopen_failed")
        self._c_dropped = stats.counter("access_log_file.lines_dropped")
        self._g_total = stats.gauge("access_log_file.write_total_buffered")
        self._std = path in _STD_PATHS
        # Opened synchronously at config time so a bad path is a config error, as in Envoy.
        self._fd = _STD_PATHS[path] if self._std else os.open(path, _OPEN_FLAGS, 0o644)
        self._stream = _is_stream(self._fd)
        self._buf: list[str] = []
        self._size = 0
        self._inflight = 0
        self._n_buffered = 0   # published to counters by the flusher, not on the hot path
        self._n_dropped = 0
        self._reopen = False
        self._wake = gevent.event.Event()
        self._lock = gevent.lock.Semaphore()
        self._flusher: gevent.Greenlet | None = None

    # -- hot path -------------------------------------------------------------------
    def write(self, line: str) -> None:
        n = len(line)
        if self._size + self._inflight + n > self.max_buffer:
            self._n_dropped += 1
            return
        self._buf.append(line)
        self._size += n
        self._n_buffered += 1
        if self._size >= self.min_flush_size:
            self._wake.set()
        if self._flusher is None:
            self._flusher = gevent.spawn(self._run)

    # -- control --------------------------------------------------------------------
    def reopen(self) -> None:
        """Reopen the path before the next write (std streams are left alone)."""
        if not self._std:
            self._reopen = True
            self._wake.set()
            if self._flusher is None:
                self._flusher = gevent.spawn(self._run)

    def flush(self) -> None:
        """Write everything buffered now; the calling greenlet waits, the loop does not."""
        with self._lock:
            self._do_reopen_if_asked()
            self._write_out()
        self._publish()

    @property
    def buffered_bytes(self) -> int:
        return self._size + self._inflight

    # -- flusher --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self.flush_interval)
            self._wake.clear()
            with self._lock:
                self._do_reopen_if_asked()
                if self._buf:
                    if not woken:
                        self._c_timer.inc()
                    self._write_out()
            self._publish()

    def _publish(self) -> None:
        if self._n_buffered:
            self._c_buffered.inc(self._n_buffered)
            self._n_buffered = 0
        if self._n_dropped:
            self._c_dropped.inc(self._n_dropped)
            self._n_dropped = 0
        self._g_total.set(self._size + self._inflight)

    def _do_reopen_if_asked(self) -> None:
        if not self._reopen:
            return
        self._reopen = False
        try:
            new_fd = _threadpool().apply(os.open, (self.path, _OPEN_FLAGS, 0o644))
        except OSError:
            self._c_reopen_failed.inc()
            return
        old, self._fd = self._fd, new_fd
        self._stream = _is_stream(new_fd)
        os.close(old)

    def _write_out(self) -> None:
        if not self._buf:
            return
        buf, self._buf = self._buf, []
        self._inflight, self._size = self._size, 0
        data = "".join(buf).encode("utf-8", "surrogateescape")
        try:
            written, err = _threadpool().apply(_write_blocking, (self._fd, data, self._stream))
        finally:
            self._inflight = 0
        if err:
            self._c_failed.inc()
            self._n_dropped += data.count(b"\n", written)
        else:
            self._c_completed.inc()


def get_sink(path: str, stats=None) -> FileSink:
    """The process's sink for `path`, created (and the file opened) on first use."""
    sink = _sinks.get(path)
    if sink is None:
        sink = _sinks[path] = FileSink(path, stats)
    return sink


def reopen_all() -> None:
    """Reopen every access-log file (SIGUSR1 in a worker, POST /reopen_logs)."""
    for sink in list(_sinks.values()):
        sink.reopen()


def flush_all() -> None:
    """Write out every buffer now (worker shutdown/drain end); call from a greenlet."""
    for sink in list(_sinks.values()):
        sink.flush()

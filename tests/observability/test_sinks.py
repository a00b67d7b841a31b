"""Buffered access-log files: timer and size flushes, full disks, reopen, pipes, configs."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import gevent
import pytest
from google.protobuf import any_pb2, json_format

from proxyd.observability.access_log import build_access_logs, sinks
from proxyd.observability.access_log.sinks import FileSink, _line_chunks

from .conftest import FakeStats, make_info


def wait_for(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        gevent.sleep(0.01)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_lines_are_buffered_then_flushed_by_timer(tmp_path, stats):
    path = str(tmp_path / "access.log")
    sink = FileSink(path, stats, flush_interval=0.1)
    sink.write("one\n")
    sink.write("two\n")
    assert read(path) == ""          # write() only buffers
    assert sink.buffered_bytes == 8
    wait_for(lambda: read(path) == "one\ntwo\n")
    wait_for(lambda: stats["access_log_file.write_buffered"] == 2)
    assert stats["access_log_file.flushed_by_timer"] == 1
    assert stats["access_log_file.write_completed"] == 1
    assert stats["access_log_file.write_total_buffered"] == 0


def test_size_threshold_flushes_before_the_timer(tmp_path, stats):
    path = str(tmp_path / "access.log")
    sink = FileSink(path, stats, flush_interval=60, min_flush_size=100)
    for i in range(20):
        sink.write(f"line {i:03d}\n")
    wait_for(lambda: read(path).count("\n") == 20)
    assert stats["access_log_file.flushed_by_timer"] == 0


def test_explicit_flush(tmp_path, stats):
    path = str(tmp_path / "a.log")
    sink = FileSink(path, stats, flush_interval=60)
    sink.write("x\n")
    sink.flush()
    assert read(path) == "x\n"


def test_full_disk_drops_and_counts_without_blocking(tmp_path, stats):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = str(mnt / "access.log")
        sink = FileSink(path, stats, flush_interval=0.02, min_flush_size=8 * 1024,
                        max_buffer=64 * 1024)
        line = "x" * 99 + "\n"
        worst = 0.0
        for _ in range(50):                     # 500 KB into a 64 KB disk, in bursts
            for _ in range(100):
                t0 = time.perf_counter()
                sink.write(line)
                worst = max(worst, time.perf_counter() - t0)
            gevent.sleep(0.03)
        sink.flush()
        assert worst < 0.01, f"write() blocked for {worst * 1000:.1f} ms"
        assert stats["access_log_file.write_failed"] >= 1
        assert stats["access_log_file.lines_dropped"] > 0
        size = os.path.getsize(path)
        assert size <= 64 * 1024
        # every line is either whole on disk or counted as dropped (a torn last line too)
        assert size // 100 + stats["access_log_file.lines_dropped"] == 5000
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_dev_full_counts_write_failed(stats):
    sink = FileSink("/dev/full", stats, flush_interval=60)
    sink.write("a\n")
    sink.write("b\n")
    sink.flush()
    assert stats["access_log_file.write_failed"] == 1
    assert stats["access_log_file.lines_dropped"] == 2


def test_buffer_bound_drops_new_lines_while_a_write_is_stuck(tmp_path, stats):
    """A disk that never returns must cost memory up to max_buffer, then only drops."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # nobody drains it: writes stall
    try:
        sink = FileSink(fifo, stats, flush_interval=0.01, min_flush_size=1, max_buffer=200_000)
        chunk = "y" * 999 + "\n"
        for _ in range(1000):
            sink.write(chunk)
            gevent.sleep(0)
        gevent.sleep(0.1)
        assert sink.buffered_bytes <= 200_000
        sink._publish()
        assert stats["access_log_file.lines_dropped"] > 700
    finally:
        os.close(reader)   # the stuck write now fails with EPIPE and the thread returns


def test_rename_then_reopen_all_writes_to_the_new_file(tmp_path, stats):
    path = str(tmp_path / "access.log")
    sink = sinks.get_sink(path, stats)
    try:
        sink.write("before\n")
        sink.flush()
        os.rename(path, path + ".1")
        sink.write("still old fd\n")
        sink.flush()
        sinks.reopen_all()
        sink.write("after\n")
        sink.flush()
        assert read(path + ".1") == "before\nstill old fd\n"
        assert read(path) == "after\n"
        assert stats["access_log_file.reopen_failed"] == 0
    finally:
        sinks._sinks.pop(path, None)


def test_reopen_failure_keeps_the_old_file(tmp_path, stats):
    d = tmp_path / "d"
    d.mkdir()
    path = str(d / "access.log")
    sink = FileSink(path, stats, flush_interval=60)
    os.rename(path, str(tmp_path / "moved.log"))
    os.rmdir(d)
    sink.reopen()
    sink.write("kept\n")
    sink.flush()
    assert stats["access_log_file.reopen_failed"] == 1
    assert read(str(tmp_path / "moved.log")) == "kept\n"


def test_pipe_writes_are_whole_lines_of_at_most_pipe_buf():
    data = b"".join(b"%05d" % i + b"z" * 100 + b"\n" for i in range(200))
    chunks = list(_line_chunks(data, 4096))
    assert b"".join(chunks) == data
    assert all(len(c) <= 4096 and c.endswith(b"\n") for c in chunks)
    long_line = b"q" * 10000 + b"\n"
    assert list(_line_chunks(b"a\n" + long_line + b"b\n", 4096)) == [b"a\n", long_line, b"b\n"]


def test_workers_sharing_a_file_never_interleave_lines(tmp_path):
    """Several processes appending through their own sinks: every line comes out whole."""
    path = str(tmp_path / "shared.log")
    code = (
        "import sys, gevent\n"
        "from proxyd.observability.access_log.sinks import FileSink\n"
        "s = FileSink(sys.argv[1], flush_interval=0.001, min_flush_size=1000)\n"
        "w = sys.argv[2]\n"
        "for i in range(3000):\n"
        "    s.write(f'{w} {i:05d} ' + w * 300 + '\\n')\n"
        "    if i % 50 == 0: gevent.sleep(0)\n"
        "s.flush()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    procs = [subprocess.Popen([sys.executable, "-c", code, path, w], env=env) for w in "ABCD"]
    assert all(p.wait(60) == 0 for p in procs)
    lines = read(path).splitlines()
    assert len(lines) == 12000
    for ln in lines:
        w, _, rest = ln.split(" ")
        assert rest == w * 300


def to_access_log_list(entries):
    from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
    out = []
    for e in entries:
        e = dict(e)
        tc = e.pop("typed_config")
        msg = json_format.ParseDict(e, AccessLog())
        type_name = tc.pop("@type").removeprefix("type.googleapis.com/")
        from proxyd.config.loader import find_descriptor, message_class
        inner = json_format.ParseDict(tc, message_class(find_descriptor(type_name))())
        anym = any_pb2.Any()
        anym.Pack(inner)
        msg.typed_config.CopyFrom(anym)
        out.append(msg)
    return out


class Ctx:
    def __init__(self):
        self.stats = FakeStats()
        self.node = None


def test_build_access_logs_file_with_filter_and_json(tmp_path):
    path = str(tmp_path / "a.log")
    ctx = Ctx()
    loggers = build_access_logs(to_access_log_list([
        {"name": "errors", "filter": {"status_code_filter": {"comparison": {
            "op": "GE", "value": {"default_value": 500, "runtime_key": "k"}}}},
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3"
                                   ".FileAccessLog", "path": path,
                          "log_format": {"json_format": {"path": "%REQ(:PATH)%",
                                                         "code": "%RESPONSE_CODE%"}}}},
        {"typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3"
                                   ".FileAccessLog", "path": path}},
    ]), ctx)
    assert [lg.name for lg in loggers] == ["errors", ""]
    try:
        assert loggers[0].sink is loggers[1].sink          # one buffer per path
        for code in (200, 503):
            for lg in loggers:
                lg.log(make_info(response_code=code))
        loggers[0].sink.flush()
        lines = read(path).splitlines()
        assert len(lines) == 3
        assert lines[0].startswith("[2016-04-15T20:17:00.310Z] \"POST /api/v1?x=1 HTTP/1.1\" 200")
        assert lines[1] == '{"code":503,"path":"/api/v1?x=1"}'  # sorted, as Envoy
        assert lines[2].startswith("[2016-04-15T20:17:00.310Z] \"POST /api/v1?x=1 HTTP/1.1\" 503")
    finally:
        sinks._sinks.pop(path, None)


def test_build_access_logs_stdout_stderr_and_errors(tmp_path):
    ctx = Ctx()
    loggers = build_access_logs(to_access_log_list([
        {"typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3"
                                   ".StdoutAccessLog"}},
        {"typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3"
                                   ".StderrAccessLog",
                          "log_format": {"text_format_source": {"inline_string": "%FOO%"}}}},
    ][:1]), ctx)
    assert loggers[0].sink.path == "/dev/stdout"
    with pytest.raises(ValueError, match=r"access_log\[0\]\.typed_config: unknown access log "
                                         r"command operator %FOO%"):
        build_access_logs(to_access_log_list([
            {"typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers"
                                       ".stream.v3.StderrAccessLog",
                              "log_format": {"text_format_source": {"inline_string": "%FOO%"}}}},
        ]), ctx)
    with pytest.raises(ValueError, match=r"access_log\[0\]\.typed_config: .*No such file"):
        build_access_logs(to_access_log_list([
            {"typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers"
                                       ".file.v3.FileAccessLog",
                              "path": str(tmp_path / "no" / "dir.log")}}]), ctx)

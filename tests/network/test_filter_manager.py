"""FilterManager without sockets: order, STOP_ITERATION / continue_reading, injection,
write filters in reverse, and what reaches the transport."""
from __future__ import annotations

from proxyd.network.filter import FilterStatus
from proxyd.network.filter_manager import FilterManager

CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP_ITERATION


class FakeConnection:
    """The transport end: records what the write filters let through."""

    def __init__(self):
        self.sent = []
        self.manager = FilterManager(self)

    def write(self, data, end_stream=False):
        if self.manager.on_write(data, end_stream):
            self.send(data, end_stream)

    def send(self, data, end_stream=False):
        self.sent.append((data, end_stream))


class Recorder:
    """A read and write filter that logs calls into a shared list and answers from a
    script of statuses (CONTINUE when the script runs out)."""

    def __init__(self, name, log, new=CONTINUE, data=(), write=()):
        self.name, self.log = name, log
        self.new, self.data, self.write = new, list(data), list(write)
        self.callbacks = None

    def initialize_read_filter_callbacks(self, callbacks):
        self.callbacks = callbacks

    def on_new_connection(self):
        self.log.append((self.name, "new"))
        return self.new

    def on_data(self, data, end_stream):
        self.log.append((self.name, "data", data, end_stream))
        return self.data.pop(0) if self.data else CONTINUE

    def on_write(self, data, end_stream):
        self.log.append((self.name, "write", data, end_stream))
        return self.write.pop(0) if self.write else CONTINUE


def make(*filters):
    conn = FakeConnection()
    for f in filters:
        conn.manager.add_filter(f)
    return conn


def test_read_filters_run_in_order_and_write_filters_in_reverse():
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    conn = make(a, b)
    assert conn.manager.initialize_read_filters()
    conn.manager.on_read(b"x", False)
    conn.write(b"reply")
    assert log == [("a", "new"), ("b", "new"), ("a", "data", b"x", False), ("b", "data", b"x", False),
                   ("b", "write", b"reply", False), ("a", "write", b"reply", False)]
    assert conn.sent == [(b"reply", False)]


def test_no_read_filter_means_nothing_to_run():
    assert not FakeConnection().manager.initialize_read_filters()


def test_stop_on_new_connection_holds_the_rest_until_continue_reading():
    log = []
    a, b = Recorder("a", log, new=STOP, data=[STOP, STOP]), Recorder("b", log)
    conn = make(a, b)
    conn.manager.initialize_read_filters()
    conn.manager.on_read(b"one", False)
    conn.manager.on_read(b"two", True)
    assert log == [("a", "new"), ("a", "data", b"one", False), ("a", "data", b"two", True)]
    a.callbacks.continue_reading()
    assert log[3:] == [("b", "new"), ("b", "data", b"onetwo", True)]


def test_a_filter_that_goes_on_later_passes_what_it_held_with_the_new_bytes():
    log = []
    a, b = Recorder("a", log, data=[STOP, CONTINUE]), Recorder("b", log)
    conn = make(a, b)
    conn.manager.initialize_read_filters()
    conn.manager.on_read(b"he", False)
    conn.manager.on_read(b"llo", False)
    assert [e for e in log if e[0] == "b"] == [("b", "new"), ("b", "data", b"hello", False)]


def test_continue_reading_with_nothing_held_initialises_the_next_filters_only():
    log = []
    a, b = Recorder("a", log, new=STOP), Recorder("b", log)
    conn = make(a, b)
    conn.manager.initialize_read_filters()
    a.callbacks.continue_reading()
    assert log == [("a", "new"), ("b", "new")]


def test_terminal_filter_stopping_holds_nothing():
    log = []
    a, b = Recorder("a", log), Recorder("b", log, data=[STOP, STOP])
    conn = make(a, b)
    conn.manager.initialize_read_filters()
    conn.manager.on_read(b"1", False)
    conn.manager.on_read(b"2", False)
    assert [e for e in log if e[0] == "b" and e[1] == "data"] == [
        ("b", "data", b"1", False), ("b", "data", b"2", False)]


def test_inject_read_data_reaches_only_the_filters_after():
    log = []
    a, b, c = Recorder("a", log), Recorder("b", log), Recorder("c", log)
    conn = make(a, b, c)
    conn.manager.initialize_read_filters()
    del log[:]
    b.callbacks.inject_read_data_to_filter_chain(b"inj", True)
    assert log == [("c", "data", b"inj", True)]


def test_write_filter_stop_drops_the_write():
    log = []
    a, b = Recorder("a", log), Recorder("b", log, write=[STOP])
    conn = make(a, b)
    conn.write(b"secret")
    conn.write(b"ok", end_stream=True)
    assert conn.sent == [(b"ok", True)]
    assert [e[0] for e in log] == ["b", "b", "a"]


def test_inject_write_data_skips_the_injecting_filter_and_those_before_it():
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    seen = {}
    b.initialize_write_filter_callbacks = lambda cb: seen.setdefault("b", cb)
    conn = FakeConnection()
    conn.manager.add_write_filter(a)
    conn.manager.add_write_filter(b)  # added last, runs first
    seen["b"].inject_write_data_to_filter_chain(b"late", False)
    assert log == [("a", "write", b"late", False)]
    assert conn.sent == [(b"late", False)]


def test_held_bytes_go_on_once():
    log = []
    a, b = Recorder("a", log, data=[STOP]), Recorder("b", log)
    conn = make(a, b)
    conn.manager.initialize_read_filters()
    conn.manager.on_read(b"q", False)
    a.callbacks.continue_reading()
    a.callbacks.continue_reading()
    assert [e for e in log if e[0] == "b"] == [("b", "new"), ("b", "data", b"q", False)]

"""Python filters that misbehave, for the guard tests."""
import gevent

from proxyd.http.filters.python import BlockingFilter


class Slow(BlockingFilter):
    def __init__(self, config):
        pass

    def on_request(self, headers):
        gevent.sleep(30)          # hangs far past the filter's timeout


class Raising(BlockingFilter):
    def __init__(self, config):
        pass

    def on_request(self, headers):
        raise KeyError("a bug in on_request")


class NoApi:
    def __init__(self, config):
        pass

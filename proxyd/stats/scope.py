"""A stats scope: a name prefix over the store, and declared handles under it.

Envoy gives each filter a scope (`http.<stat_prefix>.<filter prefix>`); `declare` builds
the handles once per config, so a request only touches attributes.
"""
from __future__ import annotations


class Scope:
    __slots__ = ("store", "prefix")

    def __init__(self, store, prefix: str):
        self.store = store
        self.prefix = prefix

    def scope(self, name: str) -> "Scope":
        """A child scope: `name` is appended (give it its trailing dot)."""
        return Scope(self.store, self.prefix + name)

    def counter(self, name: str):
        return self.store.counter(self.prefix + name)

    def gauge(self, name: str):
        return self.store.gauge(self.prefix + name)

    def histogram(self, name: str):
        return self.store.histogram(self.prefix + name)

    def declare(self, counters=(), gauges=(), histograms=()) -> "Handles":
        """Handles for the named stats, as attributes (`handles.denied.inc()`)."""
        h = Handles()
        for n in counters:
            setattr(h, n, self.counter(n))
        for n in gauges:
            setattr(h, n, self.gauge(n))
        for n in histograms:
            setattr(h, n, self.histogram(n))
        return h


class Handles:
    """Attribute bag of declared stat handles."""

"""proxyd: an Envoy-compatible service and edge proxy (prefork master, gevent workers)."""

__version__ = "0.1.0"

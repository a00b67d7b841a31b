"""envoy.filters.network.thrift_proxy (see proxy.py)."""
from .proxy import create

__all__ = ["create"]

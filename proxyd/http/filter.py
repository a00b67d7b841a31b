"""The HTTP filter contract.

One filter object is built per listener config (from its typed_config) and shared by
every stream of that config; per-stream state lives on the stream. Filters run in the
stream's greenlet, so a filter that calls out (ext_authz, a rate-limit service) simply
blocks its own stream. The router is the terminal decoder filter: it produces the
response.
"""
from __future__ import annotations


class HttpFilter:
    def decode_headers(self, stream) -> bool:
        """Inspect or change `stream.request`. Return False after answering the stream
        (`stream.local_reply(...)`) to stop the chain."""
        return True

    def encode_headers(self, stream, response) -> None:
        """Inspect or change the response head before it is sent downstream."""

"""envoy.compression.gzip.compressor with zlib, at Envoy's defaults: level 6 (zlib's
default), memory level 5, window bits 12 (a gzip wrapper around it), default strategy.
Envoy links zlib-ng, so the bytes differ from Envoy's (the decoded body does not)."""
from __future__ import annotations

import zlib

ENCODING = "gzip"
STAT_PREFIX = "gzip."
_STRATEGIES = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE,
               zlib.Z_FIXED)


class GzipCompressor:
    """One stream's compressor: `compress(data, end_stream)` returns what to send."""
    __slots__ = ("z",)

    def __init__(self, level: int, memory_level: int, window_bits: int, strategy: int):
        self.z = zlib.compressobj(level, zlib.DEFLATED, 16 + window_bits, memory_level, strategy)

    def compress(self, data: bytes, end_stream: bool) -> bytes:
        """Each chunk is flushed (Envoy's Flush state) so a streamed body keeps streaming;
        the end adds the gzip trailer."""
        out = self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH) if data else b""
        return out + self.z.flush(zlib.Z_FINISH) if end_stream else out


class GzipFactory:
    encoding = ENCODING
    stat_prefix = STAT_PREFIX

    def __init__(self, msg):
        def value(field, default):
            return getattr(msg, field).value if msg.HasField(field) else default
        self.level = msg.compression_level or zlib.Z_DEFAULT_COMPRESSION
        self.memory_level = value("memory_level", 5)
        self.window_bits = value("window_bits", 12)
        if not 1 <= self.memory_level <= 9:
            raise ValueError("Gzip.memory_level: value must be inside range [1, 9]")
        if not 9 <= self.window_bits <= 15:
            raise ValueError("Gzip.window_bits: value must be inside range [9, 15]")
        self.strategy = _STRATEGIES[msg.compression_strategy]

    def __call__(self) -> GzipCompressor:
        return GzipCompressor(self.level, self.memory_level, self.window_bits, self.strategy)


def create(msg, ctx=None) -> GzipFactory:
    return GzipFactory(msg)

"""envoy.compression.gzip.compressor and .decompressor with zlib. The compressor at Envoy's
defaults: level 6 (zlib's default), memory level 5, window bits 12 (a gzip wrapper around
it), default strategy; Envoy links zlib-ng, so the bytes differ from Envoy's (the decoded
body does not). The decompressor: window bits 15, gzip only, and Envoy's guard against
compression bombs (one chunk may not inflate more than `max_inflate_ratio`, 100, times).
"""
from __future__ import annotations

import re
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


# zlib's error codes -> the decompressor library's stats (Envoy's chargeErrorStats)
_ZLIB_ERRORS = {-1: "zlib_errno", -2: "zlib_stream_error", -3: "zlib_data_error",
                -4: "zlib_mem_error", -5: "zlib_buf_error", -6: "zlib_version_error"}
DECOMPRESSOR_STATS = ("zlib_errno", "zlib_stream_error", "zlib_data_error", "zlib_mem_error",
                      "zlib_buf_error", "zlib_version_error")
_CODE = re.compile(r"Error (-?\d+)")


class GzipDecompressor:
    """One stream's inflater: `decompress(data)` returns what it decoded. An error counts
    its zlib stat (again for every later chunk, as zlib's broken state answers each call);
    bytes after the end of the gzip member are ignored."""
    __slots__ = ("z", "stats", "ratio", "chunk", "failed")

    def __init__(self, window_bits: int, ratio: int, chunk: int, stats):
        self.z = zlib.decompressobj(16 + window_bits)
        self.stats = stats
        self.ratio = ratio
        self.chunk = chunk
        self.failed = None

    def decompress(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self.failed is not None:
            getattr(self.stats, self.failed).inc()
            return b""
        if self.z.eof:
            return b""
        # Envoy moves output in `chunk_size` pieces and stops once what it moved exceeds
        # max_inflate_ratio times this chunk's input: at most the first whole piece past it
        limit = self.ratio * len(data)
        cap = (limit // self.chunk + 1) * self.chunk
        try:
            out = self.z.decompress(bytes(data), cap)
        except zlib.error as e:
            m = _CODE.search(str(e))
            self.failed = _ZLIB_ERRORS.get(int(m.group(1)) if m else -3, "zlib_data_error")
            getattr(self.stats, self.failed).inc()
            return b""
        if len(out) == cap and (self.z.unconsumed_tail or not self.z.eof):
            self.failed = "zlib_data_error"   # a compression bomb
            self.stats.zlib_data_error.inc()
        return out


class GzipDecompressorFactory:
    encoding = ENCODING
    stat_prefix = STAT_PREFIX
    stat_names = DECOMPRESSOR_STATS

    def __init__(self, msg):
        self.window_bits = msg.window_bits.value if msg.HasField("window_bits") else 15
        self.ratio = msg.max_inflate_ratio.value if msg.HasField("max_inflate_ratio") else 100
        self.chunk = msg.chunk_size.value if msg.HasField("chunk_size") else 4096
        if not 9 <= self.window_bits <= 15:
            raise ValueError("Gzip.window_bits: value must be inside range [9, 15]")
        if not 1 <= self.ratio <= 1032:
            raise ValueError("Gzip.max_inflate_ratio: value must be inside range [1, 1032]")

    def __call__(self, stats) -> GzipDecompressor:
        return GzipDecompressor(self.window_bits, self.ratio, self.chunk, stats)


def create(msg, ctx=None):
    if ".decompressor." in msg.DESCRIPTOR.full_name:
        return GzipDecompressorFactory(msg)
    return GzipFactory(msg)

"""envoy.compression.zstd.compressor and .decompressor on the `zstandard` binding, at
Envoy's defaults: level 3, no checksum, the level's own strategy. Each chunk ends a zstd
block (Envoy's Flush state), so a streamed body keeps streaming."""
from __future__ import annotations

import zstandard

ENCODING = "zstd"
STAT_PREFIX = "zstd."
# Envoy's Strategy enum: DEFAULT, FAST .. BTULTRA2 (zstd's own numbering)
_STRATEGIES = (None, zstandard.STRATEGY_FAST, zstandard.STRATEGY_DFAST,
               zstandard.STRATEGY_GREEDY, zstandard.STRATEGY_LAZY, zstandard.STRATEGY_LAZY2,
               zstandard.STRATEGY_BTLAZY2, zstandard.STRATEGY_BTOPT, zstandard.STRATEGY_BTULTRA,
               zstandard.STRATEGY_BTULTRA2)
_BLOCK = 128 * 1024
DECOMPRESSOR_STATS = ("zstd_generic_error", "zstd_dictionary_error",
                      "zstd_checksum_wrong_error", "zstd_memory_error")


class ZstdStreamCompressor:
    __slots__ = ("c",)

    def __init__(self, compressor):
        self.c = compressor.compressobj()

    def compress(self, data: bytes, end_stream: bool) -> bytes:
        out = self.c.compress(data) + self.c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) \
            if data else b""
        return out + self.c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH) if end_stream else out


class ZstdFactory:
    encoding = ENCODING
    stat_prefix = STAT_PREFIX

    def __init__(self, msg):
        level = msg.compression_level.value if msg.HasField("compression_level") else 3
        if level > 22:
            raise ValueError("Zstd.compression_level: value must be inside range [1, 22]")
        strategy = _STRATEGIES[msg.strategy]
        if strategy is None:
            self.compressor = zstandard.ZstdCompressor(level=level,
                                                       write_checksum=msg.enable_checksum)
        else:
            params = zstandard.ZstdCompressionParameters.from_level(
                level, strategy=strategy, write_checksum=int(msg.enable_checksum))
            self.compressor = zstandard.ZstdCompressor(compression_params=params)

    def __call__(self) -> ZstdStreamCompressor:
        return ZstdStreamCompressor(self.compressor)


class ZstdDecompressor:
    """One stream's decoder (frames one after another, as Envoy's); a broken stream counts
    its library stat and decodes nothing more, and so does one chunk that inflates more
    than 100 times (what Envoy 1.40 answers, measured)."""
    __slots__ = ("d", "stats", "failed")

    def __init__(self, stats):
        self.d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self.stats = stats
        self.failed = False

    def decompress(self, data: bytes) -> bytes:
        if self.failed or not data:
            return b""
        try:
            out = self.d.decompress(bytes(data))
        except zstandard.ZstdError as e:
            self.failed = True
            text = str(e).lower()
            if "checksum" in text:
                self.stats.zstd_checksum_wrong_error.inc()
            elif "dictionary" in text:
                self.stats.zstd_dictionary_error.inc()
            elif "memory" in text:
                self.stats.zstd_memory_error.inc()
            else:
                self.stats.zstd_generic_error.inc()
            return b""
        if len(out) > 100 * len(data):
            # Envoy's guard against compression bombs: one generic error, at most one zstd
            # block (128 KiB) of what this input inflated to, and nothing after
            self.failed = True
            self.stats.zstd_generic_error.inc()
            return out[:_BLOCK]
        return out


class ZstdDecompressorFactory:
    encoding = ENCODING
    stat_prefix = STAT_PREFIX
    stat_names = DECOMPRESSOR_STATS

    def __init__(self, msg):
        pass   # chunk_size only tunes the output buffer

    def __call__(self, stats) -> ZstdDecompressor:
        return ZstdDecompressor(stats)


def create(msg, ctx=None):
    if ".decompressor." in msg.DESCRIPTOR.full_name:
        return ZstdDecompressorFactory(msg)
    return ZstdFactory(msg)

"""envoy.compression.brotli.compressor and .decompressor on Google's `brotli` binding, at
Envoy's defaults: quality 3, window bits 18, input block bits 24, the generic encoder
mode. Each chunk is flushed, so a streamed body keeps streaming."""
from __future__ import annotations

import brotli

ENCODING = "br"
STAT_PREFIX = "brotli."
# Envoy's EncoderMode: DEFAULT, GENERIC, TEXT, FONT (DEFAULT is brotli's generic)
_MODES = (brotli.MODE_GENERIC, brotli.MODE_GENERIC, brotli.MODE_TEXT, brotli.MODE_FONT)
DECOMPRESSOR_STATS = ("brotli_error", "brotli_output_overflow", "brotli_redundant_input")


def _value(msg, field, default):
    return getattr(msg, field).value if msg.HasField(field) else default


class BrotliCompressor:
    __slots__ = ("c",)

    def __init__(self, quality: int, window_bits: int, block_bits: int, mode: int):
        self.c = brotli.Compressor(mode=mode, quality=quality, lgwin=window_bits,
                                   lgblock=block_bits)

    def compress(self, data: bytes, end_stream: bool) -> bytes:
        out = self.c.process(data) + self.c.flush() if data else b""
        return out + self.c.finish() if end_stream else out


class BrotliFactory:
    encoding = ENCODING
    stat_prefix = STAT_PREFIX

    def __init__(self, msg):
        self.quality = _value(msg, "quality", 3)
        self.window_bits = _value(msg, "window_bits", 18)
        self.block_bits = _value(msg, "input_block_bits", 24)
        if self.quality > 11:
            raise ValueError("Brotli.quality: value must be less than or equal to 11")
        if not 10 <= self.window_bits <= 24:
            raise ValueError("Brotli.window_bits: value must be inside range [10, 24]")
        if not 16 <= self.block_bits <= 24:
            raise ValueError("Brotli.input_block_bits: value must be inside range [16, 24]")
        self.mode = _MODES[msg.encoder_mode]

    def __call__(self) -> BrotliCompressor:
        return BrotliCompressor(self.quality, self.window_bits, self.block_bits, self.mode)


class BrotliDecompressor:
    """One stream's decoder: `decompress(data)` returns what Envoy's would pass on.

    Envoy moves output in `chunk_size` pieces and checks, after each step of the decoder,
    whether what it already moved exceeds 100 times this call's input (its guard against
    compression bombs): then it counts brotli_error and brotli_output_overflow and passes on
    the piece in hand; the rest waits in the decoder for the next call (an empty end of
    stream included). A broken stream counts brotli_error and decodes nothing more."""
    __slots__ = ("d", "stats", "chunk", "pending", "failed")

    def __init__(self, stats, chunk: int):
        self.d = brotli.Decompressor()
        self.stats = stats
        self.chunk = chunk
        self.pending = b""
        self.failed = False

    def decompress(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        if data:
            if self.d.is_finished():
                self.stats.brotli_redundant_input.inc()
                return b""
            try:
                self.pending += self.d.process(bytes(data))
            except brotli.error:
                self.failed = True
                self.stats.brotli_error.inc()
                return b""
        limit = 100 * len(data)
        out = bytearray()
        pending, c = self.pending, self.chunk
        while True:
            piece, pending = pending[:c], pending[c:]
            if len(out) > limit:
                self.stats.brotli_error.inc()
                self.stats.brotli_output_overflow.inc()
                out += piece
                break
            out += piece
            if not pending:
                break
        self.pending = pending
        return bytes(out)


class BrotliDecompressorFactory:
    encoding = ENCODING
    stat_prefix = STAT_PREFIX
    stat_names = DECOMPRESSOR_STATS

    def __init__(self, msg):
        # disable_ring_buffer_reallocation only tunes memory use
        self.chunk = _value(msg, "chunk_size", 4096)

    def __call__(self, stats) -> BrotliDecompressor:
        return BrotliDecompressor(stats, self.chunk)


def create(msg, ctx=None):
    if ".decompressor." in msg.DESCRIPTOR.full_name:
        return BrotliDecompressorFactory(msg)
    return BrotliFactory(msg)

"""Which host a key goes to: Envoy's key hash and its consistent-hash load balancers.

The key hash is Envoy's `MurmurHash::murmurHash2` (libstdc++'s 64-bit `std::hash` of a
string, seed 0xc70f6907) of the key, or of its `{hashtag}` with `enable_hashtagging`.
`RingHash` (ketama) and `Maglev` place hosts as Envoy's `ring_hash_lb` / `maglev_lb`
do (xxHash64 of "ip:port_i"), so proxyd and Envoy in front of the same Redis hosts send a
key to the same host.
"""
from __future__ import annotations

import bisect
import functools
import math

import xxhash

_M64 = (1 << 64) - 1
_MUL = (0xc6a4a793 << 32) + 0x5bd1e995
STD_HASH_SEED = 0xc70f6907
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
DEFAULT_MAGLEV_TABLE_SIZE = 65537


@functools.lru_cache(maxsize=1 << 16)
def murmur_hash2(key: bytes, seed: int = STD_HASH_SEED) -> int:
    """(Cached: hot keys repeat, and the loop is ~2 us per key in Python.)"""
    n = len(key)
    h = (seed ^ (n * _MUL)) & _M64
    aligned = n & ~7
    from_bytes = int.from_bytes
    for i in range(0, aligned, 8):
        d = (from_bytes(key[i:i + 8], "little") * _MUL) & _M64
        d = ((d ^ (d >> 47)) * _MUL) & _M64
        h = ((h ^ d) * _MUL) & _M64
    if n & 7:
        h = ((h ^ from_bytes(key[aligned:], "little")) * _MUL) & _M64
    h = ((h ^ (h >> 47)) * _MUL) & _M64
    return h ^ (h >> 47)


def hashtag(key: bytes, enabled: bool) -> bytes:
    """Redis Cluster's rule: the bytes between the first '{' and the next '}', if any."""
    if not enabled:
        return key
    start = key.find(b"{")
    if start < 0:
        return key
    end = key.find(b"}", start + 1)
    if end < 0 or end == start + 1:
        return key
    return key[start + 1:end]


def _normalized(hosts):
    total = sum(h.weight for h in hosts)
    return [(h, h.weight / total) for h in hosts]


class RingHash:
    __slots__ = ("_hashes", "_hosts")

    def __init__(self, hosts, min_ring_size: int = DEFAULT_MIN_RING_SIZE,
                 max_ring_size: int = DEFAULT_MAX_RING_SIZE, murmur: bool = False):
        entries = []
        weights = _normalized(hosts) if hosts else []
        if weights:
            lowest = min(w for _h, w in weights)
            scale = min(math.ceil(lowest * min_ring_size) / lowest, float(max_ring_size))
            current = target = 0.0
            for host, weight in weights:
                prefix = host.addr_str.encode() + b"_"
                target += scale * weight
                i = 0
                while current < target:
                    k = prefix + b"%d" % i
                    entries.append((murmur_hash2(k) if murmur else xxhash.xxh64_intdigest(k), host))
                    i += 1
                    current += 1
        entries.sort(key=lambda e: e[0])
        self._hashes = [e[0] for e in entries]
        self._hosts = [e[1] for e in entries]

    def choose(self, h: int):
        """The first host at or after `h` on the ring (wrapping)."""
        if not self._hosts:
            return None
        i = bisect.bisect_left(self._hashes, h)
        return self._hosts[i if i < len(self._hosts) else 0]


class Maglev:
    __slots__ = ("_table", "_size")

    def __init__(self, hosts, table_size: int = DEFAULT_MAGLEV_TABLE_SIZE):
        self._size = table_size
        table = [None] * table_size if hosts else []
        weights = _normalized(hosts) if hosts else []
        entries = []
        for host, weight in weights:
            key = host.addr_str.encode()
            entries.append([host, xxhash.xxh64_intdigest(key, 0) % table_size,
                            xxhash.xxh64_intdigest(key, 1) % (table_size - 1) + 1, weight, 0.0, 0])
        top = max((w for _h, w in weights), default=0.0)
        filled, iteration = 0, 1
        while entries and filled < table_size:
            for e in entries:
                if filled >= table_size:
                    break
                host, offset, skip, weight, target, nxt = e
                if iteration * weight < target:
                    continue
                e[4] = target + top
                c = (offset + skip * nxt) % table_size
                while table[c] is not None:
                    nxt += 1
                    c = (offset + skip * nxt) % table_size
                table[c] = host
                e[5] = nxt + 1
                filled += 1
            iteration += 1
        self._table = table

    def choose(self, h: int):
        return self._table[h % self._size] if self._table else None


def _crc16_table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()
SLOTS = 16384


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot: CRC16 (XMODEM) of the key's hashtag (always on), mod 16384."""
    crc = 0
    table = _CRC16
    for b in hashtag(key, True):
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc & (SLOTS - 1)

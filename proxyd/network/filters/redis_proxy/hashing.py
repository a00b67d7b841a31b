"""Which host a key goes to: Envoy's key hash and its consistent-hash load balancers.

The key hash is Envoy's `MurmurHash::murmurHash2` (libstdc++'s 64-bit `std::hash` of a
string, seed 0xc70f6907) of the key, or of its `{hashtag}` with `enable_hashtagging`.
`RingHash` (ketama) and `Maglev` place hosts as Envoy's `ring_hash_lb` / `maglev_lb`
do (xxHash64 of "ip:port_i"), so proxyd and Envoy in front of the same Redis hosts send a
key to the same host.
"""
from __future__ import annotations

from proxyd.upstream.hash_lb import (DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_RING_SIZE,  # noqa: F401
                                     DEFAULT_MIN_RING_SIZE, STD_HASH_SEED, murmur_hash2,
                                     normalized)
from proxyd.upstream import hash_lb


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


class RingHash(hash_lb.RingHash):
    """The cluster's ring over all of its hosts (redis_proxy hashes every key on it)."""

    __slots__ = ()

    def __init__(self, hosts, min_ring_size: int = DEFAULT_MIN_RING_SIZE,
                 max_ring_size: int = DEFAULT_MAX_RING_SIZE, murmur: bool = False):
        super().__init__(normalized(hosts), min_ring_size, max_ring_size, murmur)


class Maglev(hash_lb.Maglev):
    __slots__ = ()

    def __init__(self, hosts, table_size: int = DEFAULT_MAGLEV_TABLE_SIZE):
        super().__init__(normalized(hosts), table_size)


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

"""Envoy's consistent-hash tables: the ketama ring (`ring_hash_lb`) and Maglev (`maglev_lb`).

Both are built from (host, normalized weight) pairs in the host set's order and place a
host by xxHash64 of its address string ("ip:port", "[ip6]:port"; the hostname with
`use_hostname_for_hashing`), exactly as Envoy 1.40 does, so the same request hash picks
the same host in proxyd and in Envoy in front of the same hosts. `choose(h, attempt)`:
`attempt` > 0 is a re-pick for a retry host predicate, moved the way Envoy moves it.
"""
from __future__ import annotations

import functools
import math

import xxhash

DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
DEFAULT_MAGLEV_TABLE_SIZE = 65537
_M64 = (1 << 64) - 1
_MUL = (0xc6a4a793 << 32) + 0x5bd1e995
STD_HASH_SEED = 0xc70f6907


@functools.lru_cache(maxsize=1 << 16)
def murmur_hash2(key: bytes, seed: int = STD_HASH_SEED) -> int:
    """Envoy's MurmurHash::murmurHash2 (libstdc++'s 64-bit std::hash of a string).
    (Cached: hot keys repeat, and the loop is ~2 us per key in Python.)"""
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


def normalized(hosts, locality_weight: float = 1.0) -> list:
    """Envoy's normalizeHostWeights: [(host, weight * locality_weight / sum of weights)]."""
    total = sum(h.weight for h in hosts)
    return [(h, h.weight * locality_weight / total) for h in hosts] if total else []


def hash_key(host, use_hostname: bool) -> bytes:
    return (host.hostname if use_hostname and host.hostname else host.addr_str).encode()


class RingHash:
    """`ring_hash_lb.cc`: (scale * weight) points per host, running sums so the ring
    stays mostly stable, sorted by hash; lookups are its ketama binary search."""

    __slots__ = ("_hashes", "_hosts", "size", "min_hashes", "max_hashes")

    def __init__(self, weights, min_ring_size: int = DEFAULT_MIN_RING_SIZE,
                 max_ring_size: int = DEFAULT_MAX_RING_SIZE, murmur_hash: bool = False,
                 use_hostname: bool = False):
        """`weights`: [(host, normalized weight)] (see `normalized`)."""
        entries = []
        self.size = self.min_hashes = self.max_hashes = 0
        if weights:
            lowest = min(w for _h, w in weights)
            scale = min(math.ceil(lowest * min_ring_size) / lowest, float(max_ring_size))
            self.size = ring_size = math.ceil(scale)
            lo, hi = ring_size, 0
            current = target = 0.0
            h64 = murmur_hash2 if murmur_hash else xxhash.xxh64_intdigest
            for host, weight in weights:
                prefix = hash_key(host, use_hostname) + b"_"
                target += scale * weight
                i = 0
                while current < target:
                    entries.append((h64(prefix + b"%d" % i), host))
                    i += 1
                    current += 1
                lo, hi = min(lo, i), max(hi, i)
            self.min_hashes, self.max_hashes = lo, hi
        entries.sort(key=lambda e: e[0])
        self._hashes = [e[0] for e in entries]
        self._hosts = [e[1] for e in entries]

    def choose(self, h: int, attempt: int = 0):
        hashes = self._hashes
        n = len(hashes)
        if not n:
            return None
        # Envoy's port of ketama_get_server, quirks included (it relies on signed ints)
        lowp, highp = 0, n
        while True:
            midp = (lowp + highp) // 2
            if midp == n:
                midp = 0
                break
            midval = hashes[midp]
            midval1 = hashes[midp - 1] if midp else 0
            if midval1 < h <= midval:
                break
            if midval < h:
                lowp = midp + 1
            else:
                highp = midp - 1
            if lowp > highp:
                midp = 0
                break
        if attempt > 0:
            midp = (midp + attempt) % n
        return self._hosts[midp]


class Maglev:
    """`maglev_lb.cc`: hosts sorted by hash key, offset xxHash64(key) % M, skip
    xxHash64(key, seed 1) % (M - 1) + 1, filled in turns weighted by normalized weight
    (the original and the compact tables hold the same picks)."""

    __slots__ = ("_table", "_size", "min_entries", "max_entries")

    def __init__(self, weights, table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
                 use_hostname: bool = False):
        self._size = table_size
        self.min_entries = self.max_entries = 0
        M = table_size
        table = [None] * M if weights else []
        hosts, cursor, skips, ws, targets, counts = [], [], [], [], [], []
        # Envoy sorts the hosts by their hash key first, so the fill order (and the
        # table) does not depend on the host set's order
        for key, host, weight in sorted(((hash_key(h, use_hostname), h, w) for h, w in weights),
                                        key=lambda e: e[0]):
            hosts.append(host)
            cursor.append(xxhash.xxh64_intdigest(key, 0) % M)  # (offset + skip * next) % M
            skips.append(xxhash.xxh64_intdigest(key, 1) % (M - 1) + 1)
            ws.append(weight)
            targets.append(0.0)
            counts.append(0)
        top = max(ws, default=0.0)
        taken = bytearray(M)
        n = len(hosts)
        filled, iteration = 0, 1
        while n and filled < M:
            for i in range(n):
                if filled >= M:
                    break
                if iteration * ws[i] < targets[i]:
                    continue
                targets[i] += top
                c, skip = cursor[i], skips[i]
                while taken[c]:  # the next slot of this host's permutation
                    c += skip
                    if c >= M:
                        c -= M
                taken[c] = 1
                table[c] = hosts[i]
                c += skip
                cursor[i] = c - M if c >= M else c
                counts[i] += 1
                filled += 1
            iteration += 1
        if n:
            self.min_entries, self.max_entries = min(counts), max(counts)
        self._table = table

    def choose(self, h: int, attempt: int = 0):
        if not self._table:
            return None
        if attempt > 0:
            # Envoy: "using value with most bits set for the retry attempts"
            h ^= (_M64 - attempt + 1) & _M64
        return self._table[h % self._size]

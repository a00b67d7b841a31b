"""Key hashing and host placement as Envoy computes them."""
from __future__ import annotations

from collections import Counter

from proxyd.network.filters.redis_proxy.hashing import Maglev, RingHash, hashtag, murmur_hash2

# std::hash<std::string> from libstdc++ (g++ 12, x86_64), which Envoy's murmurHash2 is.
LIBSTDCXX = {b"": 6142509188972423790, b"a": 4993892634952068459,
             b"foo": 9631199822919835226, b"hello world": 5577293430985752569,
             b"0123456789abcdef": 10613591747391057286,
             b"user:{42}:profile": 3005475544780715002}


def test_murmur_hash2_is_libstdcxx_std_hash():
    assert {k: murmur_hash2(k) for k in LIBSTDCXX} == LIBSTDCXX


def test_hashtag_follows_redis_cluster():
    assert hashtag(b"user:{42}:profile", True) == b"42"
    assert hashtag(b"user:{42}:profile", False) == b"user:{42}:profile"
    assert hashtag(b"a{}b{c}", True) == b"a{}b{c}"     # empty first tag: the whole key
    assert hashtag(b"a{b", True) == b"a{b"
    assert hashtag(b"{x}{y}", True) == b"x"


class H:
    def __init__(self, port, weight=1):
        self.addr_str, self.weight = "127.0.0.1:%d" % port, weight


def test_ring_spreads_keys_and_moves_few_when_a_host_goes():
    hosts = [H(7000 + i) for i in range(4)]
    ring = RingHash(hosts)
    keys = [b"key:%d" % i for i in range(4000)]
    placed = {k: ring.choose(murmur_hash2(k)) for k in keys}
    share = Counter(h.addr_str for h in placed.values())
    assert len(share) == 4 and min(share.values()) > 600
    smaller = RingHash(hosts[:3])
    moved = sum(1 for k in keys if placed[k] is not hosts[3]
                and smaller.choose(murmur_hash2(k)) is not placed[k])
    # the others get more points each (Envoy's ring size per host), so a few move too
    assert moved < 0.2 * len(keys)


def test_weights_scale_a_hosts_share():
    hosts = [H(7000, 1), H(7001, 3)]
    for lb in (RingHash(hosts), Maglev(hosts, 4099)):
        share = Counter(lb.choose(murmur_hash2(b"k%d" % i)).addr_str for i in range(8000))
        assert 0.65 < share["127.0.0.1:7001"] / 8000 < 0.85


def test_maglev_fills_its_table_and_is_stable():
    hosts = [H(7000 + i) for i in range(3)]
    a, b = Maglev(hosts, 65537), Maglev(hosts, 65537)
    assert all(a.choose(murmur_hash2(b"%d" % i)) is b.choose(murmur_hash2(b"%d" % i))
               for i in range(500))
    assert Maglev([], 7).choose(1) is None and RingHash([]).choose(1) is None

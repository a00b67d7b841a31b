"""The balancer's priority, panic and locality arithmetic (Envoy's load_balancer_impl.cc),
driven through `lb.usable` the way the health sources drive it: a host's shared health
word (proxyd/upstream/health.py) is written here as the master's health checker would
write it, and the picks are counted over many calls."""
import collections

from envoy.config.cluster.v3 import cluster_pb2

from proxyd.stats import StatsStore
from proxyd.upstream import health, lb
from proxyd.upstream.cluster import ClusterStats
from proxyd.upstream.host import Host


def _store(tmp_path):
    store = StatsStore.create(str(tmp_path / "lb.stats"))
    store.bind(store.claim_slot(1))
    return store


def _balancer(store, placed, policy=lb.ROUND_ROBIN, **cfg):
    c = cluster_pb2.Cluster(name="c", lb_policy=policy)
    if "panic" in cfg:
        c.common_lb_config.healthy_panic_threshold.value = cfg["panic"]
    if cfg.get("localities"):
        c.common_lb_config.locality_weighted_lb_config.SetInParent()
    stats = ClusterStats(store, "c")
    return lb.ClusterLb(c, placed, store, stats, publish=True), stats


def _hosts(store, n, start=0):
    hosts = [Host("127.0.0.1", 20000 + start + i, 1, "", store, "c") for i in range(n)]
    for h in hosts:
        h.health = health.find(store, "c", h.addr_str, create=True)
    return hosts


def _set_healthy(value: bool, *hosts) -> None:
    for h in hosts:
        h.health.set(0 if value else health.FAILED_ACTIVE_HC)


def _count(b, n=4000, ctx=None):
    return collections.Counter(b.choose(ctx).address[1] - 20000 for _ in range(n))


def test_load_spills_to_the_next_priority_by_the_overprovisioned_health(tmp_path):
    store = _store(tmp_path)
    p0, p1 = _hosts(store, 4), _hosts(store, 2, start=10)
    b, stats = _balancer(store, [(h, 0, None) for h in p0] + [(h, 1, None) for h in p1])
    assert set(_count(b)) == {0, 1, 2, 3}                # all healthy: P0 takes it all
    _set_healthy(False, p0[0], p0[1])                  # 50 % healthy: 140 * 2 / 4 = 70
    lb.health_changed()
    counts = _count(b)
    share = (counts[2] + counts[3]) / 4000
    assert 0.65 < share < 0.75, counts                     # 70 % stays in P0
    assert set(counts) == {2, 3, 10, 11}
    assert stats.lb_healthy_panic.value() == 0             # total health 100: no panic


def test_panic_uses_every_host_and_counts(tmp_path):
    store = _store(tmp_path)
    hosts = _hosts(store, 4)
    b, stats = _balancer(store, [(h, 0, None) for h in hosts])
    for h in hosts[:3]:
        _set_healthy(False, h)                             # 25 % < 50 %: panic
        lb.health_changed()
    assert set(_count(b, 400)) == {0, 1, 2, 3}
    assert stats.lb_healthy_panic.value() == 400
    _set_healthy(True, hosts[0], hosts[1])             # 75 %: no panic
    lb.health_changed()
    assert set(_count(b, 400)) == {0, 1, 3}
    assert stats.lb_healthy_panic.value() == 400


def test_a_zero_panic_threshold_never_panics(tmp_path):
    store = _store(tmp_path)
    hosts = _hosts(store, 2)
    b, stats = _balancer(store, [(h, 0, None) for h in hosts], panic=0)
    for h in hosts:
        _set_healthy(False, h)
        lb.health_changed()
    assert b.choose() is None                              # 503 UH
    assert stats.lb_healthy_panic.value() == 0


def test_every_priority_in_panic_splits_by_host_count(tmp_path):
    store = _store(tmp_path)
    p0, p1 = _hosts(store, 1), _hosts(store, 3, start=10)
    b, stats = _balancer(store, [(h, 0, None) for h in p0] + [(h, 1, None) for h in p1])
    for h in p0 + p1:
        _set_healthy(False, h)
        lb.health_changed()
    counts = _count(b)
    assert 0.2 < counts[0] / 4000 < 0.3, counts            # 1 host of 4: 25 %


def test_localities_by_weight_and_availability(tmp_path):
    store = _store(tmp_path)
    a, bb = _hosts(store, 2), _hosts(store, 2, start=10)
    placed = ([(h, 0, ("", "a", "", 1)) for h in a] + [(h, 0, ("", "b", "", 1)) for h in bb])
    b, _ = _balancer(store, placed, localities=True)
    assert sum(v for k, v in _count(b).items() if k < 10) == 2000   # 1:1
    _set_healthy(False, a[0])   # locality a: 50 % healthy, min(1, 1.4 * 0.5) = 0.7 of its weight
    lb.health_changed()
    counts = _count(b, 3400)
    assert abs(counts[1] - 1400) <= 1 and counts[0] == 0, counts  # 0.7 : 1 of 3400 picks


def test_retry_predicate_re_picks_inside_the_balancer(tmp_path):
    store = _store(tmp_path)
    hosts = _hosts(store, 3)
    for policy in (lb.ROUND_ROBIN, lb.RANDOM, lb.LEAST_REQUEST, lb.RING_HASH, lb.MAGLEV):
        b, _ = _balancer(store, [(h, 0, None) for h in hosts], policy)
        ctx = lb.LbContext(lambda c: 42)
        first = b.choose(ctx)
        ctx.tried = {first}
        ctx.selection_attempts = 50
        assert all(b.choose(ctx) is not first for _ in range(50)), policy


def test_ring_and_maglev_gauges_are_published(tmp_path):
    store = _store(tmp_path)
    hosts = _hosts(store, 3)
    _balancer(store, [(h, 0, None) for h in hosts], lb.RING_HASH)[0].choose()
    _balancer(store, [(h, 0, None) for h in hosts], lb.MAGLEV)[0].choose()
    g = store.gauge
    assert g("cluster.c.ring_hash_lb.size").value() == 1026   # ceil(1/3 * 1024) * 3
    assert g("cluster.c.ring_hash_lb.min_hashes_per_host").value() == 342
    assert g("cluster.c.maglev_lb.min_entries_per_host").value() in (21845, 21846)

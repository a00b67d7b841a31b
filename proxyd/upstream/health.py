"""Host health shared by the whole family: one 64-bit word of flags per host.

Envoy keeps a host's health flags on the host object, shared by its worker threads;
proxyd's workers are processes, so the flags live in the stats file, as a hidden
shared word (``_hh:<cluster>:<address>``, proxyd.stats.store.shared_word) in the
retired slot's block: it survives worker restarts and hot restarts, and every
worker's load balancer reads it with one memoryview load, no lock.

One writer: the master (proxyd/master/health.py), which runs the active health checks,
decides outlier ejections and applies EDS health_status. Words exist only for clusters
that configure health checks or outlier detection, or whose EDS assignment marks a
host not healthy; a host without a word is healthy.
"""
from __future__ import annotations

INTERNAL = "_hh:"

# Envoy's Host::HealthFlag values that proxyd sets (their /clusters spellings below).
FAILED_ACTIVE_HC = 0x1
FAILED_OUTLIER_CHECK = 0x2
FAILED_EDS_HEALTH = 0x4
DEGRADED_EDS_HEALTH = 0x8
PENDING_ACTIVE_HC = 0x10      # no active check has answered yet
ACTIVE_HC_TIMEOUT = 0x20      # the last failed check timed out
EXCLUDED_VIA_IMMEDIATE_HC_FAIL = 0x40
EDS_STATUS_DRAINING = 0x80

UNHEALTHY = FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK | FAILED_EDS_HEALTH | \
    EXCLUDED_VIA_IMMEDIATE_HC_FAIL | EDS_STATUS_DRAINING
# A degraded host still takes traffic here (Envoy sends it a share only when too few
# hosts are healthy, which needs priority load; the balancer work owns that) but does not
# count in membership_healthy, as in Envoy.
NOT_COUNTED_HEALTHY = UNHEALTHY | DEGRADED_EDS_HEALTH

# Envoy's order and spelling in /clusters health_flags (HostUtility::healthFlagsToString)
_NAMES = ((FAILED_ACTIVE_HC, "/failed_active_hc"), (FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
          (FAILED_EDS_HEALTH, "/failed_eds_health"), (DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
          (PENDING_ACTIVE_HC, "/pending_active_hc"),
          (EXCLUDED_VIA_IMMEDIATE_HC_FAIL, "/excluded_via_immediate_hc_fail"),
          (ACTIVE_HC_TIMEOUT, "/active_hc_timeout"), (EDS_STATUS_DRAINING, "/eds_status_draining"))


def word_name(cluster: str, addr_str: str) -> str:
    return "%s%s:%s" % (INTERNAL, cluster, addr_str)


def passive_fail_name(cluster: str, addr_str: str) -> str:
    """Per-slot counter of upstream responses with x-envoy-immediate-health-check-fail,
    which workers bump and the master's health checker turns into a passive failure."""
    return "_hc:%s:%s:immediate_fail" % (cluster, addr_str)


IMMEDIATE_FAIL_HEADER = "x-envoy-immediate-health-check-fail"


def flags_string(flags: int) -> str:
    """Envoy's /clusters text: 'healthy' or the set flags, e.g. '/failed_active_hc'."""
    if not flags:
        return "healthy"
    return "".join(name for bit, name in _NAMES if flags & bit) or "healthy"


def tracks_health(config) -> bool:
    """Whether a cluster's hosts get health words whatever EDS says."""
    return bool(config.health_checks) or config.HasField("outlier_detection")


class HealthWord:
    """A host's shared flags word, as the worker's load balancer reads it."""

    __slots__ = ("_v", "_i", "epoch")

    def __init__(self, view, row: int, epoch=None):
        self._v = view
        self._i = row
        self.epoch = epoch  # the family's epoch word (HealthWord) a change bumps

    def get(self) -> int:
        return self._v[self._i]

    def set(self, flags: int) -> None:
        """Master only: the word has one writer. A change also bumps the family's
        health epoch, which tells every worker's balancers to re-read health now."""
        v, i = self._v, self._i
        if v[i] != flags:
            v[i] = flags
            e = self.epoch
            if e is not None:
                e._v[e._i] += 1


def find(store, cluster: str, addr_str: str, create: bool):
    """The HealthWord of a host, or None when it has none (always healthy). Only the
    master creates words (``create``); a worker finds those the master made before it
    sent the snapshot naming the host."""
    word = _word(store, word_name(cluster, addr_str), create)
    if word is not None:
        word.epoch = epoch_word(store, create)
    return word


EPOCH_NAME = INTERNAL + "epoch"


def epoch_word(store, create: bool = False):
    """The family's health epoch: a shared counter the master bumps whenever it changes
    a host's flags, so a worker's balancer sees an ejection at its next pick instead of
    polling every host's word (proxyd.upstream.lb). None until the master made it."""
    cached = getattr(store, "health_epoch", None)
    if cached is not None:
        return cached
    word = _word(store, EPOCH_NAME, create)
    if word is not None:
        store.health_epoch = word
    return word


def _word(store, name: str, create: bool):
    if not create and store.catalog.lookup(name) is None:
        return None
    view, row, fd, _off = store.shared_word(name)
    if fd is None and not create:
        return None
    return HealthWord(view, row)

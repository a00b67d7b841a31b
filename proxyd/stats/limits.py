"""Gauges whose value is a function of process-wide sums: circuit-breaker flags.

Envoy's circuit breakers are process-wide counters with a limit; each change sets the
`<resource>_open` gauge (1 once the count reaches the limit) and, with track_remaining,
`remaining_<resource>` (the headroom). Across proxyd's worker processes a count is the
sum of per-slot shares, so those gauges cannot be anyone's share: they are computed from
the sums whenever a snapshot is read. Each enforcing process writes, under
``_cb:<prefix>``, its count share of each resource (``.<r>``), the limit it enforces
(``.<r>_max``, -1 for unlimited) and 1 in ``.procs``; the limit is their average.
Public gauges ``<prefix>.<flag>`` and ``<prefix>.remaining_<r>`` (when some process
created them) show the derived values.
"""

INTERNAL = "_cb:"
UNLIMITED_U64 = 2 ** 64 - 1  # what Envoy shows as the headroom of an unlimited resource
# resource -> its *_open gauge
FLAGS = {"cx": "cx_open", "pending": "rq_pending_open", "rq": "rq_open",
         "retries": "rq_retry_open", "cx_pools": "cx_pool_open"}
_OPEN, _REMAINING = 0, 1


def derive(entries, totals: list, cache: dict) -> None:
    """Overwrite the derived gauges' totals in place (entries: [(name, kind, row)])."""
    key = ("limits", len(entries))
    plan = cache.get(key)
    if plan is None:
        plan = cache[key] = _plan(entries)
    for target, what, count_row, max_row, procs_row in plan:
        procs = totals[procs_row]
        count = totals[count_row] if count_row is not None else 0
        if procs <= 0:
            totals[target] = 0
            continue
        limit = totals[max_row] // procs if max_row is not None else -1
        if what == _OPEN:
            totals[target] = 1 if count > 0 and 0 <= limit <= count else 0
        else:
            totals[target] = max(0, (UNLIMITED_U64 if limit < 0 else limit) - count)


def _plan(entries) -> list:
    rows = {name: row for name, _, row in entries}
    plan = []
    for name, _, row in entries:
        if not (name.startswith(INTERNAL) and name.endswith(".procs")):
            continue
        internal = name[:-len("procs")]
        public = internal[len(INTERNAL):]
        for resource, flag in FLAGS.items():
            count_row = rows.get(internal + resource)
            max_row = rows.get(internal + resource + "_max")
            for target_name, what in ((public + flag, _OPEN),
                                      (public + "remaining_" + resource, _REMAINING)):
                target = rows.get(target_name)
                if target is not None:
                    plan.append((target, what, count_row, max_row, row))
    return plan

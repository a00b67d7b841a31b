"""Envoy's /stats text and JSON shapes, built from a Snapshot."""

import orjson

from . import layout as L

# Envoy's supported quantiles, in percent.
QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)


def _split(snapshot, filter_re, used_only):
    scalars, histograms = [], []
    for name, kind, row in snapshot.select(filter_re, used_only):
        if kind == L.HISTOGRAM:
            histograms.append((name, snapshot.value(kind, row)))
        else:
            scalars.append((name, snapshot.totals[row]))
    scalars.sort()
    histograms.sort(key=lambda item: item[0])
    return scalars, histograms


def _quantiles(hist) -> list:
    """Cumulative quantile estimates, None where nothing was recorded."""
    if hist.count == 0:
        return [None] * len(QUANTILES)
    return [float(f"{hist.quantile(q / 100):.6g}") for q in QUANTILES]


def stats_text(snapshot, filter_re=None, used_only: bool = False) -> str:
    """``name: value`` lines sorted, then histograms as ``name: P0(nan,x) P25(nan,y) ...``.

    Interval values are ``nan``: the store keeps only cumulative histograms.
    """
    scalars, histograms = _split(snapshot, filter_re, used_only)
    lines = [f"{name}: {value}" for name, value in scalars]
    for name, hist in histograms:
        if hist.count == 0:
            lines.append(f"{name}: No recorded values")
            continue
        lines.append(f"{name}: " + " ".join(
            f"P{q:g}(nan,{v:g})" for q, v in zip(QUANTILES, _quantiles(hist))))
    return "\n".join(lines) + "\n" if lines else ""


def stats_json(snapshot, filter_re=None, used_only: bool = False) -> bytes:
    """Envoy's ``{"stats": [{"name", "value"}..., {"histograms": {...}}]}``."""
    scalars, histograms = _split(snapshot, filter_re, used_only)
    stats: list = [{"name": name, "value": value} for name, value in scalars]
    if histograms:
        stats.append({"histograms": {
            "supported_quantiles": list(QUANTILES),
            "computed_quantiles": [
                {"name": name, "values": [{"interval": None, "cumulative": v} for v in _quantiles(hist)]}
                for name, hist in histograms
            ],
        }})
    return orjson.dumps({"stats": stats})

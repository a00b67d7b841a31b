"""Envoy's layered runtime (feature flags and numbers by key), not the runtime directory.

The master builds the layers (bootstrap `layered_runtime`: static, disk, RTDS and admin
layers) and merges them, a later layer overriding an earlier one; the merged entries
travel in every worker snapshot, and `Runtime` answers Envoy's Snapshot getters from them.

A disk layer is Envoy's DiskLayer: the directory `symlink_root/subdirectory[/<node
cluster>]` is walked (at most 16 levels), each regular file a key (its path with `.` for
`/`; dot files too) whose value is the file's text without trailing whitespace. A layer
whose directory does not exist is left out (it is not in /runtime's `layers`); one that
cannot be read counts `runtime.load_error` and is left out. Every load re-reads the disk;
the master reloads when a symlink_root is replaced (Envoy watches for the symlink swap,
`mv -T new root`), on RTDS updates and on `POST /runtime_modify` (the admin layer).

Each entry keeps what Envoy's SnapshotImpl::createEntry derives from a layer value: the
string shown by /runtime, an unsigned integer, a double, a boolean and a FractionalPercent.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import stat
from collections.abc import Mapping
from typing import NamedTuple

from google.protobuf import json_format

DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000,
                0: 100, 1: 10_000, 2: 1_000_000}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_UINT64_MAX = 2 ** 64 - 1


class Entry(NamedTuple):
    raw: str
    uint: int | None = None
    double: float | None = None
    boolean: bool | None = None
    fraction: tuple[int, int] | None = None   # (numerator, denominator as an integer)


def _number_entry(raw: str, v: float) -> Entry:
    """Envoy's setNumberValue: a double; a uint when in range (floored); a bool when integral."""
    finite = math.isfinite(v)
    boolean = v != 0 if finite and v == int(v) and abs(v) < 2 ** 31 else None
    uint = int(v) if finite and 0 <= v <= _UINT64_MAX else None
    return Entry(raw, uint, v, boolean)


def _fraction(d) -> tuple[int, int] | None:
    """A {numerator, denominator} object as (numerator, denominator); None if it is not one."""
    if not isinstance(d, dict) or set(d) - {"numerator", "denominator"}:
        return None
    num, den = d.get("numerator", 0), d.get("denominator", "HUNDRED")
    den = DENOMINATORS.get(den) if isinstance(den, (str, int)) and not isinstance(den, bool) else None
    if den is None or isinstance(num, bool) or not isinstance(num, (int, float)) \
            or num != int(num) or not 0 <= num < 2 ** 32:
        return None
    return int(num), den


def _string(v) -> str:
    """A value as Envoy prints it in /runtime (absl::StrCat for numbers and booleans)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return format(v, ".6g")
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def entry(v) -> Entry:
    """The entry for one layer value (a JSON value of a Struct field)."""
    raw = _string(v)
    if isinstance(v, bool):
        return Entry(raw, boolean=v)
    if isinstance(v, (int, float)):
        return _number_entry(raw, float(v))
    if isinstance(v, dict):
        return Entry(raw, fraction=_fraction(v))
    s = raw.strip()
    e = _number_entry(raw, float(s)) if _NUMBER.fullmatch(s) else Entry(raw)
    if s.lower() in ("true", "false"):
        e = e._replace(boolean=s.lower() == "true")
    if s.startswith("{"):
        try:
            e = e._replace(fraction=_fraction(json.loads(s)))
        except ValueError:
            pass
    return e


def flatten(d: dict, prefix: str = "") -> dict[str, Entry]:
    """A layer (Struct as a dict) as Envoy's dotted keys: nested objects are paths, except a
    FractionalPercent ({numerator, denominator}) or an empty object."""
    out = {}
    for k, v in d.items():
        key = prefix + k
        if isinstance(v, dict) and v and "numerator" not in v and "denominator" not in v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = entry(v)
    return out


MAX_WALK_DEPTH = 16   # Envoy's DiskLayer bound


class DiskLayerError(Exception):
    pass


def disk_layer_path(disk_layer, service_cluster: str) -> str:
    path = disk_layer.symlink_root + "/" + disk_layer.subdirectory
    if disk_layer.append_service_cluster:
        path += "/" + service_cluster
    return path


def read_disk_layer(path: str) -> dict[str, Entry]:
    """The values of a disk layer directory; DiskLayerError if it cannot be read."""
    out: dict[str, Entry] = {}

    def walk(d: str, prefix: str, depth: int) -> None:
        if depth > MAX_WALK_DEPTH:
            raise DiskLayerError("Walk recursion depth exceeded %d" % MAX_WALK_DEPTH)
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            raise DiskLayerError("unable to read %s: %s" % (d, e.strerror)) from None
        for name in names:
            full = d + "/" + name
            key = prefix + "." + name if prefix else name
            try:
                st = os.stat(full)
            except OSError:
                continue                      # a dangling link: no value
            if stat.S_ISDIR(st.st_mode):
                walk(full, key, depth + 1)
            elif stat.S_ISREG(st.st_mode):
                try:
                    with open(full, "rb") as f:
                        text = f.read().decode("utf-8", "replace")
                except OSError as e:
                    raise DiskLayerError("unable to read %s: %s" % (full, e.strerror)) from None
                out[key] = entry(text.replace("\r", "").rstrip())
    walk(path, "", 0)
    return out


def load_disk_layers(bootstrap) -> tuple[dict, int]:
    """({layer name: values, or None when its directory does not exist or cannot be
    read}, number of layers that could not be read)."""
    cluster = bootstrap.node.cluster
    out, errors = {}, 0
    for layer in bootstrap.layered_runtime.layers:
        if layer.HasField("disk_layer"):
            path = disk_layer_path(layer.disk_layer, cluster)
            if not os.path.isdir(path):
                out[layer.name] = None
                continue
            try:
                out[layer.name] = read_disk_layer(path)
            except DiskLayerError:
                out[layer.name] = None
                errors += 1
    return out, errors


def admin_modify(values: dict[str, Entry], changes: Mapping[str, str]) -> None:
    """Envoy's AdminLayer::mergeValues: set each key; an empty value removes it."""
    for key, value in changes.items():
        values.pop(key, None)
        if value != "":
            values[key] = entry(value)


def bootstrap_layers(bootstrap, rtds: Mapping, disk: Mapping | None = None,
                     admin: Mapping | None = None) -> list[tuple[str, dict[str, Entry]]]:
    """[(layer name, {key: Entry})] in bootstrap order; `rtds` maps an RTDS resource name to
    its Runtime.layer Struct (a layer not received yet is empty); `disk` a disk layer's
    name to its values (None: left out); `admin` the admin layer's values."""
    out = []
    disk = disk or {}
    for layer in bootstrap.layered_runtime.layers:
        if layer.HasField("static_layer"):
            out.append((layer.name, flatten(json_format.MessageToDict(layer.static_layer))))
        elif layer.HasField("rtds_layer"):
            struct = rtds.get(layer.rtds_layer.name)
            out.append((layer.name, flatten(json_format.MessageToDict(struct))
                        if struct is not None else {}))
        elif layer.HasField("disk_layer"):
            values = disk.get(layer.name)
            if values is not None:
                out.append((layer.name, values))
        elif layer.HasField("admin_layer"):
            out.append((layer.name, dict(admin or {})))
    return out


def has_admin_layer(bootstrap) -> bool:
    return any(layer.HasField("admin_layer") for layer in bootstrap.layered_runtime.layers)


def symlink_roots(bootstrap) -> list[str]:
    return sorted({layer.disk_layer.symlink_root for layer in bootstrap.layered_runtime.layers
                   if layer.HasField("disk_layer")})


def merge(layers) -> dict[str, Entry]:
    """The final value of each key: later layers override earlier ones."""
    out: dict[str, Entry] = {}
    for _name, values in layers:
        out.update(values)
    return out


class Runtime(Mapping):
    """A worker's view of the merged runtime: a mapping of key -> string value with Envoy's
    typed getters. `update()` swaps in a whole new snapshot at once, so objects holding
    this Runtime (compiled access-log filters) see each snapshot's values."""

    def __init__(self, entries: Mapping[str, Entry] | None = None):
        self._entries = dict(entries or {})

    def update(self, entries: Mapping[str, Entry]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, key: str) -> str:
        return self._entries[key].raw

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: str) -> Entry | None:
        return self._entries.get(key) if key else None

    def get_int(self, key: str, default: int) -> int:
        """Envoy's getInteger: the value when it is a non-negative number, else `default`."""
        e = self.entry(key)
        return e.uint if e is not None and e.uint is not None else default

    def get_double(self, key: str, default: float) -> float:
        e = self.entry(key)
        return e.double if e is not None and e.double is not None else default

    def get_bool(self, key: str, default: bool) -> bool:
        e = self.entry(key)
        return e.boolean if e is not None and e.boolean is not None else default

    def feature_enabled(self, key: str, default_percent: int, random_value: int | None = None) -> bool:
        """Envoy's featureEnabled(key, default): true for min(value, 100) percent of calls."""
        if random_value is None:
            random_value = random.getrandbits(64)
        return random_value % 100 < min(self.get_int(key, default_percent), 100)

    def get_fractional_percent(self, key: str, numerator: int,
                               denominator: int = 100) -> tuple[int, int]:
        """(numerator, denominator) for a RuntimeFractionalPercent: the value when it is a
        FractionalPercent, an integer value as a percentage, else the default."""
        e = self.entry(key)
        if e is not None and e.fraction is not None:
            return e.fraction
        if e is not None and e.uint is not None:
            return e.uint, 100
        return numerator, denominator

    def fractional_percent_enabled(self, key: str, numerator: int, denominator: int = 100,
                                   random_value: int | None = None) -> bool:
        """Envoy's featureEnabled(key, FractionalPercent default, random)."""
        num, den = self.get_fractional_percent(key, numerator, denominator)
        if random_value is None:
            random_value = random.getrandbits(64)
        return random_value % den < num

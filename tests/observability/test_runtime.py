"""proxyd/runtime.py: Envoy's entry typing, layering and Snapshot getters."""
from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format, struct_pb2

from proxyd.runtime import Runtime, bootstrap_layers, entry, merge


def test_entry_types_as_envoy_derives_them():
    e = entry(5.0)
    assert (e.raw, e.uint, e.double, e.boolean, e.fraction) == ("5", 5, 5.0, True, None)
    assert entry(2.5).uint == 2 and entry(2.5).boolean is None and entry(2.5).raw == "2.5"
    assert entry(-3.0).uint is None and entry(-3.0).double == -3.0
    assert entry(1e6).raw == "1e+06" and entry(1e6).uint == 1_000_000
    assert entry(True) == ("true", None, None, True, None)
    assert entry(" 42 ").uint == 42 and entry(" 42 ").raw == " 42 "
    assert entry("TRUE").boolean is True and entry("TRUE").uint is None
    assert entry("1_000").uint is None and entry("inf").double is None
    assert entry({"numerator": 5, "denominator": "TEN_THOUSAND"}).fraction == (5, 10_000)
    assert entry({"numerator": 7}).fraction == (7, 100)
    assert entry('{"numerator": 3, "denominator": "MILLION"}').fraction == (3, 1_000_000)
    assert entry({"numerator": 1, "denominator": "BILLION"}).fraction is None


def test_layers_merge_later_overrides():
    bs = json_format.ParseDict({"layered_runtime": {"layers": [
        {"name": "base", "static_layer": {"a": 1, "b": "x", "n": {"k": 2}}},
        {"name": "rt", "rtds_layer": {"name": "rt0"}},
        {"name": "missing", "rtds_layer": {"name": "nope"}}]}}, bootstrap_pb2.Bootstrap())
    rtds = {"rt0": json_format.ParseDict({"a": 9, "c": True}, struct_pb2.Struct())}
    layers = bootstrap_layers(bs, rtds)
    assert [name for name, _ in layers] == ["base", "rt", "missing"]
    assert layers[2][1] == {}
    merged = merge(layers)
    assert {k: v.raw for k, v in merged.items()} == {"a": "9", "b": "x", "n.k": "2", "c": "true"}


def test_runtime_getters():
    rt = Runtime({"i": entry(30.0), "s": entry("abc"), "b": entry(False),
                  "f": entry({"numerator": 1, "denominator": "TEN_THOUSAND"}), "big": entry(500.0)})
    assert dict(rt) == {"i": "30", "s": "abc", "b": "false", "f": '{"denominator":"TEN_THOUSAND","numerator":1}',
                        "big": "500"}
    assert rt.get_int("i", 7) == 30 and rt.get_int("s", 7) == 7 and rt.get_int("", 7) == 7
    assert rt.get_int("nope", 7) == 7 and rt.get_double("i", 0.5) == 30.0
    assert rt.get_bool("b", True) is False and rt.get_bool("s", True) is True
    assert rt.feature_enabled("i", 0, random_value=29) and not rt.feature_enabled("i", 0, random_value=30)
    assert rt.feature_enabled("big", 0, random_value=99)
    assert rt.feature_enabled("nope", 10, random_value=109) and not rt.feature_enabled("nope", 10, 110)
    assert rt.get_fractional_percent("f", 50) == (1, 10_000)
    assert rt.get_fractional_percent("i", 50) == (30, 100)
    assert rt.get_fractional_percent("s", 50, 1_000_000) == (50, 1_000_000)
    assert rt.fractional_percent_enabled("f", 0, random_value=10_000) is True
    assert rt.fractional_percent_enabled("f", 0, random_value=10_001) is False
    rt.update({"i": entry(1.0)})
    assert list(rt) == ["i"] and rt.get_int("i", 0) == 1 and "s" not in rt

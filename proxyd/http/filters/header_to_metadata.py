"""envoy.filters.http.header_to_metadata: turns request and response headers (or
cookies) into dynamic metadata, as Envoy's header_to_metadata_filter.cc does.

Each rule reads its header (every value, joined with ",") or a cookie. Present and
`on_header_present`: the configured value, or else the header's (through
`regex_value_rewrite`), goes under `metadata_namespace` (default
`envoy.filters.http.header_to_metadata`) / `key`; an empty value adds nothing. Absent and
`on_header_missing`: its (non-empty) value. `remove` drops the header either way (not for a cookie: Envoy refuses that config). Values
over 8 KiB are skipped; NUMBER values that do not parse are skipped; BASE64 values are
decoded first (PROTOBUF_VALUE: a serialized google.protobuf.Value). Metadata is visible to
later filters and in %DYNAMIC_METADATA(...)%.
"""
from __future__ import annotations

import base64
import binascii

from google.protobuf import json_format, struct_pb2

from proxyd import regex
from proxyd.http.filter import FilterHeadersStatus, StreamFilter

DEFAULT_NAMESPACE = "envoy.filters.http.header_to_metadata"
MAX_VALUE = 8 * 1024
_STRING, _NUMBER, _PROTOBUF = 0, 1, 2


def _cookie(headers, name: str) -> str | None:
    for line in headers.get_all("cookie"):
        for part in line.split(";"):
            k, eq, v = part.strip().partition("=")
            if eq and k == name:
                return v.strip('"')
    return None


class _KeyValue:
    def __init__(self, msg, path: str):
        self.namespace = msg.metadata_namespace or DEFAULT_NAMESPACE
        if not msg.key:
            raise ValueError("%s.key: value length must be at least 1 characters" % path)
        self.key = msg.key
        self.value = msg.value
        self.type = msg.type
        self.base64 = msg.encode == 1
        self.rewrite = None
        if msg.HasField("regex_value_rewrite"):
            rw = msg.regex_value_rewrite
            self.rewrite = (regex.compile(rw.pattern.regex), rw.substitution)

    def convert(self, value: str):
        if len(value) > MAX_VALUE:
            return None
        if self.base64:
            try:
                raw = base64.b64decode(value, validate=False)
            except (binascii.Error, ValueError):
                return None
            if self.type == _PROTOBUF:
                v = struct_pb2.Value()
                try:
                    v.ParseFromString(raw)
                except Exception:  # noqa: BLE001 - a value that does not parse is skipped
                    return None
                return json_format.MessageToDict(v)
            value = raw.decode("utf-8", "replace")
        if self.type == _NUMBER:
            try:
                return float(value)
            except ValueError:
                return None
        return value


class _Rule:
    def __init__(self, msg, path: str):
        self.header = msg.header.lower() or None
        self.cookie = msg.cookie or None
        if self.header is None and self.cookie is None:
            raise ValueError("%s: one of header or cookie is required" % path)
        self.present = _KeyValue(msg.on_header_present, path + ".on_header_present") \
            if msg.HasField("on_header_present") else None
        self.missing = _KeyValue(msg.on_header_missing, path + ".on_header_missing") \
            if msg.HasField("on_header_missing") else None
        self.remove = msg.remove
        if self.cookie is not None and self.remove:
            raise ValueError("%s: Cannot specify remove for cookie" % path)

    def extract(self, headers) -> str | None:
        if self.cookie is not None:
            return _cookie(headers, self.cookie)
        vals = headers.get_all(self.header)
        return ",".join(vals) if vals else None

    def apply(self, headers, out: dict) -> None:
        value = self.extract(headers)
        if value is not None and self.present is not None:
            kv = self.present
            v = kv.value or value
            if v:
                if kv.rewrite is not None:
                    v = kv.rewrite[0].sub(kv.rewrite[1], v)
                converted = kv.convert(v)
                if converted is not None:
                    out.setdefault(kv.namespace, {})[kv.key] = converted
        elif value is None and self.missing is not None and self.missing.value:
            kv = self.missing
            converted = kv.convert(kv.value)
            if converted is not None:
                out.setdefault(kv.namespace, {})[kv.key] = converted
        if self.remove:
            headers.remove(self.header)


class HeaderToMetadataFilter(StreamFilter):
    quiet_end = True

    def __init__(self, request_rules, response_rules):
        self.request_rules = request_rules
        self.response_rules = response_rules

    def _write(self, rules, headers, cb) -> None:
        out: dict = {}
        for r in rules:
            r.apply(headers, out)
        for ns, values in out.items():
            cb.stream_info.set_dynamic_metadata(ns, values)

    def decode_headers(self, headers, end_stream: bool):
        if self.request_rules:
            self._write(self.request_rules, headers, self.decoder_callbacks)
        return FilterHeadersStatus.CONTINUE

    def encode_headers(self, headers, end_stream: bool):
        if self.response_rules:
            self._write(self.response_rules, headers, self.encoder_callbacks)
        return FilterHeadersStatus.CONTINUE


def create(msg, ctx):
    req = [_Rule(r, "Config.request_rules[%d]" % i) for i, r in enumerate(msg.request_rules)]
    resp = [_Rule(r, "Config.response_rules[%d]" % i) for i, r in enumerate(msg.response_rules)]
    return lambda chain: chain.add_stream_filter(HeaderToMetadataFilter(req, resp))

"""gRPC health check (HealthCheck.grpc_health_check): grpc.health.v1.Health/Check over
HTTP/2 with `service_name`, `authority` (default: the cluster's name) and
`initial_metadata`; SERVING passes, anything else (another status, a grpc-status that
is not 0, a non-200 answer) fails the host at once, as Envoy's GrpcHealthCheckerImpl.
The messages are two-field protobufs, encoded here so the master needs no gRPC stack."""
from __future__ import annotations

import struct

from proxyd.upstream.health_check import ACTIVE, NETWORK, SUCCESS
from proxyd.upstream.health_check._conn import H2Client, connect

SERVING = 1


def encode_request(service: str) -> bytes:
    raw = service.encode("utf-8")
    msg = b"\x0a" + _varint(len(raw)) + raw if raw else b""
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_status(body: bytes):
    """HealthCheckResponse.status from one length-prefixed message, or None."""
    if len(body) < 5 or body[0] != 0:
        return None
    (n,) = struct.unpack(">I", body[1:5])
    msg = body[5:5 + n]
    i, status = 0, 0  # proto3 default: UNKNOWN
    while i < len(msg):
        key = msg[i]
        i += 1
        if key == 0x08:  # field 1, varint
            shift = status = 0
            while True:
                b = msg[i]
                i += 1
                status |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
        else:  # HealthCheckResponse has one field; stop at anything else
            return status
    return status


class GrpcProbe:
    def __init__(self, settings, ip: str, port: int):
        hc = settings.msg.grpc_health_check
        self.ip, self.port = ip, port
        self.reuse = settings.reuse_connection
        self.authority = hc.authority or settings.cluster_name
        self.body = encode_request(hc.service_name)
        self.meta = [(o.header.key.lower(), o.header.value) for o in hc.initial_metadata]
        self.h2c = None
        self.last_status = 0

    def check(self) -> int:
        try:
            if self.h2c is None or self.h2c.closed:
                self.h2c = H2Client(connect(self.ip, self.port), self.authority)
            headers = [("content-type", "application/grpc"), ("te", "trailers"),
                       ("user-agent", "Envoy/HC")] + self.meta
            status, rheaders, body, trailers = self.h2c.request(
                "POST", "/grpc.health.v1.Health/Check", headers, self.body)
        except Exception:  # noqa: BLE001 - connect, reset, GOAWAY, malformed frames
            self.close()
            return NETWORK
        self.last_status = status
        grpc_status = dict(trailers or rheaders).get("grpc-status")
        ok = status == 200 and grpc_status == "0" and decode_status(body) == SERVING
        if not ok or not self.reuse:
            self.close()
        return SUCCESS if ok else ACTIVE

    def close(self) -> None:
        if self.h2c is not None:
            self.h2c.close()
            self.h2c = None

"""gRPC over HTTP as Envoy treats it: recognising a gRPC request, deadlines from
`grpc-timeout`, and local replies in gRPC's shape (HTTP 200 with grpc-status in a
trailers-only response), because a gRPC client ignores HTTP statuses and bodies.
"""
from __future__ import annotations

from urllib.parse import quote

from proxyd.http.headers import Headers
from proxyd.http.message import ResponseHead

OK = 0
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# Envoy Grpc::Utility::httpToGrpcStatus
_FROM_HTTP = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
              429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}

_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def is_grpc(req) -> bool:
    ct = req.headers.get("content-type")
    return ct is not None and ct.startswith("application/grpc")


def status_from_http(status: int) -> int:
    return _FROM_HTTP.get(status, UNKNOWN)


# Envoy Grpc::Utility::grpcToHttpStatus
_TO_HTTP = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401)


def outlier_status(req, resp) -> int:
    """What the outlier detector hears of a response (Envoy's router): a gRPC request's
    grpc-status in the response headers (a trailers-only answer) as its HTTP mapping,
    else the HTTP status. A grpc-status in trailers is not looked at, as in Envoy."""
    if is_grpc(req):
        g = resp.headers.get("grpc-status")
        if g is not None and g.isdigit():
            n = int(g)
            return _TO_HTTP[n] if n < len(_TO_HTTP) else 500
    return resp.status


def parse_timeout(value: str | None) -> float | None:
    """`grpc-timeout` ("100m", "5S", at most 8 digits and a unit) in seconds; None if
    absent or malformed (then it is ignored, as Envoy does)."""
    if not value or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def format_timeout(seconds: float) -> str:
    ms = max(int(seconds * 1000), 0)
    return "%dm" % ms if ms < 100_000_000 else "%dS" % min(int(seconds), 99_999_999)


def effective_timeout(route, req) -> float:
    """The route's deadline for this request (Envoy FilterUtility::finalTimeout): with
    `max_grpc_timeout` set, a gRPC request's own `grpc-timeout` (less
    `grpc_timeout_offset`) capped by max_grpc_timeout (0: no cap), no deadline if it
    sends none and there is no cap; otherwise the route timeout."""
    cap = route.max_grpc_timeout
    if cap is None or not is_grpc(req):
        return route.timeout
    t = parse_timeout(req.headers.get("grpc-timeout")) or 0.0
    offset = route.grpc_timeout_offset
    if t and offset and t > offset:
        t -= offset
    if cap and (not t or t > cap):
        t = cap
    return t


def local_reply_head(request, status: int, body: bytes | None,
                     grpc_status: int | None = None) -> ResponseHead:
    """A local reply as the head of a trailers-only gRPC response (its grpc-status mapped
    from the HTTP `status` unless given)."""
    msg = (body or b"").decode("utf-8", "replace")
    if grpc_status is None:
        grpc_status = status_from_http(status)
    h = Headers([("content-type", "application/grpc"), ("grpc-status", str(grpc_status))])
    if msg:
        h.add("grpc-message", quote(msg, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"))
    if request.version != "HTTP/2":
        h.add("content-length", "0")
    resp = ResponseHead(200, h)
    resp.content_length = 0
    return resp


def service_and_method(path: str | None) -> tuple[str, str] | None:
    """("pkg.Service", "Method") of a gRPC path `/pkg.Service/Method` (query ignored),
    else None (Envoy's Grpc::Common::resolveServiceAndMethod)."""
    if not path or not path.startswith("/"):
        return None
    parts = path.split("?", 1)[0][1:].split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


class GrpcStats:
    """Envoy's per-cluster gRPC call stats (Grpc::Context::chargeStat):
    `cluster.<name>.<protocol>.<service>.<method>.{<grpc-status>,success,failure,total}`,
    `protocol` "grpc" or "grpc-web". Names are made on first use and kept."""

    def __init__(self, store, protocol: str):
        self.store = store
        self.protocol = protocol
        self._handles: dict = {}

    def _counter(self, name: str):
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = self.store.counter(name)
        return h

    def charge(self, cluster: str, names: tuple[str, str], grpc_status: str | None) -> None:
        if grpc_status is None or not cluster:
            return
        p = "cluster.%s.%s.%s.%s." % (cluster, self.protocol, names[0], names[1])
        self._counter(p + grpc_status).inc()
        self._counter(p + ("success" if grpc_status == "0" else "failure")).inc()
        self._counter(p + "total").inc()

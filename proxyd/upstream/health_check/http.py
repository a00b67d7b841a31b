"""HTTP health check (HealthCheck.http_health_check): GET `path` with Host `host`
(default: the cluster's name) and `User-Agent: Envoy/HC`, over HTTP/1.1 or, with
codec_client_type HTTP2, HTTP/2. A status in expected_statuses (default 200 only)
passes; one in retriable_statuses counts toward unhealthy_threshold; any other fails
the host at once. With reuse_connection the connection stays open between checks."""
from __future__ import annotations

from proxyd.upstream.health_check import ACTIVE, ACTIVE_RETRIABLE, NETWORK, SUCCESS
from proxyd.upstream.health_check._conn import H2Client, connect

_HTTP2 = 1  # envoy.type.v3.CodecClientType.HTTP2 (HTTP1 0, HTTP3 2)


def _ranges(rs, default):
    out = [(r.start, r.end) for r in rs]
    return out or default


class HttpProbe:
    def __init__(self, settings, ip: str, port: int):
        hc = settings.msg.http_health_check
        self.ip, self.port = ip, port
        self.reuse = settings.reuse_connection
        self.host = hc.host or settings.cluster_name
        self.path = hc.path
        self.method = "GET"
        self.expected = _ranges(hc.expected_statuses, [(200, 201)])
        self.retriable = _ranges(hc.retriable_statuses, [])
        self.h2 = hc.codec_client_type == _HTTP2
        self.remove = {h.lower() for h in hc.request_headers_to_remove}
        extra = []
        for opt in hc.request_headers_to_add:
            extra.append((opt.header.key.lower(), opt.header.value))
        self.extra = extra
        self.sock = None
        self.h2c = None
        self.last_status = 0

    def _headers(self) -> list:
        hs = [("user-agent", "Envoy/HC")]
        hs.extend(self.extra)
        return [(k, v) for k, v in hs if k not in self.remove]

    def _classify(self, status: int) -> int:
        self.last_status = status
        if any(a <= status < b for a, b in self.expected):
            return SUCCESS
        if any(a <= status < b for a, b in self.retriable):
            return ACTIVE_RETRIABLE
        return ACTIVE

    def check(self) -> int:
        self.last_status = 0
        try:
            if self.h2:
                return self._check_h2()
            return self._check_h1()
        except OSError:
            self.close()
            return NETWORK
        except Exception:  # noqa: BLE001 - a malformed response is a network failure
            self.close()
            return NETWORK

    def _check_h2(self) -> int:
        if self.h2c is None or self.h2c.closed:
            self.h2c = H2Client(connect(self.ip, self.port), self.host)
        status, _h, _b, _t = self.h2c.request(self.method, self.path, self._headers())
        result = self._classify(status)
        if not self.reuse or result != SUCCESS:
            self.close()
        return result

    def _check_h1(self) -> int:
        from proxyd.http.codec.http1 import END, HEAD, ResponseParser
        if self.sock is None:
            self.sock = connect(self.ip, self.port)
        lines = ["%s %s HTTP/1.1" % (self.method, self.path), "host: %s" % self.host]
        lines.extend("%s: %s" % kv for kv in self._headers())
        if not self.reuse:
            lines.append("connection: close")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        parser = ResponseParser()
        resp = None
        while True:
            data = self.sock.recv(65536)
            if data:
                parser.feed(data)
            elif not parser.feed_eof():
                self.close()
                return NETWORK
            done = False
            while parser.events:
                kind, payload = parser.events.popleft()
                if kind == HEAD and payload.status >= 200:
                    resp = payload
                elif kind == END:
                    done = True
            if done:
                break
        result = self._classify(resp.status)
        if not (self.reuse and resp.keep_alive and not parser.extra) or result != SUCCESS:
            self.close()
        return result

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        if self.h2c is not None:
            self.h2c.close()
            self.h2c = None

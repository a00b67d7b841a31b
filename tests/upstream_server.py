"""A scriptable HTTP/1.1 upstream for tests, run as its own process:

    python tests/upstream_server.py PORT [NAME]

Any path answers; query parameters choose the behaviour (so routing rewrites keep
working on any path):

- default: 200 with a JSON echo {server, method, path, version, headers, body_len,
  body_sha256, body (if under 64 KiB), conn_id, conn_requests}
- status=N            respond with status N (204/304 get no body; HEAD never a body)
- size=N              a body of N bytes (b"0123456789abcdef" repeated) instead of the echo
- chunked=1           send the body with Transfer-Encoding: chunked
- chunk=N             write the body N bytes at a time (default 65536)
- interval=S          sleep S seconds between body writes (slow/streaming response)
- delay=S             sleep S seconds before sending the response head
- close=1             read the request, then close without answering
- close_after=1       answer with Connection: close, then close
- eof=1               no Content-Length nor chunked: the body ends when we close
- hdr=name:value      add a response header (repeatable)
- continue=1          send an interim "100 Continue" before the final response
- fail=N              answer 503 to the first N requests for this exact target (path
                      and query) this server sees, then as the other parameters say

Control endpoints (call them directly, not through the proxy):
    /__upstream/stats  {"connections": n, "requests": n}
    /__upstream/log    the last 200 request heads seen
    /__upstream/reset  zero the counters and the log
"""
from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

PATTERN = b"0123456789abcdef"
STATE = {"connections": 0, "requests": 0, "log": [], "targets": {}}
LOCK = threading.Lock()


class BadRequest(Exception):
    pass


def read_head(f):
    line = f.readline(65537)
    if not line:
        return None
    while line in (b"\r\n", b"\n"):
        line = f.readline(65537)
        if not line:
            return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers = []
    while True:
        h = f.readline(65537)
        if not h:
            raise BadRequest("eof in headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return method, target, version, headers


def iter_body(f, headers):
    hd = {}
    for k, v in headers:
        hd.setdefault(k, v)
    te = hd.get("transfer-encoding", "")
    if "chunked" in te.lower():
        while True:
            size_line = f.readline(1024)
            if not size_line:
                raise BadRequest("eof in chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return
            left = size
            while left:
                data = f.read(min(left, 262144))
                if not data:
                    raise BadRequest("eof in chunk")
                left -= len(data)
                yield data
            f.readline(3)
    elif "content-length" in hd:
        left = int(hd["content-length"])
        while left:
            data = f.read(min(left, 262144))
            if not data:
                raise BadRequest("eof in body")
            left -= len(data)
            yield data


def body_bytes(n):
    full, rest = divmod(n, len(PATTERN))
    return PATTERN * full + PATTERN[:rest]


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        conn_id = []  # numbered at its first proxied request (control calls don't count)
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb", buffering=262144)
        served = 0
        try:
            while True:
                head = read_head(f)
                if head is None:
                    return
                served += 1
                if not self.serve_one(sock, f, head, conn_id, served):
                    return
        except (BadRequest, OSError, ValueError):
            return
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve_one(self, sock, f, head, conn_id, served) -> bool:
        method, target, version, headers = head
        url = urlsplit(target)
        q = parse_qs(url.query)

        def qv(name, default=None):
            return q[name][-1] if name in q else default

        if url.path.startswith("/__upstream/"):
            return self.control(sock, url.path[len("/__upstream/"):])
        with LOCK:
            if not conn_id:
                STATE["connections"] += 1
                conn_id.append(STATE["connections"])
            STATE["requests"] += 1
            seen = STATE["targets"][target] = STATE["targets"].get(target, 0) + 1
            STATE["log"].append({"method": method, "path": target, "version": version,
                                 "headers": headers, "conn_id": conn_id[0]})
            del STATE["log"][:-200]
        if qv("continue"):
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if qv("close"):
            return False
        h = hashlib.sha256()
        n = 0
        kept = []
        for chunk in iter_body(f, headers):
            h.update(chunk)
            n += len(chunk)
            if n <= 65536:
                kept.append(chunk)
        delay = float(qv("delay", 0))
        if delay:
            time.sleep(delay)
        status = 503 if seen <= int(qv("fail", 0)) else int(qv("status", 200))
        if "size" in q:
            size = int(qv("size"))
            body_iter = None
        else:
            echo = {"server": self.server.name, "method": method, "path": target,
                    "version": version, "headers": headers, "body_len": n,
                    "body_sha256": h.hexdigest(), "conn_id": conn_id[0],
                    "conn_requests": served}
            if n <= 65536:
                echo["body"] = b"".join(kept).decode("latin-1")
            payload = json.dumps(echo).encode()
            size = len(payload)
            body_iter = payload
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        chunked = bool(qv("chunked"))
        eof = bool(qv("eof"))
        out = ["HTTP/1.1 %d X\r\n" % status]
        if chunked:
            if status not in (204, 304):
                out.append("transfer-encoding: chunked\r\n")
        elif not eof and status not in (204, 304):
            out.append("content-length: %d\r\n" % size)
        if body_iter is not None:
            out.append("content-type: application/json\r\n")
        for hv in q.get("hdr", []):
            name, _, value = hv.partition(":")
            out.append("%s: %s\r\n" % (name, value))
        keep = not eof and not qv("close_after") and version == "HTTP/1.1" and not any(
            k == "connection" and v.lower() == "close" for k, v in headers)
        if not keep:
            out.append("connection: close\r\n")
        out.append("\r\n")
        sock.sendall("".join(out).encode("latin-1"))
        if no_body:
            return keep
        step = int(qv("chunk", 65536))
        interval = float(qv("interval", 0))
        sent = 0
        while sent < size:
            k = min(step, size - sent)
            off = sent % len(PATTERN)
            data = (body_iter[sent:sent + k] if body_iter is not None
                    else body_bytes(off + k)[off:])
            sock.sendall(b"%x\r\n%s\r\n" % (k, data) if chunked else data)
            sent += k
            if interval and sent < size:
                time.sleep(interval)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return keep

    def control(self, sock, what) -> bool:
        with LOCK:
            if what == "reset":
                STATE.update(connections=0, requests=0, log=[], targets={})
            if what == "log":
                body = json.dumps(STATE["log"]).encode()
            else:
                body = json.dumps({"connections": STATE["connections"],
                                   "requests": STATE["requests"]}).encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        return False


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def main():
    port = int(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else "upstream"
    srv = Server(("127.0.0.1", port), Handler)
    srv.name = name
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()

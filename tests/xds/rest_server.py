"""A REST-JSON xDS management server for the tests (http.server in a thread): answers
`POST /v3/discovery:<type>` with the current snapshot as a proto3-JSON DiscoveryResponse,
304 when the client already has that version (or NACKed the last response), and records
every request body so tests can assert versions, nonces and error_detail."""
from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format

from proxyd.xds import resources as R

PATHS = {
    "/v3/discovery:listeners": R.LISTENER,
    "/v3/discovery:clusters": R.CLUSTER,
    "/v3/discovery:routes": R.ROUTE,
    "/v3/discovery:endpoints": R.ENDPOINT,
    "/v3/discovery:runtime": R.RUNTIME,
}


class Posted:
    """One request as received: path, headers and the JSON body (a dict)."""

    def __init__(self, path: str, headers, body: dict):
        self.path, self.headers, self.body = path, headers, body
        self.type_url = PATHS.get(path)

    @property
    def is_nack(self) -> bool:
        return "error_detail" in self.body

    def __repr__(self):
        b = self.body
        return "<%s v=%r nonce=%r names=%s%s>" % (
            R.SHORT.get(self.type_url, self.path), b.get("version_info", ""),
            b.get("response_nonce", ""), b.get("resource_names", []),
            " NACK %r" % b["error_detail"].get("message") if self.is_nack else "")


class RestXdsServer:
    """`set(type_url, version, [resources])` publishes; `requests` records every POST."""

    def __init__(self):
        self.versions: dict[str, str] = {}
        self.resources: dict[str, list] = {}
        self.sent: dict[str, tuple[str, str]] = {}   # type_url -> (version, nonce) last sent
        self.requests: list[Posted] = []
        self.nonces = itertools.count(1)
        self.lock = threading.Lock()
        self.httpd = None
        self.port = None

    def set(self, type_url: str, version: str, resources) -> None:
        with self.lock:
            self.resources[type_url] = [_any(m) for m in resources]
            self.versions[type_url] = version

    def of_type(self, type_url: str, since: int = 0) -> list[Posted]:
        return [r for r in self.requests[since:] if r.type_url == type_url]

    def wait_for(self, pred, timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.02)
        raise AssertionError("timed out waiting for %s; requests: %s" % (what, self.requests[-20:]))

    def respond(self, path: str, body: dict):
        """(status, response body) for one POST."""
        type_url = PATHS.get(path)
        if type_url is None:
            return 404, b""
        with self.lock:
            version = self.versions.get(type_url)
            if version is None:
                return 304, b""
            last = self.sent.get(type_url)
            if body.get("version_info", "") == version or (
                    "error_detail" in body and last == (version, body.get("response_nonce"))):
                return 304, b""
            names = set(body.get("resource_names") or ())
            res = [a for a in self.resources[type_url]
                   if type_url in R.WILDCARD or not names or _name(a) in names]
            nonce = str(next(self.nonces))
            self.sent[type_url] = (version, nonce)
        resp = discovery_pb2.DiscoveryResponse(version_info=version, resources=res,
                                               type_url=type_url, nonce=nonce)
        return 200, json_format.MessageToJson(resp).encode()

    def start(self) -> "RestXdsServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                server.requests.append(Posted(self.path, dict(self.headers), body))
                status, out = server.respond(self.path, body)
                self.send_response(status)
                if status == 200:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def _any(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _name(a: any_pb2.Any) -> str:
    msg = R.MESSAGES[a.type_url]()
    a.Unpack(msg)
    return R.resource_name(a.type_url, msg)

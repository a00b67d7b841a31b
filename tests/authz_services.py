"""External authorization services for tests, run in threads of the test process:

- `RegoAuthz`: envoy.service.auth.v3.Authorization over grpcio (stubs from xds-protos),
  deciding with a Rego policy evaluated by regopy, as OPA's Envoy plugin does (its input
  is the CheckRequest as JSON: `input.attributes.request.http.headers[...]`);
- `HttpAuthz`: a plain HTTP authorization service (Envoy's raw HTTP mode).

Both record what they were asked (`seen`), to check what proxyd (or Envoy) sent.
"""
from __future__ import annotations

import http.server
import json
import threading
import time

from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.protobuf import json_format
from regopy import Interpreter

from side_services import add_servicer

POLICY = """
package envoy.authz

default decision := {"allow": false}

user := input.attributes.request.http.headers["x-user"]

decision := {"allow": true, "headers": {"x-authz-user": user},
             "response_headers": {"x-authz-said": "ok"},
             "remove": ["x-secret"],
             "metadata": {"user": user}} if { user == "alice" }

decision := {"allow": false, "status": 401, "body": "bob is not welcome",
             "headers": {"x-deny-reason": "bob", "content-type": "application/json"}} if {
    user == "bob"
}

decision := {"allow": true, "headers": {
    "x-body": object.get(input.attributes.request.http, "body", "-"),
    "x-partial": object.get(input.attributes.request.http.headers, "x-envoy-auth-partial-body", "-"),
}} if { user == "dave" }

decision := {"allow": true, "headers": {"x-ctx": input.attributes.context_extensions.tier}} if {
    user == "carol"
}
"""


def evaluate(policy: str, request_json: dict) -> dict:
    interp = Interpreter()
    interp.add_module("authz", policy)
    interp.set_input_term(json.dumps(request_json))
    out = interp.query("x = data.envoy.authz.decision")
    return json.loads(out.binding("x").json())


def _hvo(k, v):
    return {"header": {"key": k, "value": v}}


class _Servicer(pb_grpc.AuthorizationServicer):
    def __init__(self, owner):
        self.owner = owner

    def Check(self, request, context):
        o = self.owner
        req = json_format.MessageToDict(request, preserving_proto_field_name=True)
        o.seen.append(req)
        path = request.attributes.request.http.path
        if path.startswith("/slow"):
            time.sleep(o.slow)
        d = evaluate(o.policy, req)
        resp = {"status": {"code": 0 if d.get("allow") else 7}}
        if d.get("allow"):
            ok = {}
            if d.get("headers"):
                ok["headers"] = [_hvo(k, v) for k, v in d["headers"].items()]
            if d.get("response_headers"):
                ok["response_headers_to_add"] = [_hvo(k, v)
                                                 for k, v in d["response_headers"].items()]
            if d.get("remove"):
                ok["headers_to_remove"] = d["remove"]
            resp["ok_response"] = ok
            if d.get("metadata"):
                resp["dynamic_metadata"] = d["metadata"]
        elif d.get("status") or d.get("body") or d.get("headers"):
            dr = {}
            if d.get("status"):
                dr["status"] = {"code": d["status"]}
            if d.get("body"):
                dr["body"] = d["body"]
            if d.get("headers"):
                dr["headers"] = [_hvo(k, v) for k, v in d["headers"].items()]
            resp["denied_response"] = dr
        return json_format.ParseDict(resp, pb.CheckResponse())


class RegoAuthz:
    def __init__(self, policy: str = POLICY, slow: float = 1.0, credentials=None):
        self.policy = policy
        self.slow = slow
        self.seen: list = []
        self.server, self.port = add_servicer(_Servicer(self),
                                              pb_grpc.add_AuthorizationServicer_to_server,
                                              credentials)

    def stop(self) -> None:
        self.server.stop(0)


class HttpAuthz:
    """Allows `x-user: alice` (200 with x-authz-user and x-envoy-auth-headers-to-remove),
    answers 500 for /error, waits on /slow, denies everything else with 401, a
    WWW-Authenticate header and a body."""

    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                seen.append({"method": self.command, "path": self.path,
                             "headers": [(k.lower(), v) for k, v in self.headers.items()],
                             "body": body.decode("latin-1")})
                if "/slow" in self.path:
                    time.sleep(1.0)
                if "/error" in self.path:
                    return self._reply(500, [], b"oops")
                if self.headers.get("x-user") == "alice":
                    return self._reply(200, [("x-authz-user", "alice"),
                                             ("x-authz-extra", "1"),
                                             ("x-envoy-auth-headers-to-remove", "x-secret")], b"")
                return self._reply(401, [("www-authenticate", "Basic realm=\"t\""),
                                         ("x-deny-reason", "http")], b"who are you?")

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def _reply(self, status, headers, body):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

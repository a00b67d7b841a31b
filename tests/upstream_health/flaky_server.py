"""An HTTP/1.1 upstream that fails on cue, run as its own process:

    python flaky_server.py PORT [PORT ...]

Every port is one upstream with its own state. Control (on the port concerned):
    /__set?status=N      answer N to every request (default 200)
    /__set?hc=N          answer N to the health-check path /hc (default 200)
    /__set?immfail=1     add x-envoy-immediate-health-check-fail to every other answer
    /__state             {"port", "requests", "hc_requests", "last_hc_headers"}
Other paths answer `status` with a JSON body naming the port.
"""
from __future__ import annotations

import http.server
import json
import sys
import threading
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self, code: int, body: bytes, immfail: bool = False) -> None:
            self.send_response(code)
            if immfail:
                self.send_header("x-envoy-immediate-health-check-fail", "true")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/__set":
                with LOCK:
                    for k, v in parse_qs(url.query).items():
                        state[k] = int(v[0])
                return self._answer(200, b"{}")
            if url.path == "/__state":
                with LOCK:
                    return self._answer(200, json.dumps(state).encode())
            with LOCK:
                if url.path == "/hc":
                    state["hc_requests"] += 1
                    state["last_hc_headers"] = {k.lower(): v for k, v in self.headers.items()}
                    code = state["hc"]
                else:
                    state["requests"] += 1
                    code = state["status"]
            self._answer(code, json.dumps({"port": state["port"]}).encode(),
                         immfail=url.path != "/hc" and bool(state["immfail"]))

        do_POST = do_GET

    return Handler


def main() -> None:
    servers = []
    for p in sys.argv[1:]:
        port = int(p)
        state = {"port": port, "status": 200, "hc": 200, "immfail": 0, "requests": 0, "hc_requests": 0,
                 "last_hc_headers": {}}
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
        srv.daemon_threads = True
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

"""listener.access_log: one line per downstream connection, NR when no chain matched."""
import socket
import time

from harness import bootstrap, cluster, free_port, http, listener


def test_listener_access_log_one_line_per_connection(proxyd_factory, upstream, tmp_path):
    log = tmp_path / "listener.log"
    port = free_port()
    lst = listener(port)
    lst["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(log),
        "log_format": {"text_format_source": {
            "inline_string": "%CONNECTION_ID% %DOWNSTREAM_REMOTE_ADDRESS% %DURATION% %RESPONSE_FLAGS%\n"}}}}]
    px = proxyd_factory(bootstrap([lst], [cluster("upstream", [upstream.address])]))
    assert http(px.port, path="/a").status == 200
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        local = "127.0.0.1:%d" % s.getsockname()[1]
        while s.recv(65536):
            pass
    deadline = time.monotonic() + 5
    lines = []
    while time.monotonic() < deadline and len(lines) < 2:
        time.sleep(0.2)
        lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == 2, lines
    conn_id, remote, duration, flags = lines[1].split(" ")
    assert remote == local and flags == "-" and int(duration) >= 0 and int(conn_id) > 0

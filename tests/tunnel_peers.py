"""Real peers for the CONNECT and extended-CONNECT tests: a TCP echo service, an HTTP/1.1
CONNECT server (answers 200, then echoes), and small clients (HTTP/1.1 CONNECT over a
raw socket, HTTP/2 CONNECT and RFC 8441 extended CONNECT with the python `h2` library).
Each server runs on its own threads and 127.0.0.1 port."""
from __future__ import annotations

import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class TcpEcho:
    """Echoes every byte; answers the client's FIN with its own (after echoing what came
    before it). `connect=True`: first reads an HTTP/1.1 request head (a CONNECT), keeps
    it in `heads`, and answers `HTTP/1.1 200 OK` with an `x-up: 1` header."""

    def __init__(self, connect: bool = False):
        self.connect = connect
        self.heads: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            if self.connect:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, rest = buf.split(b"\r\n\r\n", 1)
                self.heads.append(head)
                c.sendall(b"HTTP/1.1 200 OK\r\nx-up: 1\r\n\r\n" + rest)
            while True:
                d = c.recv(65536)
                if not d:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self.sock.close()


def read_head(s: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP/1.1 response head from `s` (status line and headers), and what followed."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise EOFError(buf)
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def read_until_eof(s: socket.socket, have: bytes = b"", timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = have
    while True:
        d = s.recv(65536)
        if not d:
            return out
        out += d


def h1_connect(port: int, target: str, payloads=(b"hello",), timeout: float = 10.0):
    """CONNECT `target` over HTTP/1.1; after a 2xx send each payload and read its echo,
    then half-close and read to EOF. Returns (status line, sorted header lines minus
    date, [echoes], trailing bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
        head, rest = read_head(s)
        lines = head.decode("latin-1").split("\r\n")
        headers = sorted(h.lower() for h in lines[1:] if not h.lower().startswith("date:"))
        echoes = []
        if lines[0].split(" ")[1].startswith("2"):
            for p in payloads:
                s.sendall(p)
                got = rest
                while len(got) < len(p):
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
                echoes.append(got)
                rest = b""
            s.shutdown(socket.SHUT_WR)
        tail = read_until_eof(s, rest, timeout)
        return lines[0], headers, echoes, tail
    finally:
        s.close()


class H2Client:
    """One HTTP/2 connection (prior knowledge) driven with python `h2`; `settings` holds
    the server's SETTINGS once `open()` returned."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        # a GOAWAY (Envoy's drain notice) leaves the connection open for the streams it
        # lets finish (RFC 9113 6.8), where h2 would close it and fail the next frame
        CS, CI = h2.connection.ConnectionState, h2.connection.ConnectionInputs
        t = dict(self.conn.state_machine._transitions)
        for state in (CS.IDLE, CS.CLIENT_OPEN, CS.SERVER_OPEN):
            t[(state, CI.RECV_GOAWAY)] = (None, state)
        self.conn.state_machine._transitions = t
        self.settings: dict = {}
        self.events: list = []
        self.conn.initiate_connection()
        self._flush()
        deadline = time.monotonic() + timeout
        while not self.settings and time.monotonic() < deadline:
            self._read()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read(self) -> bool:
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not d:
            return False
        try:
            events = self.conn.receive_data(d)
        except h2.exceptions.ProtocolError as e:  # the peer broke HTTP/2: say so
            self.events.append(("h2 error", str(e)))
            return False
        for ev in events:
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settings.update({int(k): v.new_value for k, v in ev.changed_settings.items()})
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.events.append(ev)
        self._flush()
        return True

    def _wait(self, pred, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if pred(ev):
                    return ev
            if time.monotonic() > deadline or not self._read():
                return None

    def request(self, headers: list, end_stream: bool = False) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self._flush()
        return sid

    def response(self, sid: int):
        """(status, sorted headers minus date) of stream `sid`, or ("reset", code)."""
        ev = self._wait(lambda e: getattr(e, "stream_id", None) == sid and isinstance(
            e, (h2.events.ResponseReceived, h2.events.StreamReset)))
        if isinstance(ev, h2.events.StreamReset):
            return "reset", int(ev.error_code)
        if ev is None:
            errors = [e for e in self.events if isinstance(e, tuple)]
            return errors[0] if errors else None
        hs = dict(ev.headers)
        goaway = [e.last_stream_id for e in self.events
                  if isinstance(e, h2.events.ConnectionTerminated)]
        out = hs.get(":status"), sorted((k, v) for k, v in ev.headers
                                        if k not in (":status", "date"))
        return out + (("goaway", goaway[0]),) if goaway else out

    def send(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end_stream)
        self._flush()

    def end(self, sid: int) -> None:
        self.conn.end_stream(sid)
        self._flush()

    def received(self, sid: int, n: int, timeout: float = 10.0) -> bytes:
        """Wait until `n` bytes of DATA arrived on `sid` (or it ended); all of them."""
        def got():
            return b"".join(e.data for e in self.events
                            if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
        self._wait(lambda e: len(got()) >= n or (
            getattr(e, "stream_id", None) == sid and isinstance(
                e, (h2.events.StreamEnded, h2.events.StreamReset))), timeout)
        return got()

    def outcome(self, sid: int, timeout: float = 10.0) -> str:
        """How stream `sid` ended: "end" (END_STREAM), "reset:<code>", or "open"."""
        ev = self._wait(lambda e: getattr(e, "stream_id", None) == sid and isinstance(
            e, (h2.events.StreamEnded, h2.events.StreamReset)), timeout)
        if ev is None:
            return "open"
        if isinstance(ev, h2.events.StreamReset):
            return "reset:%d" % int(ev.error_code)
        return "end"

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:  # noqa: BLE001 (best effort)
            pass
        self.sock.close()


def h2_connect(port: int, authority: str, payload: bytes = b"hello") -> tuple:
    """An HTTP/2 CONNECT to `authority`: (server SETTINGS_ENABLE_CONNECT_PROTOCOL,
    response, echo of `payload`, how the stream ended after our END_STREAM)."""
    c = H2Client(port)
    try:
        sid = c.request([(":method", "CONNECT"), (":authority", authority)])
        resp = c.response(sid)
        echo = None
        if resp and resp[0] == "200":
            c.send(sid, payload)
            echo = c.received(sid, len(payload))
            c.end(sid)
        return c.settings.get(8, 0), resp, echo, c.outcome(sid)
    finally:
        c.close()


def ws_frame(payload: bytes | str, opcode: int | None = None) -> bytes:
    """One masked client WebSocket frame (text for str, binary for bytes)."""
    from websockets.frames import Frame, Opcode
    if opcode is None:
        opcode = Opcode.TEXT if isinstance(payload, str) else Opcode.BINARY
    data = payload.encode() if isinstance(payload, str) else payload
    return Frame(Opcode(opcode), data).serialize(mask=True)


def ws_parse(data: bytes) -> list:
    """The server's (unmasked) WebSocket frames in `data`: [(opcode, payload)]; a frame
    cut short at the end is left out."""
    out = []
    i = 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if j + n > len(data):
            break
        out.append((op, bytes(data[j:j + n])))
        i = j + n
    return out


def h2_websocket(port: int, path: str, messages=("hello",), handshake: bool = True,
                 authority: str = "ws.test", timeout: float = 10.0) -> tuple:
    """WebSocket over HTTP/2 (RFC 8441 extended CONNECT) with the python `h2` client:
    `handshake` adds the HTTP/1.1 Sec-WebSocket-Key/-Version an HTTP/1.1 upstream wants.
    Sends each message, then a close frame. Returns (SETTINGS_ENABLE_CONNECT_PROTOCOL,
    response, [(opcode, payload)] received, how the stream ended)."""
    c = H2Client(port)
    try:
        headers = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                   (":path", path), (":authority", authority)]
        if handshake:
            headers += [("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                        ("sec-websocket-version", "13")]
        sid = c.request(headers)
        resp = c.response(sid)
        frames = []
        if resp and resp[0] == "200":
            def frames_after(n):  # wait for n frames (or the stream's end)
                c._wait(lambda e: len(ws_parse(c.received(sid, 0, 0))) >= n or (
                    getattr(e, "stream_id", None) == sid and isinstance(
                        e, (h2.events.StreamEnded, h2.events.StreamReset))))
                return ws_parse(c.received(sid, 0, 0))
            frames = frames_after(1)  # the server speaks first
            for m in list(messages) + [None]:
                if m is None:
                    c.send(sid, ws_frame(b"\x03\xe8", 8))  # close, 1000
                else:
                    c.send(sid, ws_frame(m))
                frames = frames_after(len(frames) + 1)
        outcome = c.outcome(sid) if resp and resp[0] == "200" else None
        if outcome == "open":
            c.end(sid)
            outcome = "open, then " + c.outcome(sid)
        return c.settings.get(8, 0), resp, frames, outcome
    finally:
        c.close()


class H2ConnectEcho:
    """An HTTP/2 (prior knowledge) server, with python `h2`, that answers every CONNECT
    with a 200 (`x-up: 1`) and echoes the stream's DATA, ending its side when the client
    ends its own; other requests get a 404. `heads` keeps each request's header list."""

    def __init__(self):
        self.heads: list = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_inbound_headers=False))
        conn.initiate_connection()
        try:
            c.sendall(conn.data_to_send())
            while True:
                d = c.recv(65536)
                if not d:
                    return
                for ev in conn.receive_data(d):
                    if isinstance(ev, h2.events.RequestReceived):
                        self.heads.append(sorted(ev.headers))
                        method = dict(ev.headers).get(":method")
                        if method == "CONNECT":
                            conn.send_headers(ev.stream_id, [(":status", "200"), ("x-up", "1")])
                        else:
                            conn.send_headers(ev.stream_id, [(":status", "404")], end_stream=True)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.data:
                            conn.send_data(ev.stream_id, ev.data)
                    elif isinstance(ev, h2.events.StreamEnded):
                        try:
                            conn.end_stream(ev.stream_id)
                        except h2.exceptions.StreamClosedError:
                            pass
                c.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self.sock.close()

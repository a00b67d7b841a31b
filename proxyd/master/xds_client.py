"""The master's side of the xDS agent process (proxyd/xds/agent.py): fork+exec it with a
socketpair, restart it with backoff when it dies, replay the subscriptions (with the last
accepted versions) to a new one, and hand its messages to the dynamic config.

Workers keep serving the last config while the agent is down: nothing here touches them.
"""
from __future__ import annotations

import signal
import socket
import sys
import time

import gevent
from gevent import subprocess as gsubprocess

from proxyd.ipc import Channel, die_with_parent
from proxyd.observability.logging import get_logger

RESTART_BACKOFF_MAX = 30.0


class AgentProcess:
    def __init__(self, options, handler):
        """`handler(msg) -> reply or None`: called in order for each message of the agent;
        a reply (the verdict on an update) is sent back."""
        self.options = options
        self.handler = handler
        self.log = get_logger("master")
        self.proc = None
        self.channel: Channel | None = None
        self.stopping = False
        self.config_msg = None
        self.subscriptions: dict = {}   # (source bytes, type_url) -> subscribe message
        self.version_of = None          # callback: type_url, names -> (version, versions)

    def start(self, config_msg: dict) -> None:
        self.config_msg = config_msg
        gevent.spawn(self._supervise)

    def subscribe(self, source: bytes, type_url: str, names, version: str = "",
                  versions: dict | None = None) -> None:
        msg = {"kind": "subscribe", "source": source, "type_url": type_url,
               "names": None if names is None else sorted(names), "version": version,
               "versions": versions or {}}
        key = (source, type_url)
        old = self.subscriptions.get(key)
        if old is not None and old["names"] == msg["names"]:
            return
        self.subscriptions[key] = msg
        self._send(msg)

    def _send(self, msg) -> None:
        if self.channel is not None:
            try:
                self.channel.send(msg)
            except OSError as e:
                self.log.warning("xds_agent_send_failed", error=str(e))

    def _supervise(self) -> None:
        backoff = 0.0
        while not self.stopping:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            cmd = [sys.executable, "-m", "proxyd.xds.agent", "--fd", str(child.fileno()),
                   "--log-level", self.options.log_level, "--log-format", self.options.log_format]
            try:
                # The agent holds nothing worth a goodbye: it dies with the master.
                self.proc = gsubprocess.Popen(cmd, pass_fds=(child.fileno(),), close_fds=True,
                                              preexec_fn=die_with_parent(signal.SIGKILL))
            finally:
                child.close()
            started = time.monotonic()
            self.log.info("xds_agent_started", pid=self.proc.pid)
            ch = self.channel = Channel(parent)
            self._send(self.config_msg)
            for key, msg in list(self.subscriptions.items()):
                if self.version_of is not None:
                    msg = dict(msg)
                    msg["version"], msg["versions"] = self.version_of(msg["type_url"], msg["names"])
                self._send(msg)
            self._read(ch)
            self.channel = None
            ch.close()
            rc = self.proc.wait()
            if self.stopping:
                return
            lived = time.monotonic() - started
            backoff = 0.0 if lived > 10.0 else min(max(backoff * 2, 0.5), RESTART_BACKOFF_MAX)
            self.log.error("xds_agent_exited", pid=self.proc.pid, rc=rc, restart_in_s=backoff)
            self.handler({"kind": "agent_exited"})
            gevent.sleep(backoff)

    def _read(self, ch: Channel) -> None:
        while True:
            try:
                msg, _fds = ch.recv()
            except EOFError:
                return
            try:
                reply = self.handler(msg)
            except Exception as e:  # noqa: BLE001 - a bug here must not wedge the agent
                self.log.exception("xds_update_crashed", error=str(e))
                reply = {"kind": "verdict", "id": msg["id"], "error": "internal error: %s" % e} \
                    if msg.get("kind") == "update" else None
            if reply is not None:
                try:
                    ch.send(reply)
                except OSError:
                    return

    def stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.terminate()
            except OSError:
                pass

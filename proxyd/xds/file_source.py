"""`path_config_source`: a DiscoveryResponse in a YAML or JSON file, applied when the file is
atomically replaced (a rename onto `path`) or when anything is moved into
`watched_directory` (a Kubernetes ConfigMap swaps its `..data` symlink that way).

As in Envoy, there is no ACK/NACK: a file that does not parse or validate is logged and
reported to the master (which counts it), and the last good config stays.
"""
from __future__ import annotations

import os
import threading

from envoy.service.discovery.v3 import discovery_pb2

from .state import Session


def read_response(path: str) -> discovery_pb2.DiscoveryResponse:
    """Parse and validate the file into a DiscoveryResponse; raises ValueError with every
    error as 'FILE:LINE:COL: path: reason', like `proxyd check`."""
    from proxyd.config import ConfigError, load_discovery_response
    try:
        return load_discovery_response(path)
    except ConfigError as e:
        raise ValueError(str(e)) from None


class FileSource:
    """Watches one path for one resource type; `on_update(update)` / `on_error(str)`."""

    def __init__(self, path: str, watched_directory: str, type_url: str, names, on_update,
                 on_error, log):
        self.path = path
        self.any_move = bool(watched_directory)
        self.watched = watched_directory or os.path.dirname(os.path.abspath(path))
        self.type_url = type_url
        self.session = Session(None)
        self.session.subscribe(type_url, names)
        self.session.connect()
        self.on_update = on_update
        self.on_error = on_error
        self.log = log
        self._lock = threading.Lock()

    def set_names(self, names) -> None:
        with self._lock:
            self.session.subscribe(self.type_url, names)
        # Not on the caller's thread: load() waits for the master's verdict, which the
        # caller (the agent's master-link loop) delivers.
        threading.Thread(target=self.load, daemon=True).start()

    def start(self) -> None:
        threading.Thread(target=self._watch, name="file:" + self.path, daemon=True).start()

    def load(self) -> None:
        with self._lock:
            try:
                resp = read_response(self.path)
            except ValueError as e:
                self.on_error(self.type_url, str(e))
                return
            if resp.type_url and resp.type_url != self.type_url:
                self.on_error(self.type_url, "%s holds %s, expected %s"
                              % (self.path, resp.type_url, self.type_url))
                return
            resp.type_url = self.type_url
            update, nack = self.session.handle(resp)
            if nack is not None:
                self.on_error(self.type_url, "%s: %s" % (self.path, nack.error_detail.message))
                return
            if update is not None and self.on_update(update) is None:
                self.session.accepted(update)

    def _watch(self) -> None:
        from inotify_simple import INotify, flags
        ino = INotify()
        ino.add_watch(self.watched, flags.MOVED_TO)
        self.load()
        base = os.path.basename(self.path)
        while True:
            events = ino.read()
            if self.any_move or any(e.name == base for e in events):
                self.log("file_changed", path=self.path)
                self.load()

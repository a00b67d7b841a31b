"""One bootstrap template, rendered twice and served by real Envoy and by proxyd side by
side, each on its own free ports, with the same real upstream behind both.

The template is YAML text with `$name` placeholders (string.Template):

- `$upstream`  the shared upstream's port (tests/upstream_server.py), the same for both
- `$closed`    a port where every connect is refused, the same for both
- `$dir`       the side's own directory (access-log files go there)
- any other name (`$admin`, `$listener`, `$port_x`) is a free port picked per side.

`$admin` must be the admin port: both sides are only used once admin says LIVE.
"""
from __future__ import annotations

import string
import threading
from pathlib import Path

from harness import Conn, Proxyd, Response, free_port, http, raw_exchange
from real_envoy import Envoy

SHARED = ("upstream", "closed", "dir")


class Side:
    """One proxy of the pair (`name` is "envoy" or "proxyd"), with its rendered config."""

    def __init__(self, name: str, template: str, workdir: Path, shared: dict):
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        tpl = string.Template(template)
        self.ports = {k: free_port() for k in tpl.get_identifiers() if k not in SHARED}
        self.config_path = self.dir / "bootstrap.yaml"
        self.config_path.write_text(tpl.substitute(self.ports, dir=self.dir, **shared))
        self.process: Envoy | Proxyd | None = None

    def start(self) -> None:
        if self.name == "envoy":
            self.process = Envoy(self.config_path, self.ports["admin"], self.dir).start()
        else:
            self.process = Proxyd(self.config_path, concurrency=1, drain_time_s=1.0).start()

    def http(self, path: str = "/", port: str = "listener", **kwargs) -> Response:
        """One HTTP/1.1 request on a new connection to the named port."""
        return http(self.ports[port], path=path, **kwargs)

    def conn(self, port: str = "listener") -> Conn:
        return Conn(self.ports[port])

    def raw(self, data: bytes, port: str = "listener", timeout: float = 3.0) -> tuple[bytes, bool]:
        return raw_exchange(self.ports[port], data, timeout)

    def admin(self, path: str) -> Response:
        return http(self.ports["admin"], path=path, host="127.0.0.1")

    def read(self, name: str) -> str:
        """A file the side wrote into its directory (an access log), '' if none yet."""
        p = self.dir / name
        return p.read_text() if p.exists() else ""

    def log(self) -> str:
        return self.process.log() if self.process else ""

    def cleanup(self) -> None:
        if self.process is not None:
            self.process.cleanup()


class Pair:
    """Envoy and proxyd on one template. `both(fn)` runs `fn(side)` on each and returns
    (envoy's result, proxyd's result)."""

    def __init__(self, template: str, workdir, upstream_port: int, closed_port: int):
        shared = {"upstream": upstream_port, "closed": closed_port}
        workdir = Path(workdir)
        self.envoy = Side("envoy", template, workdir, shared)
        self.proxyd = Side("proxyd", template, workdir, shared)

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.envoy, self.proxyd

    def start(self) -> "Pair":
        """Start both at once (proxyd's start-up is the longer one); raise if either fails."""
        errors = []

        def run(side):
            try:
                side.start()
            except Exception as e:  # noqa: BLE001 (re-raised below, with the side's name)
                errors.append("%s: %s" % (side.name, e))
        threads = [threading.Thread(target=run, args=(s,)) for s in self.sides]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.cleanup()
            raise RuntimeError("the pair did not start:\n" + "\n".join(errors))
        return self

    def both(self, fn):
        return fn(self.envoy), fn(self.proxyd)

    def http(self, path: str = "/", **kwargs) -> tuple[Response, Response]:
        return self.both(lambda s: s.http(path, **kwargs))

    def cleanup(self) -> None:
        for side in self.sides:
            side.cleanup()

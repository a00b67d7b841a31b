"""HTTP header block shared by every codec, filter and the router.

Names are lower-case `str`, values `str` (latin-1 round-trips every byte), kept in
arrival order as a flat list of pairs so duplicates survive and serialisation is a join.
HTTP/2 pseudo-headers are not stored here: requests carry method/path/authority/scheme
as attributes of `RequestHead`.
"""
from __future__ import annotations

# RFC 9110 7.6.1 plus the legacy ones proxies strip (Envoy strips the same set).
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
    "te", "trailer", "proxy-authenticate", "proxy-authorization",
))


# Connection values that name no other header (the common case: nothing to add to drop).
_PLAIN_CONNECTION = frozenset(("keep-alive", "close"))


class Headers:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, str]] | None = None):
        self.items = items if items is not None else []

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def __contains__(self, name: str) -> bool:
        for k, _ in self.items:
            if k == name:
                return True
        return False

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every `name` header with one, keeping the first one's position. The
        rest of the list is rebuilt only when it holds a duplicate."""
        items = self.items
        i = 0
        for k, _ in items:
            if k == name:
                items[i] = (name, value)
                i += 1
                for k, _ in items[i:]:
                    if k == name:
                        items[i:] = [kv for kv in items[i:] if kv[0] != name]
                        break
                return
            i += 1
        items.append((name, value))

    def remove(self, name: str) -> None:
        if self.__contains__(name):
            self.items = [kv for kv in self.items if kv[0] != name]

    def without_hop_by_hop(self, drop: frozenset = HOP_BY_HOP) -> "Headers":
        """A copy minus hop-by-hop headers, those named in Connection, and the rest of
        `drop` (HOP_BY_HOP or a superset of it), in one pass: what a proxy forwards."""
        items = self.items
        kept = [kv for kv in items if kv[0] not in drop]
        if len(kept) != len(items):
            conn = self.get("connection")
            if conn and conn.lower() not in _PLAIN_CONNECTION:
                named = {t.strip().lower() for t in conn.split(",")}
                kept = [kv for kv in kept if kv[0] not in named]
        return Headers(kept)

    def copy(self) -> "Headers":
        return Headers(list(self.items))

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"

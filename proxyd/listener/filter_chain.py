"""filter_chain_match: which of a listener's filter chains serves a connection.

Envoy's order (FilterChainMatch docs): destination_port, then server_names (exact, then
the longest matching `*.suffix`, then chains without server_names), transport_protocol,
application_protocols. At each step the most specific non-empty match wins and the
chains that do not set the field are the fallback; a choice made at one step is never
revisited when a later step finds nothing (so a connection can end with no chain even if
a catch-all chain exists, exactly as in Envoy). No chain: `default_filter_chain`, else
the connection is closed and `no_filter_chain_match` counts it.
"""
from __future__ import annotations

TLS_INSPECTOR_URL = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_INSPECTOR_URL = ("type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3."
                      "HttpInspector")


def _key(m) -> tuple:
    """What makes two matches identical for Envoy's duplicate-match error."""
    return (m.destination_port.value if m.HasField("destination_port") else 0,
            tuple(sorted(n.lower() for n in m.server_names)),
            m.transport_protocol,
            tuple(sorted(m.application_protocols)))


class Selector:
    """Built once per listener config: `select(conn)` returns the chosen chain object or None.

    `chains` are (FilterChainMatch, chain object) pairs in config order."""

    def __init__(self, chains: list, default=None):
        self.default = default
        self.entries = [(m.destination_port.value if m.HasField("destination_port") else 0,
                         [n.lower().rstrip(".") for n in m.server_names],
                         m.transport_protocol,
                         list(m.application_protocols), chain)
                        for m, chain in chains]
        self.trivial = len(self.entries) == 1 and not any(self.entries[0][:4])

    def select(self, dst_port: int, server_name: str, transport_protocol: str, alpn: list):
        if self.trivial:
            return self.entries[0][4]
        cands = self.entries
        exact = [e for e in cands if e[0] == dst_port]
        cands = exact or [e for e in cands if not e[0]]
        cands = self._by_server_name(cands, server_name)
        tp = transport_protocol or "raw_buffer"
        cands = [e for e in cands if e[2] == tp] or [e for e in cands if not e[2]]
        if cands and alpn:
            for proto in alpn:
                hit = [e for e in cands if proto in e[3]]
                if hit:
                    cands = hit
                    break
            else:
                cands = [e for e in cands if not e[3]]
        elif cands:
            cands = [e for e in cands if not e[3]]
        if cands:
            return cands[0][4]
        return self.default

    @staticmethod
    def _by_server_name(cands, name: str):
        if name:
            hit = [e for e in cands if name in e[1]]
            if hit:
                return hit
            # wildcards: the longest suffix first ("*.b.example.com" before "*.example.com")
            labels = name.split(".")
            for i in range(1, len(labels)):
                wild = "*." + ".".join(labels[i:])
                hit = [e for e in cands if wild in e[1]]
                if hit:
                    return hit
        return [e for e in cands if not e[1]]


def problems(listener, path: tuple) -> list:
    """Config-time checks Envoy makes on filter chain matches, as (path, reason)."""
    out = []
    seen = {}
    inspector = any(f.typed_config.type_url == TLS_INSPECTOR_URL for f in listener.listener_filters)
    http_inspector = any(f.typed_config.type_url == HTTP_INSPECTOR_URL
                         for f in listener.listener_filters)
    for i, fc in enumerate(listener.filter_chains):
        m = fc.filter_chain_match
        mpath = path + ("filter_chains", i, "filter_chain_match")
        key = _key(m)
        if key in seen:
            out.append((mpath, "multiple filter chains with the same matching rules are defined "
                               f"(filter_chains[{seen[key]}] has the same filter_chain_match)"))
        seen.setdefault(key, i)
        for j, name in enumerate(m.server_names):
            if "*" in name and not (name.startswith("*.") and "*" not in name[1:]):
                out.append((mpath + ("server_names", j),
                            f"invalid server name '{name}': a wildcard must be a leading '*.'"))
        if (m.server_names or m.transport_protocol == "tls") and not inspector:
            field = "server_names" if m.server_names else "transport_protocol"
            out.append((mpath + (field,),
                        f"matching on {field} needs the envoy.filters.listener.tls_inspector "
                        f"listener filter (listener_filters) to read the ClientHello"))
        elif m.application_protocols and not (inspector or http_inspector):
            out.append((mpath + ("application_protocols",),
                        "matching on application_protocols needs the "
                        "envoy.filters.listener.tls_inspector (ALPN) or "
                        "envoy.filters.listener.http_inspector (plaintext HTTP) listener filter"))
        if m.transport_protocol not in ("", "tls", "raw_buffer"):
            out.append((mpath + ("transport_protocol",),
                        f"transport_protocol '{m.transport_protocol}' is not supported by proxyd "
                        f"(supported: tls, raw_buffer)"))
    return out

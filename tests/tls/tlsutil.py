"""Builders for TLS listener configs and a stats reader shared by the TLS and TCP tests."""
from __future__ import annotations

from types import SimpleNamespace

TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector",
                 "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters."
                                           "listener.tls_inspector.v3.TlsInspector"}}
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def downstream_tls(cert_key, alpn=(), ca=None, require_client=False, **params) -> dict:
    """A transport_socket with a DownstreamTlsContext from files."""
    common = {"tls_certificates": [{"certificate_chain": {"filename": cert_key[0]},
                                    "private_key": {"filename": cert_key[1]}}]}
    if alpn:
        common["alpn_protocols"] = list(alpn)
    if ca:
        common["validation_context"] = {"trusted_ca": {"filename": ca}}
    if params:
        common["tls_params"] = params
    ctx = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    if require_client:
        ctx["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def stats(px) -> dict:
    """Every stat of a running proxyd, read straight from its shared-memory region."""
    from proxyd.master.arbiter import stats_path
    from proxyd.stats import StatsStore
    store = StatsStore.attach(stats_path(SimpleNamespace(runtime_dir=px.runtime_dir, base_id=0)))
    try:
        return {name: value for name, _kind, value in store.items()}
    finally:
        store.close()


def wait_stat(px, name: str, value, timeout: float = 3.0):
    """The stat once it equals `value` (the proxy may count just after the client sees the
    close), else its last value."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        got = stats(px).get(name)
        if got == value or time.monotonic() > deadline:
            return got
        time.sleep(0.05)

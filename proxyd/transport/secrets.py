"""SDS secrets (`envoy.extensions.transport_sockets.tls.v3.Secret`) in TLS contexts.

A DownstreamTlsContext / UpstreamTlsContext may name its certificates
(`tls_certificate_sds_secret_configs`) and its validation context
(`validation_context_sds_secret_config`, alone or inside `combined_validation_context`)
instead of holding them. A reference without `sds_config` names a bootstrap
`static_resources.secrets` entry; one with `sds_config` is fetched over xDS or from a
watched file (proxyd/master/dynamic.py subscribes and warms the listener or cluster
until the secret is there, as Envoy does).

Workers know nothing of SDS: the master inlines every secret (`inline`) into the config it
sends them. The references stay in the message, so a worker can tell a rotation from a
listener change (`strip_material`): a new secret version changes the context new
connections handshake with, without draining the connections already open. The composed
form, read by proxyd/transport/tls.py:

- every referenced certificate present: `tls_certificates` holds them (after any inline
  ones); one missing: `tls_certificates` is empty (Envoy has no context until all are
  there: `*_context_secrets_not_ready`);
- `validation_context_sds_secret_config` becomes `combined_validation_context` with the
  secret merged into `default_validation_context`; while the secret is missing it stays a
  bare `validation_context_sds_secret_config`.

A dynamic secret is inlined with the files it names read (`resolve`); the master re-reads
them when they change (key rotation, `sds.<name>.key_rotation_failed`), as Envoy watches
them. Static secrets are read by workers when a snapshot is applied, as inline contexts.
"""
from __future__ import annotations

from proxyd.proto import unpack

TLS_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SECRET_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def transport_sockets(msg):
    """The TLS transport sockets of a Listener (every filter chain, the default one) or a
    Cluster, as (TransportSocket message, path)."""
    if msg.DESCRIPTOR.name == "Cluster":
        if msg.HasField("transport_socket"):
            yield msg.transport_socket, ("transport_socket",)
        return
    for i, chain in enumerate(msg.filter_chains):
        if chain.HasField("transport_socket"):
            yield chain.transport_socket, ("filter_chains", i, "transport_socket")
    if msg.HasField("default_filter_chain") and msg.default_filter_chain.HasField("transport_socket"):
        yield msg.default_filter_chain.transport_socket, ("default_filter_chain", "transport_socket")


def _contexts(msg):
    for ts, path in transport_sockets(msg):
        if ts.typed_config.type_url in (TLS_URL, UPSTREAM_TLS_URL):
            yield ts, unpack(ts.typed_config), path


def _validation_ref(common):
    if common.HasField("validation_context_sds_secret_config"):
        return common.validation_context_sds_secret_config
    cvc = common.combined_validation_context
    if common.HasField("combined_validation_context") and \
            cvc.HasField("validation_context_sds_secret_config"):
        return cvc.validation_context_sds_secret_config
    return None


def refs_of_context(ctx) -> list:
    """[(kind, SdsSecretConfig, path under the context)], kind 'tls_certificate' or
    'validation_context'."""
    common = ctx.common_tls_context
    base = ("common_tls_context",)
    out = [("tls_certificate", c, base + ("tls_certificate_sds_secret_configs", i))
           for i, c in enumerate(common.tls_certificate_sds_secret_configs)]
    v = _validation_ref(common)
    if v is not None:
        where = ("validation_context_sds_secret_config",) if \
            common.HasField("validation_context_sds_secret_config") else \
            ("combined_validation_context", "validation_context_sds_secret_config")
        out.append(("validation_context", v, base + where))
    return out


def refs(msg) -> list:
    """Every secret reference of a Listener or Cluster: [(kind, SdsSecretConfig, path)]."""
    out = []
    for _ts, ctx, path in _contexts(msg):
        out += [(k, c, path + ("typed_config",) + p) for k, c, p in refs_of_context(ctx)]
    return out


def uses_sds(msg) -> bool:
    return any(True for _ in refs(msg))


def inline(msg, lookup):
    """A copy of a Listener or Cluster with its secrets inlined (the composed form above);
    `lookup(kind, SdsSecretConfig) -> Secret | None`. The message itself when it names no
    secret."""
    if not uses_sds(msg):
        return msg
    out = type(msg)()
    out.CopyFrom(msg)
    for ts, ctx, _path in list(_contexts(out)):
        rs = refs_of_context(ctx)
        if not rs:
            continue
        common = ctx.common_tls_context
        certs, missing_cert = [], False
        for kind, ref, _p in rs:
            if kind != "tls_certificate":
                continue
            secret = lookup(kind, ref)
            if secret is None or not secret.HasField("tls_certificate"):
                missing_cert = True
            else:
                certs.append(secret.tls_certificate)
        if common.tls_certificate_sds_secret_configs:
            if missing_cert:
                del common.tls_certificates[:]
            else:
                for c in certs:
                    common.tls_certificates.add().CopyFrom(c)
        vref = _validation_ref(common)
        if vref is not None:
            secret = lookup("validation_context", vref)
            if secret is not None and secret.HasField("validation_context"):
                ref = type(vref)()
                ref.CopyFrom(vref)
                if common.HasField("validation_context_sds_secret_config"):
                    common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(ref)
                common.combined_validation_context.default_validation_context.MergeFrom(
                    secret.validation_context)
            elif common.HasField("combined_validation_context"):
                common.validation_context_sds_secret_config.CopyFrom(vref)   # not ready
        ts.typed_config.Pack(ctx)
    return out


def strip_material(msg):
    """A Listener or Cluster without what its secrets brought in (certificates and
    validation contexts of every TLS context that names a secret): two composed configs
    equal once stripped differ only by secret versions."""
    if not uses_sds(msg):
        return msg
    out = type(msg)()
    out.CopyFrom(msg)
    for ts, ctx, _path in list(_contexts(out)):
        if refs_of_context(ctx):
            common = ctx.common_tls_context
            if common.tls_certificate_sds_secret_configs:
                del common.tls_certificates[:]
            vref = _validation_ref(common)
            if vref is not None:
                ref = type(vref)()
                ref.CopyFrom(vref)
                common.validation_context_sds_secret_config.CopyFrom(ref)
            ts.typed_config.Pack(ctx)
    return out


def not_ready(common) -> bool:
    """A composed CommonTlsContext still waiting for a secret."""
    return common.HasField("validation_context_sds_secret_config") or (
        bool(common.tls_certificate_sds_secret_configs) and not common.tls_certificates)


def validation_context(common):
    """The CertificateValidationContext in force, or None."""
    if common.HasField("validation_context"):
        return common.validation_context
    if common.HasField("combined_validation_context"):
        return common.combined_validation_context.default_validation_context
    return None


def static_lookup(bootstrap):
    """lookup() over bootstrap static secrets (references without sds_config)."""
    table = {s.name: s for s in bootstrap.static_resources.secrets}

    def lookup(kind, ref):
        return table.get(ref.name) if not ref.HasField("sds_config") else None
    return lookup


def inline_static(bootstrap):
    """The bootstrap (a copy when anything changed) with static secrets inlined into its
    static listeners and clusters; for configs that fetch nothing dynamically."""
    lookup = static_lookup(bootstrap)
    sr = bootstrap.static_resources
    if not any(uses_sds(m) for m in list(sr.listeners) + list(sr.clusters)):
        return bootstrap
    out = type(bootstrap)()
    out.CopyFrom(bootstrap)
    for field in ("listeners", "clusters"):
        items = getattr(out.static_resources, field)
        new = [inline(m, lookup) for m in items]
        del items[:]
        for m in new:
            items.add().CopyFrom(m)
    return out


def resolve(secret):
    """(a copy of a Secret with every `filename` data source read into inline_bytes,
    [(path, content)] one per such data source): what a dynamic secret serves with, and
    the files to watch for a key rotation (Envoy watches each data source's file and
    re-reads them on change). Raises TlsConfigError."""
    from proxyd.transport.tls import read_data_source
    out = type(secret)()
    out.CopyFrom(secret)
    files = []
    sources = []
    if out.HasField("tls_certificate"):
        c = out.tls_certificate
        sources += [(c, f, ("tls_certificate", f)) for f in ("certificate_chain", "private_key", "password")
                    if c.HasField(f)]
    if out.HasField("validation_context") and out.validation_context.HasField("trusted_ca"):
        sources.append((out.validation_context, "trusted_ca", ("validation_context", "trusted_ca")))
    for parent, field, path in sources:
        ds = getattr(parent, field)
        if ds.WhichOneof("specifier") == "filename":
            name = ds.filename
            data = read_data_source(ds, path)
            files.append((name, data))
            ds.inline_bytes = data
    return out, files

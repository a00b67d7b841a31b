"""envoy.transport_sockets.tls: SSLContexts from DownstreamTlsContext / UpstreamTlsContext.

Contexts are built when a config snapshot is applied (filter chains and clusters are
constructed then), so certificate files are read at config load: a hot restart's new
processes read them afresh and a running worker never touches the disk per connection.
`problems()` is the same loading done at `proxyd check` time, so an unreadable file or a
key that does not belong to its certificate is a located config error, not a runtime one.

Python's ssl can only load a certificate chain from a path, so inline (and already read)
PEM goes through an anonymous memfd: private keys never land in a file on disk.
"""
from __future__ import annotations

import os
import socket
import ssl

from proxyd.proto import unpack
from proxyd.transport import secrets

TLS_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DEFAULT_HANDSHAKE_TIMEOUT = 15.0

# TlsParameters.TlsProtocol numbers -> ssl.TLSVersion (TLS_AUTO = 0 means Envoy's default)
_VERSIONS = {1: ssl.TLSVersion.TLSv1, 2: ssl.TLSVersion.TLSv1_1, 3: ssl.TLSVersion.TLSv1_2,
             4: ssl.TLSVersion.TLSv1_3}


class TlsConfigError(ValueError):
    """A TLS context that cannot be built; `path` is relative to the context message."""

    def __init__(self, path: tuple, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


def read_data_source(ds, path: tuple) -> bytes:
    kind = ds.WhichOneof("specifier")
    if kind == "filename":
        try:
            with open(ds.filename, "rb") as f:
                return f.read()
        except OSError as e:
            raise TlsConfigError(path + ("filename",),
                                 f"cannot read '{ds.filename}': {e.strerror or e}") from None
    if kind == "inline_bytes":
        return ds.inline_bytes
    if kind == "inline_string":
        return ds.inline_string.encode()
    raise TlsConfigError(path, "a filename, inline_bytes or inline_string is required")


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("proxyd-tls", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd


def _load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes, password, path: tuple) -> None:
    cfd, kfd = _memfd(cert), _memfd(key)
    try:
        ctx.load_cert_chain("/proc/self/fd/%d" % cfd, "/proc/self/fd/%d" % kfd, password)
    except ssl.SSLError as e:
        text = str(e)
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            raise TlsConfigError(path, "the private key does not match the certificate") from None
        if "PEM lib" in text or "NO_START_LINE" in text or "no start line" in text:
            raise TlsConfigError(path, "certificate_chain or private_key is not valid PEM "
                                       "(or the key's password is wrong)") from None
        raise TlsConfigError(path, f"cannot load certificate and key: {text}") from None
    finally:
        os.close(cfd)
        os.close(kfd)


def _common(ctx: ssl.SSLContext, common, server: bool) -> None:
    """tls_params, tls_certificates, validation_context, alpn_protocols into `ctx`."""
    base = ("common_tls_context",)
    params = common.tls_params
    lo, hi = params.tls_minimum_protocol_version, params.tls_maximum_protocol_version
    # Envoy's defaults: TLS 1.2 minimum, TLS 1.3 maximum, both sides.
    ctx.minimum_version = _VERSIONS.get(lo, ssl.TLSVersion.TLSv1_2)
    ctx.maximum_version = _VERSIONS.get(hi, ssl.TLSVersion.TLSv1_3)
    if lo and hi and lo > hi:
        raise TlsConfigError(base + ("tls_params",),
                             "tls_minimum_protocol_version is above tls_maximum_protocol_version")
    if lo in (1, 2) or hi in (1, 2):
        # OpenSSL 3's default security level refuses TLS < 1.2 outright.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if params.cipher_suites:
        try:
            ctx.set_ciphers(":".join(params.cipher_suites))
        except ssl.SSLError:
            raise TlsConfigError(base + ("tls_params", "cipher_suites"),
                                 "no usable cipher suite in the list") from None
    for i, cert in enumerate(common.tls_certificates):
        cpath = base + ("tls_certificates", i)
        chain = read_data_source(cert.certificate_chain, cpath + ("certificate_chain",))
        key = read_data_source(cert.private_key, cpath + ("private_key",))
        password = (read_data_source(cert.password, cpath + ("password",))
                    if cert.HasField("password") else None)
        _load_cert_chain(ctx, chain, key, password, cpath)
    if server and not common.tls_certificates:
        raise TlsConfigError(base + ("tls_certificates",),
                             "a DownstreamTlsContext needs a certificate")
    vc = secrets.validation_context(common)
    if vc is not None and vc.HasField("trusted_ca"):
        vpath = base + ("validation_context" if common.HasField("validation_context") else
                        "combined_validation_context", "trusted_ca")
        pem = read_data_source(vc.trusted_ca, vpath)
        try:
            ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as e:
            raise TlsConfigError(vpath, f"trusted_ca holds no usable CA certificate ({e})") from None
    if common.alpn_protocols:
        ctx.set_alpn_protocols(list(common.alpn_protocols))


class SecretsNotReady(OSError):
    """The context names an SDS secret that has not arrived (Envoy's
    `*_context_secrets_not_ready`): the handshake is refused."""


def _has_ca(common) -> bool:
    vc = secrets.validation_context(common)
    return vc is not None and vc.HasField("trusted_ca")


class ServerTls:
    """A filter chain's DownstreamTlsContext, built once per snapshot. `context` is None
    while an SDS secret it names has not arrived."""

    __slots__ = ("context", "require_client_cert")

    def __init__(self, config):
        self.require_client_cert = config.require_client_certificate.value
        if secrets.not_ready(config.common_tls_context):
            self.context = None
            return
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.options |= ssl.OP_NO_COMPRESSION
        _common(ctx, config.common_tls_context, server=True)
        has_ca = _has_ca(config.common_tls_context)
        if self.require_client_cert and not has_ca:
            raise TlsConfigError(("require_client_certificate",),
                                 "require_client_certificate needs "
                                 "common_tls_context.validation_context.trusted_ca")
        # Envoy asks for a client certificate whenever it can verify one, and rejects the
        # handshake without one only when it is required.
        ctx.verify_mode = (ssl.CERT_REQUIRED if self.require_client_cert
                           else ssl.CERT_OPTIONAL if has_ca else ssl.CERT_NONE)
        self.context = ctx

    def wrap(self, sock, timeout: float):
        """Server-side handshake under gevent; raises ssl.SSLError / OSError / socket.timeout.

        On failure the plain socket is closed here: wrap_socket detached it."""
        if self.context is None:
            sock.close()
            raise SecretsNotReady("the TLS context's SDS secrets are not ready")
        return _handshake(self.context.wrap_socket(sock, server_side=True,
                                                   do_handshake_on_connect=False), timeout)


class ClientTls:
    """A cluster's UpstreamTlsContext."""

    __slots__ = ("context", "sni")

    def __init__(self, config):
        self.sni = config.sni or None
        if secrets.not_ready(config.common_tls_context):
            self.context = None
            return
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Envoy verifies the chain when a trusted_ca is given and never checks the host
        # name unless match_subject_alt_names asks for it (not supported here).
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _common(ctx, config.common_tls_context, server=False)
        if _has_ca(config.common_tls_context):
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.context = ctx

    def wrap(self, sock, timeout: float):
        if self.context is None:
            sock.close()
            raise SecretsNotReady("the TLS context's SDS secrets are not ready")
        return _handshake(self.context.wrap_socket(sock, server_hostname=self.sni,
                                                   do_handshake_on_connect=False), timeout)


def _handshake(ssock, timeout: float):
    """Handshake within `timeout`, then blocking mode; closes the socket on failure."""
    try:
        ssock.settimeout(timeout)
        ssock.do_handshake()
        ssock.settimeout(None)
    except BaseException:
        ssock.close()
        raise
    return ssock


def server_tls(transport_socket):
    """ServerTls for a FilterChain.transport_socket, None for plain TCP."""
    if transport_socket is None or transport_socket.typed_config.type_url != TLS_URL:
        return None
    return ServerTls(unpack(transport_socket.typed_config))


def client_tls(cluster_config):
    if not cluster_config.HasField("transport_socket"):
        return None
    ts = cluster_config.transport_socket
    if ts.typed_config.type_url != UPSTREAM_TLS_URL:
        return None
    return ClientTls(unpack(ts.typed_config))


def create(config, ctx):
    """Registry entry point: the context object for either TLS message."""
    return ServerTls(config) if config.DESCRIPTOR.name == "DownstreamTlsContext" else ClientTls(config)


def problems(transport_socket, path: tuple, upstream: bool) -> list:
    """Config-time check: build the context once and report why it fails as (path, reason)."""
    if not transport_socket.HasField("typed_config"):
        return []
    want = UPSTREAM_TLS_URL if upstream else TLS_URL
    url = transport_socket.typed_config.type_url
    tpath = path + ("typed_config",)
    if url != want:
        if url in (TLS_URL, UPSTREAM_TLS_URL):
            return [(tpath, f"a {'cluster' if upstream else 'filter chain'} needs "
                            f"{want.rsplit('.', 1)[1]}, not {url.rsplit('.', 1)[1]}")]
        return []  # unknown extensions are the supported-table's to report
    try:
        (ClientTls if upstream else ServerTls)(unpack(transport_socket.typed_config))
    except TlsConfigError as e:
        return [(tpath + e.path, e.reason)]
    return []


def secret_problems(secret, path: tuple) -> list:
    """A Secret's certificate and validation context load, as (path, reason)."""
    try:
        if secret.HasField("tls_certificate"):
            cert = secret.tls_certificate
            cpath = path + ("tls_certificate",)
            chain = read_data_source(cert.certificate_chain, cpath + ("certificate_chain",))
            key = read_data_source(cert.private_key, cpath + ("private_key",))
            password = (read_data_source(cert.password, cpath + ("password",))
                        if cert.HasField("password") else None)
            _load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), chain, key, password, cpath)
        vc = secret.validation_context
        if secret.HasField("validation_context") and vc.HasField("trusted_ca"):
            vpath = path + ("validation_context", "trusted_ca")
            pem = read_data_source(vc.trusted_ca, vpath)
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                    cadata=pem.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as e:
                return [(vpath, f"trusted_ca holds no usable CA certificate ({e})")]
    except TlsConfigError as e:
        return [(e.path, e.reason)]
    return []


def peer_has_certificate(ssock) -> bool:
    try:
        return ssock.getpeercert(binary_form=True) is not None
    except (ValueError, OSError):
        return False


def is_tls(sock) -> bool:
    return isinstance(sock, ssl.SSLSocket) or hasattr(sock, "_sslobj")


def shutdown_write(sock) -> None:
    """Half-close: plain sockets send FIN; TLS sockets send close_notify first (TLS 1.3 lets
    the peer keep writing after it), then FIN on the raw socket."""
    if is_tls(sock):
        sslobj = getattr(sock, "_sslobj", None)
        if sslobj is not None:
            try:
                sslobj.shutdown()
            except (ssl.SSLError, OSError):
                pass
        try:
            getattr(sock, "_sock", sock).shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass

"""Transport and protocol names from the protos, and an upstream cluster's own
(ThriftProtocolOptions under typed_extension_protocol_options), which the request is
translated to and its reply back from."""
from __future__ import annotations

from proxyd.proto import unpack

from . import codec

TRANSPORTS = {0: codec.AUTO, 1: codec.FRAMED, 2: codec.UNFRAMED, 3: codec.HEADER}
PROTOCOLS = {0: codec.AUTO, 1: codec.BINARY, 2: codec.LAX_BINARY, 3: codec.COMPACT}
PROTOCOL_OPTIONS = "envoy.filters.network.thrift_proxy"


def upstream_protocol(cluster, begin: codec.MessageBegin) -> tuple[str, str]:
    """The cluster's transport and protocol; AUTO (or no options) is the request's own."""
    transport, protocol = begin.transport, begin.protocol
    opts = cluster.config.typed_extension_protocol_options.get(PROTOCOL_OPTIONS)
    if opts is not None:
        o = unpack(opts)
        transport = TRANSPORTS[o.transport] if o.transport else transport
        protocol = PROTOCOLS[o.protocol] if o.protocol else protocol
    return transport, protocol


def upstream_payload(req: codec.MessageEnd, transport: str, protocol: str,
                     name: str | None) -> bytes:
    """The request as the upstream takes it: translated, renamed, or as it came."""
    b = req.begin
    if (transport, protocol) != (b.transport, b.protocol):
        return codec.translate(req, transport, protocol, name)
    if name is not None:
        return codec.rewrite(req, name=name)
    return req.frame

"""xDS client protocol state, sans-IO: what to send on (re)connect, how to answer each
response (ACK or NACK), and what an accepted response changes.

One ``Session`` is one gRPC stream: an ADS stream carries several types, a per-type stream
one. The caller does the IO: it sends the requests these methods return, hands every
response to ``Session.handle`` and, once the master has applied (or refused) the update,
sends ``Session.accepted`` / ``Session.rejected``. Keeping this free of sockets lets the
tests check the xDS rules (node on the first request only, version and nonce echo, NACK with
the previous version, dup-name NACK, resubscribe with the last accepted versions) directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from . import resources as R

INVALID_ARGUMENT = 3


@dataclass
class Update:
    """An accepted-by-the-client response, waiting for the master's verdict."""
    type_url: str
    version: str                                  # version_info / system_version_info
    nonce: str
    resources: dict = field(default_factory=dict)  # name -> (resource version, message)
    removed: list = field(default_factory=list)    # names deleted (delta)
    full_state: bool = False                       # SotW LDS/CDS: absent names are deleted
    watched: list = field(default_factory=list)    # SotW by name: every name subscribed


class Invalid(Exception):
    """A response that must be NACKed; the message becomes error_detail.message."""


def default_validate(type_url: str, name: str, msg) -> list[str]:
    """The same checks as `proxyd check`, with paths prefixed by the resource."""
    from proxyd.config import validate_resource
    return validate_resource(msg, "%s '%s'" % (R.SHORT.get(type_url, type_url).lower(), name))


def decode(type_url: str, any_msg, validate) -> tuple[str, object]:
    """Unpack and validate one resource; raises Invalid naming the resource and field."""
    if any_msg.type_url == R.RESOURCE_WRAPPER:
        wrapper = discovery_pb2.Resource()
        any_msg.Unpack(wrapper)
        any_msg = wrapper.resource
    if any_msg.type_url != type_url:
        raise Invalid("resource of type %s in a %s response" % (any_msg.type_url, type_url))
    msg = R.MESSAGES[type_url]()
    if not any_msg.Unpack(msg):
        raise Invalid("cannot decode a %s resource" % type_url)
    name = R.resource_name(type_url, msg)
    if not name:
        raise Invalid("a %s resource has no name" % R.SHORT[type_url])
    errors = validate(type_url, name, msg) if validate else []
    if errors:
        raise Invalid("; ".join(errors))
    return name, msg


class TypeState:
    """Per type: subscribed names (None = wildcard), last accepted version(s), last nonce."""

    def __init__(self, type_url: str, names=None, version: str = "", versions=None):
        self.type_url = type_url
        self.wildcard = names is None
        self.names: set[str] = set(names or ())
        self.version = version                    # SotW: last accepted version_info
        self.versions: dict[str, str] = dict(versions or {})  # delta: name -> version
        self.nonce = ""
        self.requested = False                    # a request went out on this stream

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


class Session:
    """One xDS stream (SotW or delta) over one or more resource types."""

    def __init__(self, node, delta: bool = False, validate=default_validate):
        self.node = node
        self.delta = delta
        self.validate = validate
        self.types: dict[str, TypeState] = {}
        self._node_sent = False

    # --- subscriptions --------------------------------------------------------------
    def subscribe(self, type_url: str, names=None, version: str = "", versions=None) -> list:
        """Start or change the subscription of `type_url` (names None = wildcard); returns
        the requests to send now (none while disconnected is fine: connect() resends)."""
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = TypeState(type_url, names, version, versions)
            return [self._initial(st)] if self._node_sent and (st.wildcard or st.names) else []
        new = set(names or ())
        if (names is None) == st.wildcard and new == st.names:
            return []
        old = st.names
        st.wildcard, st.names = names is None, new
        if not self._node_sent:
            return []
        if not st.requested:
            return [self._initial(st)] if st.wildcard or st.names else []
        if self.delta:
            for gone in old - new:
                st.versions.pop(gone, None)
            return [self._stamp(discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=sorted(new - old),
                resource_names_unsubscribe=sorted(old - new)))]
        return [self._sotw_request(st)]

    def connect(self) -> list:
        """A new stream: forget nonces, resend every subscription with the last accepted
        versions, in make-before-break order (CDS, EDS, LDS, RDS)."""
        self._node_sent = False
        out = []
        order = {t: i for i, t in enumerate(R.ORDER)}
        for st in sorted(self.types.values(), key=lambda s: order.get(s.type_url, 99)):
            st.nonce = ""
            st.requested = False
            if st.wildcard or st.names:
                out.append(self._initial(st))
        return out

    def _initial(self, st: TypeState):
        st.requested = True
        if not self.delta:
            return self._sotw_request(st)
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=st.type_url, resource_names_subscribe=[] if st.wildcard else sorted(st.names))
        for name, version in st.versions.items():
            if st.wants(name):
                req.initial_resource_versions[name] = version
        return self._stamp(req)

    def _sotw_request(self, st: TypeState, error: str | None = None):
        st.requested = True
        req = discovery_pb2.DiscoveryRequest(
            type_url=st.type_url, version_info=st.version, response_nonce=st.nonce,
            resource_names=[] if st.wildcard else sorted(st.names))
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return self._stamp(req)

    def _stamp(self, req):
        """`node` goes on the first request of a stream only."""
        if not self._node_sent:
            if self.node is not None:
                req.node.CopyFrom(self.node)
            self._node_sent = True
        return req

    # --- responses ------------------------------------------------------------------
    def handle(self, resp):
        """A response from the server -> (Update, None) to submit to the master, or
        (None, NACK request) when it is invalid, or (None, None) for an unknown type."""
        st = self.types.get(resp.type_url)
        if st is None or resp.type_url not in R.MESSAGES:
            return None, None
        try:
            update = self._delta_update(st, resp) if self.delta else self._sotw_update(st, resp)
        except Invalid as e:
            return None, self._nack(st, resp.nonce, str(e))
        return update, None

    def _sotw_update(self, st: TypeState, resp) -> Update:
        update = Update(resp.type_url, resp.version_info, resp.nonce,
                        full_state=resp.type_url in R.WILDCARD,
                        watched=[] if st.wildcard else sorted(st.names))
        for any_msg in resp.resources:
            name, msg = decode(resp.type_url, any_msg, self.validate)
            if name in update.resources:
                raise Invalid("duplicate %s resource name '%s' in one response"
                              % (R.SHORT[resp.type_url], name))
            if st.wants(name):
                update.resources[name] = (resp.version_info, msg)
        return update

    def _delta_update(self, st: TypeState, resp) -> Update:
        update = Update(resp.type_url, resp.system_version_info, resp.nonce,
                        removed=[n for n in resp.removed_resources])
        for res in resp.resources:
            if not res.HasField("resource"):
                continue
            name, msg = decode(resp.type_url, res.resource, self.validate)
            if res.name and res.name != name:
                raise Invalid("delta resource '%s' holds a %s named '%s'"
                              % (res.name, R.SHORT[resp.type_url], name))
            if name in update.resources:
                raise Invalid("duplicate %s resource name '%s' in one response"
                              % (R.SHORT[resp.type_url], name))
            update.resources[name] = (res.version, msg)
        return update

    def accepted(self, update: Update):
        """ACK: echo the response's version and nonce."""
        st = self.types[update.type_url]
        st.nonce = update.nonce
        if not self.delta:
            st.version = update.version
            return self._sotw_request(st)
        for name in update.removed:
            st.versions.pop(name, None)
        for name, (version, _msg) in update.resources.items():
            st.versions[name] = version
        return self._stamp(discovery_pb2.DeltaDiscoveryRequest(
            type_url=update.type_url, response_nonce=update.nonce))

    def rejected(self, update: Update, error: str):
        """NACK after the master refused the update (e.g. a listener cannot bind)."""
        return self._nack(self.types[update.type_url], update.nonce, error)

    def _nack(self, st: TypeState, nonce: str, error: str):
        """NACK: the previous accepted version, this nonce, and error_detail."""
        st.nonce = nonce
        if not self.delta:
            return self._sotw_request(st, error)
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=st.type_url, response_nonce=nonce)
        req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return self._stamp(req)

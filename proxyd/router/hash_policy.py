"""RouteAction.hash_policy: the request hash the consistent-hash balancers place it by.

Envoy's Http::HashPolicyImpl (source/common/http/hash_policy.cc): each policy yields
xxHash64 of one value or nothing; the results combine as `rotl1(hash) ^ new`, and a
`terminal` policy that has a hash so far ends the chain. No hash at all: the balancer
picks at random.

- header: every value of the header (pseudo-headers read the request line), after
  `regex_rewrite`, sorted, each hashed with the previous one's hash as its seed;
- cookie: the cookie's value; absent and with a `ttl`, proxyd makes one, as Envoy does:
  the hex xxHash64 of the connection's "remote" + "local" addresses, sent back in a
  Set-Cookie (`name="value"; Max-Age=ttl; Path=path; attributes; HttpOnly`);
- connection_properties.source_ip: the downstream peer's IP;
- query_parameter: the first value of the parameter, not decoded;
- filter_state: a string (or an object with `hash()`) a filter stored under the key.
"""
from __future__ import annotations

import xxhash

from proxyd import regex
from proxyd.router.matchers import _PSEUDO, regex_matcher
from proxyd.upstream.lb import LbContext

_M64 = (1 << 64) - 1
_xxh64 = xxhash.xxh64_intdigest


class _Header:
    __slots__ = ("name", "attr", "rewrite", "terminal")

    def __init__(self, msg, terminal: bool, path: str):
        self.name = msg.header_name.lower()
        self.attr = _PSEUDO.get(self.name)
        self.terminal = terminal
        self.rewrite = None
        if msg.HasField("regex_rewrite"):
            rp = path + ".regex_rewrite"
            pattern = regex_matcher(msg.regex_rewrite.pattern, rp + ".pattern")
            regex.check_substitution(pattern, msg.regex_rewrite.substitution,
                                     rp + ".substitution")
            self.rewrite = (pattern, msg.regex_rewrite.substitution)

    def evaluate(self, req, info, ctx, add_cookie):
        if self.attr is not None:
            v = getattr(req, self.attr)
            values = [v] if v else []
        elif self.name == "host":  # Envoy keeps Host as :authority: never found as "host"
            values = []
        else:
            values = req.headers.get_all(self.name)
        if not values:
            return None
        if self.rewrite is not None:
            pattern, sub = self.rewrite
            values = [pattern.sub(sub, v) for v in values]
        # Envoy's HashUtil::xxHash64(Span): each sorted value hashed with the previous
        # hash as its seed (one value: its plain xxHash64)
        h = 0
        for v in sorted(values):
            h = _xxh64(v.encode("latin-1", "replace"), h)
        return h


def cookie_value(headers, name: str) -> str:
    """Envoy's Utility::parseCookieValue: the first `name=value` of any Cookie header,
    without surrounding double quotes; "" when absent."""
    for line in headers.get_all("cookie"):
        for part in line.split(";"):
            part = part.lstrip(" \t")
            if not part:
                continue
            k, _, v = part.partition("=")
            if k == name:
                if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                    v = v[1:-1]
                return v
    return ""


class _Cookie:
    __slots__ = ("name", "ttl", "path", "attributes", "terminal")

    def __init__(self, msg, terminal: bool):
        self.name = msg.name
        self.ttl = (msg.ttl.seconds + msg.ttl.nanos // 1_000_000_000) if msg.HasField("ttl") \
            else None
        self.path = msg.path
        self.attributes = [(a.name, a.value) for a in msg.attributes]
        self.terminal = terminal

    def evaluate(self, req, info, ctx, add_cookie):
        value = cookie_value(req.headers, self.name)
        if not value and self.ttl is not None:
            value = add_cookie(self)
        return _xxh64(value.encode("latin-1", "replace")) if value else None

    def set_cookie(self, value: str) -> str:
        """Envoy's Utility::makeSetCookieValue (HttpOnly always)."""
        out = '%s="%s"' % (self.name, value)
        if self.ttl:
            out += "; Max-Age=%d" % self.ttl
        if self.path:
            out += "; Path=" + self.path
        for n, v in self.attributes:
            out += "; %s=%s" % (n, v) if v else "; " + n
        return out + "; HttpOnly"


class _SourceIp:
    __slots__ = ("terminal",)

    def __init__(self, terminal: bool):
        self.terminal = terminal

    def evaluate(self, req, info, ctx, add_cookie):
        ip = _ip_of(info.downstream_remote_address)
        return _xxh64(ip.encode()) if ip else None


class _QueryParameter:
    __slots__ = ("name", "terminal")

    def __init__(self, msg, terminal: bool):
        self.name = msg.name
        self.terminal = terminal

    def evaluate(self, req, info, ctx, add_cookie):
        path = req.path or ""
        q = path.find("?")
        if q < 0:
            return None
        query = path[q + 1:]
        f = query.find("#")
        if f >= 0:
            query = query[:f]
        for param in query.split("&"):
            if not param:
                continue
            k, eq, v = param.partition("=")
            if k == self.name:
                return _xxh64(v.encode("latin-1", "replace"))
        return None


class _FilterState:
    __slots__ = ("key", "terminal")

    def __init__(self, msg, terminal: bool):
        self.key = msg.key
        self.terminal = terminal

    def evaluate(self, req, info, ctx, add_cookie):
        fs = info._filter_state
        if not fs or self.key not in fs:
            return None
        v = fs[self.key]
        if isinstance(v, str):
            return _xxh64(v.encode())
        if isinstance(v, bytes):
            return _xxh64(v)
        h = getattr(v, "hash", None)
        return h() if callable(h) else None


def _ip_of(address: str | None) -> str:
    """"ip:port" or "[ip6]:port" -> ip."""
    if not address:
        return ""
    if address.startswith("["):
        return address[1:address.find("]")]
    return address.rsplit(":", 1)[0]


class HashPolicy:
    """A route's compiled hash_policy list."""

    __slots__ = ("_methods",)

    def __init__(self, policies, path: str):
        methods = []
        for i, p in enumerate(policies):
            kind = p.WhichOneof("policy_specifier")
            pp = "%s[%d].%s" % (path, i, kind)
            if kind == "header":
                if not p.header.header_name:
                    raise ValueError(pp + ".header_name: value length must be at least 1 "
                                     "characters")
                methods.append(_Header(p.header, p.terminal, pp))
            elif kind == "cookie":
                if not p.cookie.name:
                    raise ValueError(pp + ".name: value length must be at least 1 characters")
                methods.append(_Cookie(p.cookie, p.terminal))
            elif kind == "connection_properties":
                if p.connection_properties.source_ip:
                    methods.append(_SourceIp(p.terminal))
            elif kind == "query_parameter":
                if not p.query_parameter.name:
                    raise ValueError(pp + ".name: value length must be at least 1 characters")
                methods.append(_QueryParameter(p.query_parameter, p.terminal))
            elif kind == "filter_state":
                if not p.filter_state.key:
                    raise ValueError(pp + ".key: value length must be at least 1 characters")
                methods.append(_FilterState(p.filter_state, p.terminal))
            else:
                raise ValueError("%s[%d]: value is required" % (path, i))
        self._methods = tuple(methods)

    def generate(self, req, info, ctx):
        """The request's hash, or None; `ctx` (an lb.LbContext) collects the Set-Cookie
        values of generated cookies."""
        h = None

        def add_cookie(cookie):
            addr = (info.downstream_remote_address or "") + (info.downstream_local_address or "")
            value = "%016x" % _xxh64(addr.encode())
            if ctx.set_cookies is None:
                ctx.set_cookies = []
            ctx.set_cookies.append(cookie.set_cookie(value))
            return value

        for m in self._methods:
            new = m.evaluate(req, info, ctx, add_cookie)
            if new is not None:
                old = (((h << 1) | (h >> 63)) & _M64) if h is not None else 0
                h = old ^ new
            if m.terminal and h is not None:
                break
        return h


def lb_context(stream, route):
    """The load-balancer context of a routed request (what the router hands
    Cluster.choose_host): its hash from the route's hash_policy, computed if a hash
    balancer asks for it."""
    policy = route.hash_policy
    req, conn = stream.request, stream.fm.stream.conn
    if policy is None:
        return LbContext(None, conn, req.headers)
    info = stream.info
    return LbContext(lambda ctx: policy.generate(req, info, ctx), conn, req.headers)

"""Load-time checks Envoy makes beyond PGV: uniqueness, references, filter order, regexes,
endpoint addresses. Same ``(path, reason)`` output as the other checks."""
import ipaddress
import os

from envoy.config.core.v3 import base_pb2

from proxyd import regex, runtime
from proxyd.listener import filter_chain
from proxyd.transport import tls

from . import loader
from .errors import MapKey
from .locate import suggest

HCM_URL = ('type.googleapis.com/'
           'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager')
TCP_PROXY_URL = 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy'
THRIFT_URL = 'type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.ThriftProxy'
ROUTER_URL = 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router'
_REGEX_MATCHER = 'envoy.type.matcher.v3.RegexMatcher'
PYTHON_FILTER = 'proxyd.filters.http.python.v1.Python'


def check(msg, path=(), clusters=None):
    """Semantic errors of a Bootstrap or one xDS resource.

    ``clusters``: names a route may reference (None: don't check references). For a
    Bootstrap it is derived from static_resources unless clusters come from CDS.
    """
    out = []
    kind = msg.DESCRIPTOR.full_name
    if kind == 'envoy.config.bootstrap.v3.Bootstrap':
        _bootstrap(msg, path, out)
    elif kind == 'envoy.config.listener.v3.Listener':
        _listener(msg, path, clusters, out)
    elif kind == 'envoy.config.cluster.v3.Cluster':
        _cluster(msg, path, out)
    elif kind == 'envoy.config.route.v3.RouteConfiguration':
        _route_config(msg, path, clusters, out)
    elif HCM_URL.endswith('/' + kind):
        _hcm(msg, path, clusters, out)
    elif kind == 'envoy.service.runtime.v3.Runtime':
        _runtime_layer(msg.layer, path + ('layer',), '', out)
    rt = None
    if kind == 'envoy.config.bootstrap.v3.Bootstrap':  # its static layers may set RE2 limits
        rt = runtime.Runtime(runtime.merge(runtime.bootstrap_layers(msg, {})))
    _regexes(msg, path, out, rt)
    return out


def _unique(names, path, what, out):
    seen = {}
    for i, name in enumerate(names):
        if name and name in seen:
            out.append((path + (i, 'name'), f"duplicate {what} '{name}' (first at index {seen[name]})"))
        seen.setdefault(name, i)


def _secrets(bs, base, out):
    """Static secrets load; every reference without sds_config names one; a fetched one
    needs node id and cluster (Envoy's words)."""
    from proxyd.transport import secrets
    sr = bs.static_resources
    _unique([s.name for s in sr.secrets], base + ('secrets',), 'secret name', out)
    for i, sec in enumerate(sr.secrets):
        out.extend(tls.secret_problems(sec, base + ('secrets', i)))
    static = {s.name for s in sr.secrets}
    for field in ('listeners', 'clusters'):
        for i, msg in enumerate(getattr(sr, field)):
            for kind, ref, p in secrets.refs(msg):
                where = base + (field, i) + p
                if not ref.HasField('sds_config'):
                    if ref.name not in static:
                        out.append((where + ('name',), f'Unknown static secret: {ref.name}'))
                elif not (bs.node.id and bs.node.cluster):
                    api = 'TlsCertificateSdsApi' if kind == 'tls_certificate' else \
                        'CertificateValidationContextSdsApi'
                    out.append((where + ('sds_config',), f"{api}: node 'id' and 'cluster' are "
                                "required. Set it either in 'node' config or via --service-node "
                                "and --service-cluster options."))


def _bootstrap(bs, path, out):
    sr, base = bs.static_resources, path + ('static_resources',)
    _unique([listener.name for listener in sr.listeners], base + ('listeners',), 'listener name', out)
    _unique([c.name for c in sr.clusters], base + ('clusters',), 'cluster name', out)
    _secrets(bs, base, out)
    bound = {}
    for i, listener in enumerate(sr.listeners):
        sa = listener.address.socket_address
        if listener.address.HasField('socket_address') and sa.port_value != 0:
            key = (sa.address, sa.port_value, sa.protocol)
            if key in bound:
                out.append((base + ('listeners', i, 'address'),
                            f"address {sa.address}:{sa.port_value} is already used by listener "
                            f"'{sr.listeners[bound[key]].name}' (listeners[{bound[key]}])"))
            bound.setdefault(key, i)
    dynamic_cds = bs.HasField('dynamic_resources') and bs.dynamic_resources.HasField('cds_config')
    clusters = None if dynamic_cds else {c.name for c in sr.clusters}
    for i, listener in enumerate(sr.listeners):
        _listener(listener, base + ('listeners', i), clusters, out)
    for i, c in enumerate(sr.clusters):
        _cluster(c, base + ('clusters', i), out)
    admin_layers = [i for i, layer in enumerate(bs.layered_runtime.layers)
                    if layer.HasField('admin_layer')]
    if len(admin_layers) > 1:
        out.append((path + ('layered_runtime', 'layers', admin_layers[1], 'admin_layer'),
                    'Too many admin layers specified in LayeredRuntime, at most one may be '
                    'specified'))
    for i, layer in enumerate(bs.layered_runtime.layers):
        if layer.HasField('disk_layer'):
            # Envoy watches the symlink root's directory for the swap: it must exist
            root = layer.disk_layer.symlink_root
            if not os.path.isdir(os.path.dirname(root.rstrip('/')) or '.'):
                out.append((path + ('layered_runtime', 'layers', i, 'disk_layer', 'symlink_root'),
                            f'unable to add filesystem watch for file {root}: No such file or '
                            f'directory'))
        if layer.HasField('static_layer'):
            _runtime_layer(layer.static_layer, path + ('layered_runtime', 'layers', i, 'static_layer'),
                           '', out)


def _runtime_layer(struct, path, prefix, out):
    """Envoy's ProtoLayer: a runtime value is a string, number, bool, FractionalPercent or
    nested object of those; a list or null is rejected."""
    for key, v in sorted(struct.fields.items()):
        kind, name = v.WhichOneof('kind'), prefix + key
        if kind in (None, 'list_value', 'null_value'):
            out.append((path + (key,), f'invalid runtime entry value for {name} '
                                       f'({(kind or "unset").replace("_value", "")})'))
        elif kind == 'struct_value':
            fields = v.struct_value.fields
            if fields and 'numerator' not in fields and 'denominator' not in fields:
                _runtime_layer(v.struct_value, path + (key,), name + '.', out)


UDP_PROXY_URL = 'type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig'


def _listener(listener, path, clusters, out):
    if not listener.HasField('address'):  # Envoy 1.40: "address is necessary"
        out.append((path + ('address',), 'a listener needs an address'))
    udp = listener.address.socket_address.protocol == listener.address.socket_address.UDP
    if not listener.filter_chains and not listener.HasField('default_filter_chain') and not udp:
        out.append((path + ('filter_chains',), 'a listener needs at least one filter chain'))
    udp_filters = [i for i, f in enumerate(listener.listener_filters)
                   if f.typed_config.type_url == UDP_PROXY_URL]
    if udp:
        if listener.filter_chains or listener.HasField('default_filter_chain'):
            out.append((path + ('filter_chains',), 'proxyd serves a UDP listener with its '
                        'udp_proxy listener filter only (filter chains are for QUIC)'))
        if len(listener.listener_filters) != 1 or not udp_filters:
            out.append((path + ('listener_filters',), 'a UDP listener needs exactly one listener '
                        'filter, envoy.filters.udp_listener.udp_proxy'))
        else:
            cfg = loader.unpack(listener.listener_filters[0].typed_config)
            fpath = path + ('listener_filters', 0, 'typed_config')
            if cfg.HasField('matcher'):
                m = cfg.matcher
                if m.HasField('matcher_list') or m.HasField('matcher_tree') or \
                        not m.on_no_match.HasField('action'):
                    out.append((fpath + ('matcher',), 'proxyd implements a udp_proxy matcher with '
                                'only on_no_match.action (one route for every datagram)'))
            elif not cfg.cluster:
                out.append((fpath, 'udp_proxy needs a route: cluster or matcher'))
            # an unknown cluster is not an error: sessions count downstream_sess_no_route
    elif udp_filters:
        out.append((path + ('listener_filters', udp_filters[0]),
                    'udp_proxy is a UDP listener filter: the listener address needs protocol UDP'))
    from proxyd.observability.config_check import check_access_logs
    out += check_access_logs(listener.access_log, path + ('access_log',))
    out.extend(filter_chain.problems(listener, path))
    for i, chain in enumerate(listener.filter_chains):
        cpath = path + ('filter_chains', i)
        if chain.HasField('transport_socket'):
            out.extend(tls.problems(chain.transport_socket, cpath + ('transport_socket',), False))
        if not chain.filters:
            out.append((cpath + ('filters',), 'a filter chain needs at least one network filter'))
        for j, f in enumerate(chain.filters):
            fpath = cpath + ('filters', j)
            if not f.HasField('typed_config'):
                out.append((fpath + ('typed_config',), 'typed_config is required'))
            elif f.typed_config.type_url == HCM_URL:
                if j != len(chain.filters) - 1:
                    out.append((fpath, 'http_connection_manager is a terminal filter and must be '
                                       'the last network filter of its chain'))
                hcm = loader.unpack(f.typed_config)
                _hcm(hcm, fpath + ('typed_config',), clusters, out)
                if hcm.HasField('tracing') and listener.traffic_direction == base_pb2.OUTBOUND:
                    out.append((path + ('traffic_direction',),
                                'traffic_direction OUTBOUND makes Envoy trace this listener as '
                                'egress (CLIENT spans), which proxyd does not implement'))
            elif f.typed_config.type_url == TCP_PROXY_URL:
                if j != len(chain.filters) - 1:
                    out.append((fpath, 'tcp_proxy is a terminal filter and must be the last '
                                       'network filter of its chain'))
                from proxyd.observability.config_check import check_access_logs
                out.extend(check_access_logs(loader.unpack(f.typed_config).access_log,
                                             fpath + ('typed_config', 'access_log')))
            elif f.typed_config.type_url == THRIFT_URL:
                rc = loader.unpack(f.typed_config).route_config
                rpath = fpath + ('typed_config', 'route_config', 'routes')
                for k, r in enumerate(rc.routes):  # Envoy: "unknown thrift cluster" at load
                    _route_action(r.route, rpath + (k, 'route'), clusters, out)
                    for m, mp in enumerate(r.route.request_mirror_policies):
                        if clusters is not None and mp.cluster not in clusters:
                            out.append((rpath + (k, 'route', 'request_mirror_policies', m, 'cluster'),
                                        f"unknown thrift shadow cluster '{mp.cluster}'"))


def _hcm(hcm, path, clusters, out):
    filters = hcm.http_filters
    if not filters:
        out.append((path + ('http_filters',), 'at least one HTTP filter is required, and the last '
                                              'must be the router (envoy.filters.http.router)'))
    for i, f in enumerate(filters):
        fpath = path + ('http_filters', i)
        is_router = f.typed_config.type_url == ROUTER_URL
        if not f.HasField('typed_config'):
            out.append((fpath + ('typed_config',), 'typed_config is required'))
        elif not f.typed_config.type_url:
            continue  # reported by the supported-field check
        elif is_router and i != len(filters) - 1:
            out.append((fpath, 'the router is a terminal filter and must be the last HTTP filter'))
        elif not is_router and i == len(filters) - 1:
            out.append((fpath, f"the last HTTP filter must be the router "
                               f"(envoy.filters.http.router), not '{f.name}'"))
        else:
            _python_filter(f.typed_config, fpath + ('typed_config',), out)
    if hcm.HasField('route_config'):
        _route_config(hcm.route_config, path + ('route_config',), clusters, out)
        _per_filter_configs(hcm.route_config, path + ('route_config',), out)
    from proxyd.observability.config_check import check_access_logs, check_tracing
    out += check_access_logs(hcm.access_log, path + ('access_log',))
    out += check_tracing(hcm.tracing if hcm.HasField('tracing') else None,
                         path + ('tracing',), clusters)


def _header_values(level, path, out):
    """Command operators in *_headers_to_add values, as the worker compiles them."""
    from proxyd.router.header_mutation import compile_value
    for field in ('request_headers_to_add', 'response_headers_to_add'):
        for i, opt in enumerate(getattr(level, field)):
            vpath = path + (field, i, 'header', 'value')
            try:
                compile_value(opt.header.value, '')
            except ValueError as e:
                out.append((vpath, str(e).lstrip(': ')))


def _python_filter(typed_config, path, out):
    """A Python HTTP filter: its class must import, have the filter API, take its config."""
    if typed_config.type_url.rsplit('/', 1)[-1] not in loader.TYPED_STRUCTS:
        return
    type_name, struct = loader.extension_config(typed_config)
    if type_name != PYTHON_FILTER:
        return
    from proxyd.http.filters import python
    try:
        python.validate(struct)
    except Exception as e:  # noqa: BLE001 - whatever the user's code raised is the reason
        out.append((path, f'python filter: {e}'))


def _per_filter_configs(rc, path, out):
    """Each typed_per_filter_config must name a filter type that takes per-route config."""
    from proxyd.http.per_filter_config import PerFilterCompiler
    compile_level = PerFilterCompiler({})
    levels = [(rc, path)]
    for i, vh in enumerate(rc.virtual_hosts):
        levels.append((vh, path + ('virtual_hosts', i)))
        levels += [(r, path + ('virtual_hosts', i, 'routes', j)) for j, r in enumerate(vh.routes)]
    for msg, mpath in levels:
        for name in msg.typed_per_filter_config:
            try:
                compile_level({name: msg.typed_per_filter_config[name]}, '')
            except Exception as e:  # noqa: BLE001 - the filter's own reason
                reason = str(e).split(': ', 1)[-1]
                out.append((mpath + ('typed_per_filter_config', MapKey(name)), reason))


def _route_config(rc, path, clusters, out):
    if rc.HasField('validate_clusters') and not rc.validate_clusters.value:
        clusters = None
    _header_values(rc, path, out)
    domains, wildcard = {}, None
    for i, vh in enumerate(rc.virtual_hosts):
        vpath = path + ('virtual_hosts', i)
        _header_values(vh, vpath, out)
        for j, domain in enumerate(vh.domains):
            dpath = vpath + ('domains', j)
            key = domain.lower()
            if domain == '*':
                if wildcard is not None:
                    out.append((dpath, f"only one virtual host may have the domain '*' "
                                       f"(virtual_hosts[{wildcard}] has it too)"))
                wildcard = i if wildcard is None else wildcard
            elif key in domains:
                out.append((dpath, f"duplicate domain '{domain}' (also in virtual_hosts[{domains[key]}])"))
            domains.setdefault(key, i)
        for j, route in enumerate(vh.routes):
            _header_values(route, vpath + ('routes', j), out)
            if route.WhichOneof('action') == 'route':
                rpath = vpath + ('routes', j, 'route')
                _route_action(route.route, rpath, clusters, out)
                for k, u in enumerate(route.route.upgrade_configs):
                    if u.HasField('connect_config') and u.upgrade_type.lower() != 'connect':
                        out.append((rpath + ('upgrade_configs', k, 'connect_config'),
                                    f"Non-CONNECT upgrade type {u.upgrade_type} has ConnectConfig"))


def _route_action(ra, path, clusters, out):
    def known(name, npath):
        if clusters is not None and name not in clusters:
            out.append((npath, f"unknown cluster '{name}'" + suggest(name, clusters)))

    if ra.WhichOneof('cluster_specifier') == 'cluster':
        known(ra.cluster, path + ('cluster',))
    elif ra.WhichOneof('cluster_specifier') == 'weighted_clusters':
        wpath = path + ('weighted_clusters', 'clusters')
        for i, cw in enumerate(ra.weighted_clusters.clusters):
            known(cw.name, wpath + (i, 'name'))
        if ra.weighted_clusters.clusters and not sum(
                cw.weight.value for cw in ra.weighted_clusters.clusters):
            out.append((wpath, 'the sum of the cluster weights must be greater than 0'))


def _prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _lb_config(c, path, out):
    """What Envoy's ring hash and maglev balancers refuse at load."""
    rh = c.ring_hash_lb_config
    lo = rh.minimum_ring_size.value if rh.HasField('minimum_ring_size') else 1024
    hi = rh.maximum_ring_size.value if rh.HasField('maximum_ring_size') else 8388608
    if c.HasField('ring_hash_lb_config') and lo > hi:
        out.append((path + ('ring_hash_lb_config',),
                    f"ring hash: minimum_ring_size ({lo}) > maximum_ring_size ({hi})"))
    if c.maglev_lb_config.HasField('table_size') and not _prime(c.maglev_lb_config.table_size.value):
        out.append((path + ('maglev_lb_config', 'table_size'),
                    'The table size of maglev must be prime number'))


def _upstream_extended_connect(c, path, out):
    """allow_connect on an upstream's HTTP/2 options asks for WebSocket over HTTP/2
    upstream (RFC 8441); proxyd sends every upgrade upstream over HTTP/1.1."""
    found = []
    if c.HasField('http2_protocol_options'):
        found.append((path + ('http2_protocol_options', 'allow_connect'), c.http2_protocol_options))
    key = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions'
    any_msg = c.typed_extension_protocol_options.get(key)
    if any_msg is not None:
        try:
            opts = loader.unpack(any_msg)
        except Exception:  # noqa: BLE001 (reported by the supported-field check)
            opts = None
        base = path + ('typed_extension_protocol_options', MapKey(key))
        if opts is not None and opts.DESCRIPTOR.full_name == key:
            e, d = opts.explicit_http_config, opts.use_downstream_protocol_config
            found.append((base + ('explicit_http_config', 'http2_protocol_options',
                                  'allow_connect'), e.http2_protocol_options))
            found.append((base + ('use_downstream_protocol_config', 'http2_protocol_options',
                                  'allow_connect'), d.http2_protocol_options))
    for fpath, h2 in found:
        if h2.allow_connect:
            out.append((fpath, 'allow_connect upstream (extended CONNECT, WebSocket over '
                               'HTTP/2 to the cluster) is not supported by proxyd: it sends '
                               'upgrades upstream over HTTP/1.1'))


def _cluster(c, path, out):
    _upstream_extended_connect(c, path, out)
    if c.HasField('transport_socket'):
        out.extend(tls.problems(c.transport_socket, path + ('transport_socket',), True))
    if c.HasField('outlier_detection'):
        from proxyd.upstream.outlier import Config
        try:
            Config(c.outlier_detection)
        except ValueError as e:  # Envoy's own words
            out.append((path + ('outlier_detection', 'max_ejection_time'), str(e)))
    if len(c.health_checks) > 1:  # Envoy 1.40's HealthCheck.name is newer than our protos
        out.append((path + ('health_checks', 0),
                    'health check at index 0 is missing a name; all health checks must have a '
                    'name when multiple health checks are configured'))
    types = c.DESCRIPTOR.fields_by_name['type'].enum_type.values_by_name
    if c.type == types['LOGICAL_DNS'].number and (
            len(c.load_assignment.endpoints) != 1
            or len(c.load_assignment.endpoints[0].lb_endpoints) != 1):
        out.append((path + ('load_assignment',), 'LOGICAL_DNS clusters must have a single '
                                                 'locality_lb_endpoint and a single lb_endpoint'))
    if c.type == types['ORIGINAL_DST'].number:
        if c.lb_policy != c.CLUSTER_PROVIDED:
            policy = c.DESCRIPTOR.fields_by_name['lb_policy'].enum_type.values_by_number[
                c.lb_policy].name
            out.append((path + ('lb_policy',), f"LB policy {policy} is not valid for Cluster "
                                               f"type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is "
                                               f"allowed with cluster type 'ORIGINAL_DST'"))
        if c.HasField('load_assignment'):
            out.append((path + ('load_assignment',),
                        'ORIGINAL_DST clusters must have no load assignment configured'))
    _lb_config(c, path, out)
    if c.type != c.DESCRIPTOR.fields_by_name['type'].enum_type.values_by_name['STATIC'].number:
        return
    for i, lle in enumerate(c.load_assignment.endpoints):
        for j, lbe in enumerate(lle.lb_endpoints):
            sa = lbe.endpoint.address.socket_address
            if not lbe.endpoint.address.HasField('socket_address'):
                continue
            try:
                ipaddress.ip_address(sa.address)
            except ValueError:
                out.append((path + ('load_assignment', 'endpoints', i, 'lb_endpoints', j, 'endpoint',
                                    'address', 'socket_address', 'address'),
                            f"a STATIC cluster needs IP addresses, not '{sa.address}' "
                            f"(use type STRICT_DNS for hostnames)"))


def _regexes(msg, path, out, rt):
    name = msg.DESCRIPTOR.full_name
    if name == 'google.protobuf.Any':
        try:
            msg = loader.unpack(msg)
        except ValueError:
            return
        name = msg.DESCRIPTOR.full_name
    if name.startswith('google.protobuf.'):
        return
    if name == _REGEX_MATCHER:
        problem = regex.problem(msg.regex, rt)
        if problem:
            out.append((path + ('regex',), problem))
        return
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        fpath = path + (field.name,)
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name['value'].message_type is not None:
                for k, v in value.items():
                    _regexes(v, fpath + (MapKey(k),), out, rt)
        elif field.is_repeated:
            for i, v in enumerate(value):
                _regexes(v, fpath + (i,), out, rt)
        else:
            _regexes(value, fpath, out, rt)

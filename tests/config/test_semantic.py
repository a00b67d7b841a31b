"""Load-time checks Envoy makes beyond PGV, and validate_resource for single xDS resources."""
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from proxyd.config import validate_resource
from proxyd.regex import problem as regex_problem

HCM_PATH = 'static_resources.listeners[0].filter_chains[0].filters[0].typed_config'
VH_PATH = HCM_PATH + '.route_config.virtual_hosts[0]'

SECOND_LISTENER = '''\
  - name: {name}
    address:
      socket_address: {{ address: 0.0.0.0, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: second
          route_config: {{ virtual_hosts: [{{ name: x, domains: ["*"], routes: [] }}] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
'''


def _with_listener(config, name, port):
    return config(replace={'\n  clusters:\n': '\n' + SECOND_LISTENER.format(name=name, port=port)})


def test_duplicate_listener_name(config):
    cfg = _with_listener(config, 'http', 8081)
    assert cfg.error('static_resources.listeners[1].name') == (
        cfg.line('- name: http', 2), "duplicate listener name 'http' (first at index 0)")


def test_duplicate_listener_address(config):
    cfg = _with_listener(config, 'other', 8080)
    line, reason = cfg.error('static_resources.listeners[1].address')
    assert line == [i for i, t in enumerate(cfg.text.splitlines(), 1) if t == '    address:'][1]
    assert reason == "address 0.0.0.0:8080 is already used by listener 'http' (listeners[0])"


def test_distinct_listeners_load(config):
    from proxyd.config import load_bootstrap
    bs = load_bootstrap(_with_listener(config, 'other', 8081).path)
    assert len(bs.static_resources.listeners) == 2


def test_duplicate_cluster_name(config):
    cfg = config(replace={'- name: service2': '- name: service1'})
    assert cfg.error('static_resources.clusters[1].name') == (
        cfg.line('- name: service1', 2), "duplicate cluster name 'service1' (first at index 0)")


def test_http_filters_must_not_be_empty(config):
    cfg = config(replace={'          http_filters:\n': '          http_filters: []\n',
                          '          - name: envoy.filters.http.router\n': '',
                          '            typed_config:\n              "@type": type.googleapis.com/'
                          'envoy.extensions.filters.http.router.v3.Router\n': ''})
    line, reason = cfg.error(HCM_PATH + '.http_filters')
    assert line == cfg.line('http_filters: []')
    assert reason.startswith('at least one HTTP filter is required')


def test_router_must_be_last(config):
    extra = ('          - name: envoy.filters.http.router\n            typed_config:\n'
             '              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n')
    cfg = config(replace={extra: extra + '          - name: second\n            typed_config:\n'
                                          '              "@type": type.googleapis.com/envoy.extensions.'
                                          'filters.http.router.v3.Router\n'})
    assert cfg.error(HCM_PATH + '.http_filters[0]') == (
        cfg.line('- name: envoy.filters.http.router'),
        'the router is a terminal filter and must be the last HTTP filter')


def test_unknown_route_cluster(config):
    cfg = config(replace={'route: { cluster: service1,': 'route: { cluster: servce1,'})
    assert cfg.error(VH_PATH + '.routes[0].route.cluster') == (
        cfg.line('cluster: servce1'), "unknown cluster 'servce1'; did you mean 'service1'?")


def test_unknown_weighted_cluster(config):
    cfg = config(replace={'{ name: service2, weight: 20 }': '{ name: nothere, weight: 20 }'})
    line, reason = cfg.error(VH_PATH + '.routes[1].route.weighted_clusters.clusters[1].name')
    assert (line, reason) == (cfg.line('name: nothere'), "unknown cluster 'nothere'")


def test_validate_clusters_false_skips_reference_check(config):
    from proxyd.config import load_bootstrap
    cfg = config(replace={'route: { cluster: service1,': 'route: { cluster: later,',
                          'name: local_route': 'name: local_route\n            validate_clusters: false'})
    load_bootstrap(cfg.path)


def test_duplicate_domain(config):
    cfg = config(replace={'- match: { prefix: "/" }': '- match: { prefix: "/" }',
                          '            - name: backend\n':
                          '            - name: other\n              domains: ["Example.com"]\n'
                          '              routes: []\n            - name: backend\n'})
    line, reason = cfg.error(HCM_PATH + '.route_config.virtual_hosts[1].domains[0]')
    assert line == cfg.line('domains: ["example.com", "*"]')
    assert reason == "duplicate domain 'example.com' (also in virtual_hosts[0])"


def test_single_wildcard_domain(config):
    cfg = config(replace={'            - name: backend\n':
                          '            - name: other\n              domains: ["*"]\n'
                          '              routes: []\n            - name: backend\n'})
    line, reason = cfg.error(HCM_PATH + '.route_config.virtual_hosts[1].domains[1]')
    assert reason == "only one virtual host may have the domain '*' (virtual_hosts[0] has it too)"


def test_regex_must_compile(config):
    cfg = config(replace={'"^/s/[0-9]+$"': '"^/s/[0-9+$"'})
    line, reason = cfg.error(VH_PATH + '.routes[1].match.safe_regex.regex')
    assert line == cfg.line('safe_regex')
    assert reason == "invalid regex '^/s/[0-9+$': missing ]: [0-9+$"


def test_re2_differences():
    """RE2's own refusals, worded as RE2 words them (Envoy 1.40 says the same)."""
    assert regex_problem('^/a(?=b)') == "invalid regex '^/a(?=b)': invalid perl operator: (?="
    assert regex_problem(r'(a)\1') == "invalid regex '(a)\\\\1': invalid escape sequence: \\1"
    assert regex_problem(r'\Z') == "invalid regex '\\\\Z': invalid escape sequence: \\Z"
    assert regex_problem(r'a\\1') is None
    assert regex_problem(r'^/api/.*\z') is None
    assert regex_problem(r'\p{Greek}+') is None  # RE2 syntax Python's re lacks
    assert regex_problem('/(a{50}|b{60})x') == (
        "regex '/(a{50}|b{60})x' RE2 program size of 118 > max program size of 100 set for "
        "the error level threshold. Increase configured max program size if necessary.")


def test_static_cluster_needs_ip_literals(config):
    cfg = config(replace={'address: 10.0.0.2': 'address: backend.local'})
    path = ('static_resources.clusters[1].load_assignment.endpoints[0].lb_endpoints[0]'
            '.endpoint.address.socket_address.address')
    assert cfg.error(path) == (
        cfg.line('backend.local'),
        "a STATIC cluster needs IP addresses, not 'backend.local' (use type STRICT_DNS for hostnames)")


def test_all_check_kinds_reported_together(config):
    cfg = config(replace={'address: 10.0.0.2': 'address: backend.local',
                          'connect_timeout: 0.25s': 'connect_timeout: 0s',
                          'lb_policy: ROUND_ROBIN': 'lb_policy: LOAD_BALANCING_POLICY_CONFIG'})
    assert [e.split(': ', 2)[1].rsplit('.', 1)[-1] for e in cfg.errors()] == [
        'connect_timeout', 'lb_policy', 'address']


def test_validate_resource_cluster():
    c = Cluster(name='c', lb_policy=Cluster.LOAD_BALANCING_POLICY_CONFIG)
    c.load_assignment.cluster_name = 'c'
    assert validate_resource(c, 'clusters[0]') == [
        'clusters[0].lb_policy: value LOAD_BALANCING_POLICY_CONFIG of '
        'envoy.config.cluster.v3.Cluster.lb_policy is not supported by proxyd (supported: '
        'CLUSTER_PROVIDED, LEAST_REQUEST, MAGLEV, RANDOM, RING_HASH, ROUND_ROBIN)']
    c = Cluster(name='c', type=Cluster.LOGICAL_DNS)
    c.load_assignment.cluster_name = 'c'
    assert validate_resource(c, 'clusters[0]') == [   # Envoy 1.40's words
        'clusters[0].load_assignment: LOGICAL_DNS clusters must have a single '
        'locality_lb_endpoint and a single lb_endpoint']
    c = Cluster(name='c', type=Cluster.ORIGINAL_DST)
    c.load_assignment.cluster_name = 'c'
    assert validate_resource(c, 'clusters[0]') == [
        "clusters[0].lb_policy: LB policy ROUND_ROBIN is not valid for Cluster type ORIGINAL_DST. "
        "Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'",
        'clusters[0].load_assignment: ORIGINAL_DST clusters must have no load assignment configured']
    ok = Cluster(name='c')
    ok.connect_timeout.seconds = 1
    assert validate_resource(ok) == []


def test_validate_resource_route_configuration():
    rc = RouteConfiguration(name='r')
    vh = rc.virtual_hosts.add(name='v', domains=['*'])
    route = vh.routes.add()
    route.match.prefix = '/'
    route.route.cluster = 'gone'
    assert validate_resource(rc) == []
    assert validate_resource(rc, clusters={'here'}) == [
        "virtual_hosts[0].routes[0].route.cluster: unknown cluster 'gone'"]


def test_validate_resource_listener_checks_inside_typed_config():
    from envoy.config.listener.v3.listener_pb2 import Listener
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2)
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix='', codec_type=hcm_pb2.HttpConnectionManager.HTTP3)
    hcm.route_config.name = 'r'
    listener = Listener(name='l')
    listener.address.socket_address.address = '0.0.0.0'
    listener.address.socket_address.port_value = 80
    f = listener.filter_chains.add().filters.add(name='hcm')
    f.typed_config.Pack(hcm)
    prefix = 'filter_chains[0].filters[0].typed_config'
    assert validate_resource(listener) == [
        f'{prefix}.codec_type: value HTTP3 of envoy.extensions.filters.network.http_connection_manager'
        '.v3.HttpConnectionManager.codec_type is not supported by proxyd (supported: AUTO, HTTP1, HTTP2)',
        f'{prefix}.stat_prefix: value length must be at least 1 characters',
        f'{prefix}.http_filters: at least one HTTP filter is required, and the last must be the '
        'router (envoy.filters.http.router)']


def test_unpack_unknown_type():
    import pytest
    from google.protobuf.any_pb2 import Any
    from proxyd.config import unpack
    with pytest.raises(ValueError, match='unknown type URL'):
        unpack(Any(type_url='type.googleapis.com/nope.v3.Nope'))


def test_re2_program_size_limits_follow_the_runtime():
    """re2.max_program_size.error_level raises Envoy's limit of 100; the warn level
    only logs."""
    from proxyd import runtime
    rt = runtime.Runtime(runtime.flatten({"re2": {"max_program_size": {"error_level": 200,
                                                                       "warn_level": 10}}}))
    assert regex_problem('/(a{50}|b{60})x', rt) is None
    rt = runtime.Runtime(runtime.flatten({"re2.max_program_size.error_level": 10}))
    assert "RE2 program size of 20 > max program size of 10" in regex_problem('/abc[0-9]+x{10}', rt)


NETWORK_RBAC = '''\
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: net
          rules: { action: DENY, policies: {} }
      - name: envoy.filters.network.http_connection_manager
'''
FIRST_FILTER = '    - filters:\n      - name: envoy.filters.network.http_connection_manager\n'


def test_network_filters_in_front_of_the_hcm_load(config):
    """As in Envoy: RBAC (or rate limits, ext_authz) before the HCM as terminal filter."""
    from proxyd.config import load_bootstrap
    bs = load_bootstrap(config(replace={FIRST_FILTER: NETWORK_RBAC}).path)
    names = [f.name for f in bs.static_resources.listeners[0].filter_chains[0].filters]
    assert names == ['envoy.filters.network.rbac', 'envoy.filters.network.http_connection_manager']


def test_hcm_must_be_the_last_network_filter(config):
    router_end = ('              "@type": type.googleapis.com/envoy.extensions.filters.http.'
                  'router.v3.Router\n  clusters:\n')
    rbac_after = NETWORK_RBAC.split('\n', 1)[1].rsplit('      - name: envoy.filters.network.'
                                                     'http_connection_manager\n', 1)[0]
    cfg = config(replace={router_end: router_end.replace('  clusters:\n', rbac_after
                                                         + '  clusters:\n')})
    assert cfg.error('static_resources.listeners[0].filter_chains[0].filters[0]')[1] == (
        'http_connection_manager is a terminal filter and must be the last network filter of '
        'its chain')

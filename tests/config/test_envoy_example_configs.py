"""Spellings and mistakes from Envoy's own example configs, checked as `proxyd check` sees
them: what Envoy 1.40 accepts loads, and what proxyd refuses is said plainly and located."""
import time

import pytest

from harness import billion_laughs
from proxyd.config import load_bootstrap, unpack

HCM = 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager'
ROUTER = 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router'

# Envoy's wasm-cc example writes its enums in lower case; dynamic-config-fs writes
# `filters:` as one object; both load in Envoy 1.40.
WASM_CC = f'''\
static_resources:
  listeners:
  - name: main
    address:
      socket_address: {{ address: 0.0.0.0, port_value: 8000 }}
    filter_chains:
      filters:
        name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: ingress_http
          codec_type: auto
          route_config:
            name: local_route
            virtual_hosts:
            - name: local_service
              domains: "*"
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: web_service }}
                response_headers_to_add:
                - header: {{ key: x-b3-traceid, value: "%REQ(x-b3-traceid)%" }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": {ROUTER}
  clusters:
  - name: web_service
    connect_timeout: 0.25s
    type: strict_dns
    lb_policy: round_robin
    dns_lookup_family: v4_only
    load_assignment:
      cluster_name: web_service
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: web_service, port_value: 5678 }}
'''


def test_lower_case_enums_and_single_objects_load(config):
    bs = load_bootstrap(config(WASM_CC).path)
    c = bs.static_resources.clusters[0]
    assert (c.type, c.lb_policy, c.dns_lookup_family) == (c.STRICT_DNS, c.ROUND_ROBIN, c.V4_ONLY)
    (chain,) = bs.static_resources.listeners[0].filter_chains
    (f,) = chain.filters
    hcm = unpack(f.typed_config)
    assert hcm.codec_type == hcm.AUTO
    assert list(hcm.route_config.virtual_hosts[0].domains) == ['*']


def test_an_error_inside_a_single_object_is_located(config):
    cfg = config(WASM_CC.replace('%REQ(x-b3-traceid)%', '%REQ()%'))
    ((line, reason),) = [cfg.error(
        'static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config'
        '.virtual_hosts[0].routes[0].response_headers_to_add[0].header.value')]
    assert line == cfg.line('%REQ()%')
    assert reason == 'REQ requires parameters'


@pytest.mark.parametrize('value,reason', [
    ('%REQ()%', 'REQ requires parameters'),
    ('%NOT_AN_OPERATOR%', 'Not supported field in StreamInfo: NOT_AN_OPERATOR'),
    ('100%', "Incorrect configuration: 100%. Couldn't find valid command at position 3"),
    ('%HOSTNAME(x)%', 'HOSTNAME does not take any parameters or length'),
])
def test_command_operators_in_header_values_are_checked(config, value, reason):
    """The messages are Envoy 1.40's for the same values."""
    cfg = config(WASM_CC.replace('%REQ(x-b3-traceid)%', value))
    (error,) = cfg.errors()
    assert error.endswith('.response_headers_to_add[0].header.value: ' + reason)


def test_two_explicit_listeners_with_one_name_are_an_error(config):
    """Envoy 1.40 silently serves only the first of them; proxyd refuses the config."""
    cfg = config(f'''\
        static_resources:
          listeners:
          - name: same
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8080 }} }}
            filter_chains: [{{ filters: [{{ name: h, typed_config: {{ "@type": {HCM}, stat_prefix: a, route_config: {{}}, http_filters: [{{ name: r, typed_config: {{ "@type": {ROUTER} }} }}] }} }}] }}]
          - name: same
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8443 }} }}
            filter_chains: [{{ filters: [{{ name: h, typed_config: {{ "@type": {HCM}, stat_prefix: b, route_config: {{}}, http_filters: [{{ name: r, typed_config: {{ "@type": {ROUTER} }} }}] }} }}] }}]
        ''')
    line, reason = cfg.error('static_resources.listeners[1].name')
    assert line == cfg.line('- name: same', 2)
    assert reason == "duplicate listener name 'same' (first at index 0)"


@pytest.mark.parametrize('url,extension', [
    ('envoy.extensions.filters.network.golang.v3alpha.Config', 'envoy.filters.network.golang'),
    ('envoy.extensions.filters.http.golang.v3alpha.Config', 'envoy.filters.http.golang'),
    ('envoy.extensions.filters.network.kafka_broker.v3.KafkaBroker',
     'envoy.filters.network.kafka_broker'),
    ('envoy.extensions.filters.network.mysql_proxy.v3.MySQLProxy',
     'envoy.filters.network.mysql_proxy'),
    ('envoy.extensions.filters.network.postgres_proxy.v3alpha.PostgresProxy',
     'envoy.filters.network.postgres_proxy'),
])
def test_contrib_extensions_are_named_as_such(config, url, extension):
    cfg = config(f'''\
        static_resources:
          listeners:
          - name: db
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: 3306 }} }}
            filter_chains:
            - filters:
              - name: contrib
                typed_config:
                  "@type": type.googleapis.com/{url}
                  stat_prefix: db
              - name: envoy.filters.network.tcp_proxy
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                  stat_prefix: tcp
                  cluster: db
          clusters:
          - name: db
            load_assignment:
              cluster_name: db
              endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 3307 }} }} }} }}] }}]
        ''')
    line, reason = cfg.error('static_resources.listeners[0].filter_chains[0].filters[0]'
                             '.typed_config.@type')
    assert line == cfg.line('"@type": type.googleapis.com/' + url)
    assert reason == (f"'type.googleapis.com/{url}' is a known Envoy extension ({extension}, "
                      f"in Envoy's contrib build only) that proxyd does not implement")


def test_udp_listener_of_envoys_example_loads(config):
    """Envoy's udp example: a UDP listener has listener filters and no filter chains."""
    cfg = config('''\
        static_resources:
          listeners:
          - name: listener_0
            address:
              socket_address:
                protocol: UDP
                address: 0.0.0.0
                port_value: 10000
            listener_filters:
            - name: envoy.filters.udp_listener.udp_proxy
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
                stat_prefix: service
                matcher:
                  on_no_match:
                    action:
                      name: route
                      typed_config:
                        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                        cluster: service_udp
        ''')
    bs = load_bootstrap(cfg.path)
    assert bs.static_resources.listeners[0].address.socket_address.protocol == 1   # UDP


def test_udp_listener_takes_only_udp_proxy(config):
    cfg = config('''\
        static_resources:
          listeners:
          - name: u
            address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: 10000}}
            listener_filters:
            - name: tls
              typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
          - name: t
            address: {socket_address: {address: 127.0.0.1, port_value: 10001}}
            listener_filters:
            - name: udp
              typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig,
                             stat_prefix: s, cluster: c}
            filter_chains:
            - filters:
              - name: echo
                typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}
        ''')
    assert cfg.error('static_resources.listeners[0].listener_filters')[1] == (
        'a UDP listener needs exactly one listener filter, envoy.filters.udp_listener.udp_proxy')
    assert cfg.error('static_resources.listeners[1].listener_filters[0]')[1] == (
        'udp_proxy is a UDP listener filter: the listener address needs protocol UDP')


def test_unclosed_flow_mapping_is_reported_where_it_opens(config):
    cfg = config(WASM_CC.replace('route: { cluster: web_service }', 'route: { cluster: web_service'))
    (error,) = cfg.errors()
    opened = cfg.line('route: { cluster: web_service')
    col = cfg.text.splitlines()[opened - 1].index('{') + 1
    assert error.startswith(f"{cfg.path}:{opened}:{col}: invalid YAML: this flow mapping ('{{') "
                            f"is not closed: ")


def test_tab_indentation_is_called_a_tab(config):
    cfg = config(WASM_CC.replace('    connect_timeout: 0.25s', '\tconnect_timeout: 0.25s'))
    (error,) = cfg.errors()
    assert error == (f'{cfg.path}:{cfg.line("connect_timeout")}:1: invalid YAML: a tab character '
                     f'is used for indentation; YAML indents with spaces only')


def test_alias_bomb_is_refused_fast_with_its_line(config):
    cfg = config(billion_laughs())
    t0 = time.monotonic()
    (error,) = cfg.errors()
    assert time.monotonic() - t0 < 5
    line = cfg.line('lol6: &lol6')  # 9**6 strings: the first list past a million nodes
    assert error.startswith(f'{cfg.path}:{line}:')
    assert 'aliases expand this to more than 1,000,000 YAML nodes (an alias bomb?)' in error


def test_anchors_as_templates_still_load(config):
    text = WASM_CC.replace('  - name: web_service\n    connect_timeout: 0.25s',
                           '  - &web\n    name: web_service\n    connect_timeout: 0.25s')
    text += '  - <<: *web\n    name: web_service_2\n'
    bs = load_bootstrap(config(text).path)
    assert [c.name for c in bs.static_resources.clusters] == ['web_service', 'web_service_2']


def test_descriptive_fields_are_accepted(config):
    """11 of Envoy's example configs set Listener.traffic_direction; metadata is read only
    by filters and load balancers proxyd lacks."""
    text = WASM_CC.replace('  - name: main\n', '  - name: main\n    traffic_direction: outbound\n'
                                                '    metadata: {filter_metadata: {team: {a: 1}}}\n')
    text = text.replace('  - name: web_service\n', '  - name: web_service\n'
                                                   '    metadata: {filter_metadata: {x: {y: z}}}\n')
    bs = load_bootstrap(config(text).path)
    listener = bs.static_resources.listeners[0]
    assert listener.traffic_direction == listener.DESCRIPTOR.fields_by_name[
        'traffic_direction'].enum_type.values_by_name['OUTBOUND'].number
    assert bs.static_resources.clusters[0].metadata.filter_metadata['x']['y'] == 'z'


def test_outbound_beside_tracing_is_an_error(config):
    """In Envoy OUTBOUND turns the listener's spans into egress CLIENT spans."""
    text = WASM_CC.replace('  - name: main\n', '  - name: main\n    traffic_direction: OUTBOUND\n')
    text = text.replace('          codec_type: auto\n', '          codec_type: auto\n'
                                                       '          tracing: {}\n')
    cfg = config(text)
    line, reason = cfg.error('static_resources.listeners[0].traffic_direction')
    assert line == cfg.line('traffic_direction: OUTBOUND')
    assert 'which proxyd does not implement' in reason


def test_a_field_that_changes_behaviour_stays_an_error(config):
    cfg = config(WASM_CC.replace('  - name: main\n', '  - name: main\n'
                                                     '    per_connection_buffer_limit_bytes: 1024\n'))
    _, reason = cfg.error('static_resources.listeners[0].per_connection_buffer_limit_bytes')
    assert reason == ("field 'per_connection_buffer_limit_bytes' of envoy.config.listener.v3.Listener "
                      "is not supported by proxyd")


# The shapes of Envoy's ext_authz sandbox (examples/ext_authz/config: a gRPC service on a
# cluster with the legacy http2_protocol_options, an OPA service on a cluster with
# HttpProtocolOptions and no transport_api_version, a raw HTTP service forwarding one
# header upstream), each with the clusters the sandbox's compose file names.
EXT_AUTHZ = 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz'
_EXT_AUTHZ_SANDBOX = '''\
static_resources:
  listeners:
  - address: {{socket_address: {{address: 0.0.0.0, port_value: 8000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          codec_type: auto
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: upstream-service}}}}]
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": {EXT_AUTHZ}
{authz}
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER}}}
  clusters:
  - name: upstream-service
    type: STRICT_DNS
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: upstream-service
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address:
        {{address: upstream-service, port_value: 8080}}}}}}}}]}}]
  - name: {service}
    type: STRICT_DNS
    lb_policy: ROUND_ROBIN
{protocol}
    load_assignment:
      cluster_name: {service}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address:
        {{address: {service}, port_value: 9001}}}}}}}}]}}]
'''
_SANDBOXES = {
    'grpc-service': ('ext_authz-grpc-service', '    http2_protocol_options: {}', '''\
              grpc_service:
                envoy_grpc: {cluster_name: ext_authz-grpc-service}
                timeout: 0.250s
              transport_api_version: V3'''),
    'opa-service': ('ext_authz-opa-service', '''\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}''', '''\
              grpc_service:
                envoy_grpc: {cluster_name: ext_authz-opa-service}
                timeout: 0.250s'''),
    'http-service': ('ext_authz-http-service', '', '''\
              transport_api_version: V3
              http_service:
                server_uri: {uri: ext_authz, cluster: ext_authz-http-service, timeout: 0.250s}
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{exact: x-current-user}]'''),
}


@pytest.mark.parametrize('sandbox', sorted(_SANDBOXES))
def test_ext_authz_sandbox_configs_load(config, sandbox):
    service, protocol, authz = _SANDBOXES[sandbox]
    text = _EXT_AUTHZ_SANDBOX.format(HCM=HCM, ROUTER=ROUTER, EXT_AUTHZ=EXT_AUTHZ,
                                     authz=authz, service=service, protocol=protocol)
    bs = load_bootstrap(config('\n'.join(ln for ln in text.splitlines() if ln.strip()) + '\n').path)
    hcm = unpack(bs.static_resources.listeners[0].filter_chains[0].filters[0].typed_config)
    assert unpack(hcm.http_filters[0].typed_config).DESCRIPTOR.name == 'ExtAuthz'


def test_router_typed_config_without_type_is_refused_as_envoy_1_40_does(config):
    # The sandbox files write `typed_config: {}` for the router; Envoy 1.40 refuses that
    # ("Didn't find a registered implementation ... with type URL: ''"), and so does proxyd.
    service, protocol, authz = _SANDBOXES['grpc-service']
    text = _EXT_AUTHZ_SANDBOX.format(HCM=HCM, ROUTER=ROUTER, EXT_AUTHZ=EXT_AUTHZ,
                                     authz=authz, service=service, protocol=protocol)
    cfg = config(text.replace('typed_config: {"@type": %s}' % ROUTER, 'typed_config: {}'))
    (line, reason) = cfg.error('static_resources.listeners[0].filter_chains[0].filters[0]'
                               '.typed_config.http_filters[1].typed_config')
    assert reason == "'@type' is missing"

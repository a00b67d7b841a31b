"""protobuf parse failures come back located: FILE:LINE:COL, snake_case json path, clean reason."""
import re

from proxyd.config import ConfigError, load_bootstrap, unpack

HCM_PATH = 'static_resources.listeners[0].filter_chains[0].filters[0].typed_config'
EP_PATH = ('static_resources.clusters[1].load_assignment.endpoints[0].lb_endpoints[0]'
           '.endpoint.address.socket_address')


def test_error_shape(config):
    cfg = config(replace={'port_value: 9901': 'port_value: eighty'})
    [err] = cfg.errors()
    assert re.fullmatch(rf'{re.escape(str(cfg.path))}:3:\d+: '
                        r'admin\.address\.socket_address\.port_value: .+', err)
    assert 'Failed to parse' not in err


def test_unknown_field_in_typed_config_did_you_mean(config):
    cfg = config(replace={'stat_prefix': 'stat_prefx'})
    line, reason = cfg.error(HCM_PATH + '.stat_prefx')
    assert line == cfg.line('stat_prefx')
    assert reason == (f"unknown field 'stat_prefx' in envoy.extensions.filters.network."
                      f"http_connection_manager.v3.HttpConnectionManager; did you mean 'stat_prefix'?")
    assert len(cfg.errors()) == 1  # no follow-up 'stat_prefix is empty' noise


def test_unknown_camel_case_field_suggests_snake_case(config):
    cfg = config(replace={'connect_timeout: 1s': 'connectTimout: 1s'})
    line, reason = cfg.error('static_resources.clusters[1].connectTimout')
    assert line == cfg.line('connectTimout')
    assert reason.endswith("did you mean 'connect_timeout'?")


def test_bad_int(config):
    cfg = config(replace={'address: 10.0.0.2, port_value: 8000': 'address: 10.0.0.2, port_value: eighty'})
    line, reason = cfg.error(EP_PATH + '.port_value')
    assert line == cfg.line('port_value: eighty')
    assert reason == "expected an integer, got 'eighty'"


def test_bad_enum(config):
    cfg = config(replace={'type: STRICT_DNS': 'type: STRICT_DN'})
    line, reason = cfg.error('static_resources.clusters[0].type')
    assert line == cfg.line('type: STRICT_DN')
    assert reason.startswith("invalid value 'STRICT_DN' for enum envoy.config.cluster.v3.Cluster.DiscoveryType")
    assert reason.endswith("did you mean 'STRICT_DNS'?")


def test_bad_duration(config):
    cfg = config(replace={'connect_timeout: 1s': 'connect_timeout: 1x'})
    line, reason = cfg.error('static_resources.clusters[1].connect_timeout')
    assert line == cfg.line('connect_timeout: 1x')
    assert reason == 'Duration must end with letter "s": 1x'


def test_unknown_type_url(config):
    cfg = config(replace={'router.v3.Router': 'router.v3.Routr'})
    path = HCM_PATH + '.http_filters[0].typed_config.@type'
    line, reason = cfg.error(path)
    assert line == cfg.line('router.v3.Routr')
    assert reason == ("unknown @type 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Routr'; "
                      "did you mean 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router'?")
    assert len(cfg.errors()) == 1  # not also 'the last HTTP filter must be the router'


def test_missing_type(config):
    cfg = config(replace={'"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router':
                          'foo: 1'})
    line, reason = cfg.error(HCM_PATH + '.http_filters[0].typed_config')
    assert reason == "'@type' is missing"


def test_scalar_where_list_expected_is_one_element(config):
    """Envoy 1.40 accepts `domains: "*"` (protobuf's legacy JSON syntax)."""
    cfg = config(replace={'domains: ["example.com", "*"]': 'domains: "*"'})
    bs = load_bootstrap(cfg.path)
    hcm = unpack(bs.static_resources.listeners[0].filter_chains[0].filters[0].typed_config)
    assert list(hcm.route_config.virtual_hosts[0].domains) == ['*']


def test_list_where_object_expected(config):
    cfg = config('''\
        node:
          - id: x
        ''')
    line, reason = cfg.error('node')
    assert line == 1
    assert reason == 'expected an object (envoy.config.core.v3.Node), got a list'


def test_list_where_string_expected(config):
    cfg = config(replace={'- name: service2': '- name: [service2]'})
    line, reason = cfg.error('static_resources.clusters[1].name')
    assert line == cfg.line('name: [service2]')
    assert reason == 'expected a string, got a list'


def test_two_oneof_members(config):
    cfg = config(replace={'route: { cluster: service1, timeout: 5s }':
                          'route: { cluster: service1, cluster_header: x }'})
    path = HCM_PATH + '.route_config.virtual_hosts[0].routes[0].route.cluster_header'
    line, reason = cfg.error(path)
    assert reason == "only one of the oneof 'cluster_specifier' may be set, 'cluster' is set too"


def test_all_parse_errors_reported_with_other_checks(config):
    cfg = config(replace={'port_value: 9901': 'port_value: eighty',
                          'connect_timeout: 1s': 'connect_timeout: 1x',
                          'stat_prefix': 'stat_prefx',
                          'connect_timeout: 0.25s': 'connect_timeout: 0s'})
    paths = [e.split(': ', 2)[1] for e in cfg.errors()]
    assert paths == ['admin.address.socket_address.port_value',
                     HCM_PATH + '.stat_prefx',
                     'static_resources.clusters[0].connect_timeout',
                     'static_resources.clusters[1].connect_timeout']


def test_yaml_syntax_error(config):
    cfg = config('static_resources:\n  clusters: [\n')
    [err] = cfg.errors()
    assert err.startswith(f'{cfg.path}:3:1: invalid YAML: ')


def test_duplicate_key(config):
    cfg = config(replace={'  cluster: front': '  cluster: front\n  id: again'})
    line, reason = cfg.error('node.id')
    assert line == cfg.line('id: again')
    assert reason == "duplicate key 'id' (only the last one would be used)"


def test_empty_file(config):
    [err] = config('').errors()
    assert err.endswith('<root>: expected an object (envoy.config.bootstrap.v3.Bootstrap), got an empty file')


def test_missing_file(tmp_path):
    try:
        load_bootstrap(tmp_path / 'nope.yaml')
    except ConfigError as e:
        [err] = e.errors
        assert err.startswith(f'{tmp_path / "nope.yaml"}: cannot read config')
    else:
        raise AssertionError('no error')


def test_number_where_duration_expected(config):
    cfg = config(replace={'connect_timeout: 1s': 'connect_timeout: 1'})
    assert cfg.error('static_resources.clusters[1].connect_timeout') == (
        cfg.line('connect_timeout: 1'), "expected a duration string such as '0.25s', got a number")


def test_empty_typed_config(config):
    cfg = config(replace={'"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router':
                          '{}'})
    cfg = config(cfg.text.replace('typed_config:\n              {}', 'typed_config: {}'))
    assert [e.split(': ', 1)[1] for e in cfg.errors()] == [
        HCM_PATH + ".http_filters[0].typed_config: '@type' is missing"]


def test_top_level_typo_does_not_hide_other_errors(config):
    cfg = config(replace={'node:': 'nod:', 'connect_timeout: 0.25s': 'connect_timeout: 0s'})
    assert [e.split(': ', 2)[1] for e in cfg.errors()] == [
        'nod', 'static_resources.clusters[0].connect_timeout']

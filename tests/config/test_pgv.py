"""Envoy's validate.rules, enforced with path and line, including inside typed_config (Any)."""
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxyd.config import pgv

HCM_PATH = 'static_resources.listeners[0].filter_chains[0].filters[0].typed_config'
VH_PATH = HCM_PATH + '.route_config.virtual_hosts[0]'


def test_duration_gt(config):
    cfg = config(replace={'connect_timeout: 0.25s': 'connect_timeout: 0s'})
    assert cfg.error('static_resources.clusters[0].connect_timeout') == (
        cfg.line('connect_timeout: 0s'), 'value must be greater than 0s')


def test_duration_gt_nonzero_bound(config):
    cfg = config(replace={'lb_policy: ROUND_ROBIN': 'dns_refresh_rate: 0.0005s'})
    assert cfg.error('static_resources.clusters[0].dns_refresh_rate') == (
        cfg.line('dns_refresh_rate'), 'value must be greater than 0.001s')


def test_empty_cluster_name(config):
    cfg = config(replace={'- name: service2': '- name: ""', '- { name: service2, weight: 20 }': ''})
    assert cfg.error('static_resources.clusters[1].name') == (
        cfg.line('- name: ""'), 'value length must be at least 1 characters')


def test_missing_cluster_name_points_at_the_cluster(config):
    cfg = config(replace={'- name: service2\n    connect_timeout: 1s': '- connect_timeout: 1s',
                          '- { name: service2, weight: 20 }': ''})
    assert cfg.error('static_resources.clusters[1].name') == (
        cfg.line('- connect_timeout: 1s'), 'value length must be at least 1 characters')


def test_port_out_of_range(config):
    cfg = config(replace={'port_value: 9901': 'port_value: 70000'})
    assert cfg.error('admin.address.socket_address.port_value') == (
        3, 'value must be less than or equal to 65535')


def test_rules_apply_inside_any(config):
    cfg = config(replace={'stat_prefix: ingress_http': 'stat_prefix: ""'})
    assert cfg.error(HCM_PATH + '.stat_prefix') == (
        cfg.line('stat_prefix'), 'value length must be at least 1 characters')


def test_wrapper_value_rules(config):
    cfg = config(replace={'codec_type: AUTO': 'codec_type: AUTO\n          max_request_headers_kb: 0'})
    assert cfg.error(HCM_PATH + '.max_request_headers_kb') == (
        cfg.line('max_request_headers_kb'), 'value must be greater than 0')


def test_uint32_range(config):
    cfg = config(replace={'status: 404': 'status: 700'})
    path = VH_PATH + '.routes[3].direct_response.status'
    assert cfg.error(path) == (cfg.line('status: 700'), 'value must be less than 600')


def test_enum_defined_only(config):
    cfg = config(replace={'type: STRICT_DNS': 'type: 17'})
    line, reason = cfg.error('static_resources.clusters[0].type')
    assert (line, reason) == (cfg.line('type: 17'), 'value must be one of the defined enum values')


def test_required_message(config):
    cfg = config(replace={'- match: { prefix: "/old" }\n                redirect:': '- redirect:'})
    assert cfg.error(VH_PATH + '.routes[2].match') == (
        cfg.line('- redirect:'), 'value is required')


def test_repeated_min_items(config):
    cfg = config(replace={'domains: ["example.com", "*"]': 'domains: []'})
    assert cfg.error(VH_PATH + '.domains') == (
        cfg.line('domains: []'), 'value must contain at least 1 item(s)')


def test_repeated_items_rules(config):
    cfg = config(replace={'- name: backend': '- name: backend\n              request_headers_to_remove: ["x", ""]'})
    assert cfg.error(VH_PATH + '.request_headers_to_remove[1]') == (
        cfg.line('request_headers_to_remove'), 'value length must be at least 1 characters')


def test_route_needs_an_action(config):
    cfg = config(replace={'redirect: { path_redirect: "/new" }': 'name: old'})
    [err] = cfg.errors()
    line, reason = cfg.error(VH_PATH + '.routes[2]')
    assert line == cfg.line('- match: { prefix: "/old" }')
    assert reason == ('exactly one of route, redirect, direct_response, filter_action, '
                      "non_forwarding_action must be set (oneof 'action')")


def test_interpreter_directly():
    c = Cluster(name='', type=99)
    c.connect_timeout.FromMilliseconds(-1)
    assert sorted(pgv.check(c, ('c',))) == [
        (('c', 'connect_timeout'), 'value must be greater than 0s'),
        (('c', 'name'), 'value length must be at least 1 characters'),
        (('c', 'type'), 'value must be one of the defined enum values')]

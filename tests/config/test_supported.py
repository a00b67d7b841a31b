"""Anything set but not implemented is an error naming its path; the table is self-consistent."""
import os
import subprocess
import sys

from validate import validate_pb2 as V

from proxyd.config import loader, supported

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HCM_PATH = 'static_resources.listeners[0].filter_chains[0].filters[0].typed_config'


def test_unsupported_field(config):
    cfg = config(replace={'lb_policy: ROUND_ROBIN': 'lb_policy: ROUND_ROBIN\n    respect_dns_ttl: true'})
    assert cfg.error('static_resources.clusters[0].respect_dns_ttl') == (
        cfg.line('respect_dns_ttl'),
        "field 'respect_dns_ttl' of envoy.config.cluster.v3.Cluster is not supported by proxyd")


def test_unsupported_field_inside_any(config):
    cfg = config(replace={'codec_type: AUTO': 'codec_type: AUTO\n          xff_num_trusted_hops: 1'})
    line, reason = cfg.error(HCM_PATH + '.xff_num_trusted_hops')
    assert line == cfg.line('xff_num_trusted_hops')
    assert reason.startswith("field 'xff_num_trusted_hops' of envoy.extensions.filters.network.")


def test_unsupported_enum_value(config):
    cfg = config(replace={'codec_type: AUTO': 'codec_type: HTTP3'})
    assert cfg.error(HCM_PATH + '.codec_type') == (
        cfg.line('codec_type: HTTP3'),
        'value HTTP3 of envoy.extensions.filters.network.http_connection_manager.v3.'
        'HttpConnectionManager.codec_type is not supported by proxyd (supported: AUTO, HTTP1, HTTP2)')


def test_unsupported_extension(config):
    cfg = config(replace={'envoy.extensions.filters.http.router.v3.Router':
                          'envoy.extensions.filters.http.kill_request.v3.KillRequest'})
    errors = cfg.errors()
    line, reason = cfg.error(HCM_PATH + '.http_filters[0].typed_config')
    assert line == cfg.line('kill_request.v3.KillRequest') - 1  # the typed_config key
    assert reason == ('extension type.googleapis.com/envoy.extensions.filters.http.kill_request.v3.KillRequest '
                      'is not supported by proxyd')
    assert len(errors) == 2  # and: the last HTTP filter must be the router


def test_extension_in_the_wrong_slot(config):
    cfg = config(replace={'network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: ingress_http\n':
                          'http.router.v3.Router\n'},)
    cfg = config(cfg.text.split('          codec_type: AUTO')[0] + '  clusters: []\n')
    line, reason = cfg.error('static_resources.listeners[0].filter_chains[0].filters[0].typed_config')
    assert reason == ('extension type.googleapis.com/envoy.extensions.filters.http.router.v3.Router '
                      'is a HTTP filter, not a network filter')


def test_no_pgv_noise_inside_unsupported_fields(config):
    cfg = config(replace={'lb_policy: ROUND_ROBIN': 'health_checks: [{}]'})
    assert [e.split(': ', 2)[1:] for e in cfg.errors()] == [[
        'static_resources.clusters[0].health_checks',
        "field 'health_checks' of envoy.config.cluster.v3.Cluster is not supported by proxyd"]]


def test_table_names_real_fields_and_values():
    for name, fields in supported.FIELDS.items():
        desc = loader.find_descriptor(name)
        assert desc is not None, name
        for field in fields:
            f = desc.fields_by_name.get(field)
            assert f is not None, (name, field)
            sub = f.message_type
            if sub is not None and not sub.full_name.startswith('google.protobuf.'):
                assert sub.full_name in supported.FIELDS, (name, field, sub.full_name)
    for (name, field), values in supported.ENUMS.items():
        f = loader.find_descriptor(name).fields_by_name[field]
        assert values <= set(f.enum_type.values_by_name), (name, field)
        # supported.py leaves undefined enum numbers to PGV's defined_only
        assert f.GetOptions().Extensions[V.rules].enum.defined_only, (name, field)
    for url in supported.EXTENSIONS:
        if url not in supported.STRUCT_CONFIGURED:
            assert url.split('/', 1)[1] in supported.FIELDS


def test_supported_table_script():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'supported_table.py')],
                         capture_output=True, text=True, check=True).stdout
    assert '| `envoy.config.cluster.v3.Cluster` |' in out
    assert '`type` (EDS, STATIC, STRICT_DNS)' in out
    assert 'router.v3.Router` | HTTP filter |' in out


def test_readme_table_is_current():
    """README.md's table is what the script prints: regenerate it with
    `python scripts/supported_table.py --write` when supported.py changes."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'supported_table.py')],
                         capture_output=True, text=True, check=True).stdout
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    assert readme.split('<!-- supported-table -->\n', 1)[1] == out

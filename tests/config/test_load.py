"""Valid configs load into the real Bootstrap message, from YAML or JSON."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from proxyd.config import load_bootstrap, summarize, unpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HCM = 'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager'


def test_front_proxy_loads(config):
    bs = load_bootstrap(config().path)
    assert type(bs).DESCRIPTOR.full_name == 'envoy.config.bootstrap.v3.Bootstrap'
    assert [c.name for c in bs.static_resources.clusters] == ['service1', 'service2']
    assert bs.static_resources.clusters[0].connect_timeout.ToMilliseconds() == 250
    assert summarize(bs) == '1 listener, 2 clusters'


def test_unpack_hcm(config):
    bs = load_bootstrap(config().path)
    hcm = unpack(bs.static_resources.listeners[0].filter_chains[0].filters[0].typed_config)
    assert hcm.DESCRIPTOR.full_name == HCM
    assert hcm.stat_prefix == 'ingress_http'
    assert hcm.route_config.virtual_hosts[0].routes[0].route.cluster == 'service1'


def test_json_input(config):
    cfg = config(json.dumps(yaml.safe_load(config().text), indent=2), name='bootstrap.json')
    assert summarize(load_bootstrap(cfg.path)) == '1 listener, 2 clusters'


def test_json_error_has_line(config):
    data = yaml.safe_load(config().text)
    data['static_resources']['clusters'][1]['connect_timeout'] = '0s'
    cfg = config(json.dumps(data, indent=2), name='bootstrap.json')
    line, reason = cfg.error('static_resources.clusters[1].connect_timeout')
    assert line == cfg.line('"connect_timeout": "0s"')
    assert reason == 'value must be greater than 0s'


def test_camel_case_keys_accepted(config):
    cfg = config(replace={'stat_prefix': 'statPrefix', 'connect_timeout: 1s': 'connectTimeout: 1s'})
    bs = load_bootstrap(cfg.path)
    assert bs.static_resources.clusters[1].connect_timeout.seconds == 1


def test_yaml_anchors_and_merge_keys(config):
    cfg = config('''\
        static_resources:
          clusters:
          - &base
            name: a
            connect_timeout: 1s
          - <<: *base
            name: b
        ''')
    assert [c.name for c in load_bootstrap(cfg.path).static_resources.clusters] == ['a', 'b']


def test_summarize_counts_dynamic_sources(config):
    from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
    bs = Bootstrap()
    bs.static_resources.clusters.add(name='xds')
    bs.dynamic_resources.lds_config.ads.SetInParent()
    bs.dynamic_resources.cds_config.ads.SetInParent()
    assert summarize(bs) == '0 listeners, 1 cluster + dynamic LDS, CDS'


def test_example_config_loads():
    path = os.path.join(ROOT, 'etc', 'proxyd.yaml')
    if not os.path.exists(path):
        pytest.skip('etc/proxyd.yaml not written yet')
    load_bootstrap(path)


def test_types_are_imported_lazily(config):
    """Only the proto packages named by @type are imported (all 600 would cost ~0.8 s)."""
    code = ('import sys; from proxyd.config import load_bootstrap; load_bootstrap(sys.argv[1]); '
            'print(sum(m.startswith("envoy.") and m.endswith("_pb2") for m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code, str(config().path)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert int(out) < 100  # of 603

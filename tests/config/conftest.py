"""Helpers: write a config to tmp_path, load it, and find the line of a marker text."""
import textwrap

import pytest

from proxyd.config import ConfigError, load_bootstrap

FRONT_PROXY = '''\
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
node:
  id: front-1
  cluster: front
static_resources:
  listeners:
  - name: http
    address:
      socket_address: { address: 0.0.0.0, port_value: 8080 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: AUTO
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["example.com", "*"]
              routes:
              - match: { prefix: "/service/1" }
                route: { cluster: service1, timeout: 5s }
              - match: { safe_regex: { regex: "^/s/[0-9]+$" } }
                route:
                  weighted_clusters:
                    clusters:
                    - { name: service1, weight: 80 }
                    - { name: service2, weight: 20 }
              - match: { prefix: "/old" }
                redirect: { path_redirect: "/new" }
              - match: { prefix: "/" }
                direct_response: { status: 404, body: { inline_string: "nope" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: service1
    type: STRICT_DNS
    connect_timeout: 0.25s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service1
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: service1.local, port_value: 8000 }
  - name: service2
    connect_timeout: 1s
    load_assignment:
      cluster_name: service2
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 10.0.0.2, port_value: 8000 }
'''


class Config:
    """A config file under test: its path, text, and helpers to load it."""

    def __init__(self, path, text):
        self.path, self.text = path, text

    def line(self, marker, nth=1):
        """1-based line number of the nth line containing ``marker``."""
        hits = [i for i, line in enumerate(self.text.splitlines(), 1) if marker in line]
        return hits[nth - 1]

    def errors(self):
        with pytest.raises(ConfigError) as info:
            load_bootstrap(self.path)
        assert str(info.value) == '\n'.join(info.value.errors)
        return info.value.errors

    def error(self, path):
        """The single error for json path ``path``, as (line, reason)."""
        found = [e for e in self.errors() if e.split(': ', 2)[1] == path]
        assert len(found) == 1, (path, self.errors())
        where, _, reason = found[0].split(': ', 2)
        file, line, _col = where.rsplit(':', 2)
        assert file == str(self.path)
        return int(line), reason


@pytest.fixture
def config(tmp_path):
    """config(text) or config(replace={'old': 'new'}) on the front-proxy config."""
    def make(text=None, replace=None, name='bootstrap.yaml'):
        text = textwrap.dedent(text) if text is not None else FRONT_PROXY
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text)
        return Config(path, text)
    return make

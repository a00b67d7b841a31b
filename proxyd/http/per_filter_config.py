"""`typed_per_filter_config`: per-route filter settings, compiled once per config.

Each level (route configuration, virtual host, route) maps an HTTP filter's name to its
filter's own per-route message, or to `envoy.config.route.v3.FilterConfig` (which can also
say `disabled: true`). The route table merges the levels so that the most specific one
wins, per filter, for the config and for `disabled` separately (Envoy's
mostSpecificPerFilterConfig and filterDisabled); `per_filter_levels` keeps every level for
filters that merge them field by field (CORS).
"""
from __future__ import annotations

from proxyd import registry
from proxyd.proto import extension_config

FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"


class PerFilterCompiler:
    """Turns one level's map into ({name: compiled config}, {name: disabled})."""

    def __init__(self, factories: dict):
        self.factories = factories   # HTTP filter name -> its FilterFactoryCb (or None)

    def __call__(self, typed_per_filter_config, path: str):
        configs: dict = {}
        disabled: dict = {}
        for name, any_msg in typed_per_filter_config.items():
            where = f"{path}.typed_per_filter_config[{name}]"
            type_name, msg = extension_config(any_msg)
            optional = False
            if type_name == FILTER_CONFIG:
                disabled[name] = msg.disabled
                optional = msg.is_optional
                if not msg.HasField("config"):
                    continue
                type_name, msg = extension_config(msg.config)
            compile_fn = None
            if registry.known(type_name):
                compile_fn = getattr(registry.factory(type_name), "create_route_config", None)
            if compile_fn is None:
                if optional:
                    continue
                raise ValueError(f"{where}: The filter {name} doesn't support virtual host or "
                                 f"route specific configurations")
            configs[name] = compile_fn(msg, self.factories.get(name))
        return configs, disabled


def merge(levels) -> tuple[dict, dict, dict]:
    """Levels least specific first -> (most specific config per filter, every level's
    config per filter, most specific `disabled` per filter)."""
    config: dict = {}
    chain: dict = {}
    disabled: dict = {}
    for configs, off in levels:
        config.update(configs)
        disabled.update(off)
        for name, cfg in configs.items():
            chain[name] = chain.get(name, ()) + (cfg,)
    return config, chain, disabled

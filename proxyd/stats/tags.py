"""Envoy's default tag extraction: dotted stat name -> (tag-extracted name, tags).

Every extractor is matched against the original name; the first capture group is cut out of
the name and the second (or the first, if there is no second) is the tag value. Extractors
without a fixed first token run first, then those whose first token matches, each group in
definition order, which reproduces Envoy's label order, e.g.
``cluster.web.upstream_rq_200`` -> ``cluster.upstream_rq``,
``[("envoy.response_code", "200"), ("envoy.cluster_name", "web")]``.
"""

import re

# (tag name, regex, first-token prefix or None, substring that must occur or None)
_DEFAULT = (
    ("envoy.response_code", r"_rq(_(\d{3}))$", None, "_rq_"),
    ("envoy.response_code_class", r"_rq_(\d)xx$", None, "_rq_"),
    ("envoy.http_user_agent", r"^http(?=\.).*?\.user_agent\.((.*?)\.)\w+?$", "http", ".user_agent."),
    ("envoy.virtual_cluster", r"^vhost(?=\.).*?\.vcluster\.((.*?)\.)\w+?$", "vhost", ".vcluster."),
    ("envoy.fault_downstream_cluster", r"^http(?=\.).*?\.fault\.((.*?)\.)\w+?$", "http", ".fault."),
    ("envoy.ssl_cipher", r"^listener(?=\.).*?\.ssl\.cipher(\.(.*?))$", "listener", ".ssl.cipher."),
    ("envoy.ssl_cipher_suite", r"^cluster(?=\.).*?\.ssl\.ciphers(\.(.*?))$", "cluster", ".ssl.ciphers."),
    ("envoy.grpc_bridge_service", r"^cluster(?=\.).*?\.grpc\.((.*?)\.)", "cluster", ".grpc."),
    ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)\w+?$", "tcp", None),
    ("envoy.udp_prefix", r"^udp\.((.*?)\.)\w+?$", "udp", None),
    ("envoy.ratelimit_prefix", r"^ratelimit\.((.*?)\.)\w+?$", "ratelimit", None),
    ("envoy.cluster_name", r"^cluster\.((.*?)\.)", "cluster", None),
    ("envoy.http_conn_manager_prefix", r"^(?:|listener(?=\.).*?\.)http\.((.*?)\.)", None, "http."),
    ("envoy.listener_address", r"^listener\.(((?:[_.0-9]*|[_\[\]a-fA-F0-9]*))\.)", "listener", None),
    ("envoy.virtual_host", r"^vhost\.((.*?)\.)", "vhost", None),
    ("envoy.rds_route_config", r"^http(?=\.).*?\.rds\.((.*?)\.)\w+?$", "http", ".rds."),
    ("envoy.worker_id", r"^listener_manager\.worker_((\d+)\.)", "listener_manager", None),
    ("envoy.worker_id", r"^server\.worker_((\d+)\.)", "server", None),
)

_UNPREFIXED = []
_BY_PREFIX: dict[str, list] = {}
for _tag, _regex, _prefix, _substr in _DEFAULT:
    _extractor = (_tag, re.compile(_regex, re.ASCII), _substr)
    if _prefix is None:
        _UNPREFIXED.append(_extractor)
    else:
        _BY_PREFIX.setdefault(_prefix, []).append(_extractor)


def extract_tags(name: str) -> tuple[str, list[tuple[str, str]]]:
    """Envoy's tag-extracted name and its (tag, value) pairs."""
    tags = []
    cuts = []
    first_token = name.split(".", 1)[0]
    for tag, regex, substr in (*_UNPREFIXED, *_BY_PREFIX.get(first_token, ())):
        if substr is not None and substr not in name:
            continue
        match = regex.search(name)
        if match is None:
            continue
        value_group = 2 if regex.groups >= 2 else 1
        tags.append((tag, match.group(value_group)))
        cuts.append(match.span(1))
    if not cuts:
        return name, tags
    out, pos = [], 0
    for start, end in sorted(cuts):
        if start > pos:
            out.append(name[pos:start])
        pos = max(pos, end)
    out.append(name[pos:])
    return "".join(out), tags

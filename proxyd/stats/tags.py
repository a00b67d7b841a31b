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

def _label(tag: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", tag)


_UNPREFIXED = []
_BY_PREFIX: dict[str, list] = {}
for _tag, _regex, _prefix, _substr in _DEFAULT:
    _compiled = re.compile(_regex, re.ASCII)
    # (tag, Prometheus label name, regex, substring, group holding the value)
    _extractor = (_tag, _label(_tag), _compiled, _substr, 2 if _compiled.groups >= 2 else 1)
    if _prefix is None:
        _UNPREFIXED.append(_extractor)
    else:
        _BY_PREFIX.setdefault(_prefix, []).append(_extractor)
# Per first token, the extractors to try, in Envoy's order.
_PLANS = {prefix: (*_UNPREFIXED, *extractors) for prefix, extractors in _BY_PREFIX.items()}
_UNPREFIXED = tuple(_UNPREFIXED)


def extract(name: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Tag-extracted name and (tag, label name, value) triples."""
    tags = []
    cuts = []
    dot = name.find(".")
    for tag, label, regex, substr, group in _PLANS.get(name[:dot] if dot > 0 else name, _UNPREFIXED):
        if substr is not None and substr not in name:
            continue
        match = regex.search(name)
        if match is not None:
            tags.append((tag, label, match.group(group)))
            cuts.append(match.span(1))
    if not cuts:
        return name, tags
    if len(cuts) > 1:
        cuts.sort()
    out, pos = [], 0
    for start, end in cuts:
        if start > pos:
            out.append(name[pos:start])
        if end > pos:
            pos = end
    out.append(name[pos:])
    return "".join(out), tags


def extract_tags(name: str) -> tuple[str, list[tuple[str, str]]]:
    """Envoy's tag-extracted name and its (tag, value) pairs."""
    base, tags = extract(name)
    return base, [(tag, value) for tag, _, value in tags]

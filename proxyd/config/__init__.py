"""Envoy v3 bootstrap loading and validation.

``load_bootstrap`` turns a YAML/JSON file into ``envoy.config.bootstrap.v3.Bootstrap`` and
rejects, with 'FILE:LINE:COL: path: reason' for each, everything protobuf cannot parse, every
PGV rule violation, everything proxyd does not implement (``supported.py``) and the semantic
errors Envoy catches at load time. ``validate_resource`` runs the same checks on one xDS
resource.
"""
import os

import yaml

from . import loader, locate, pgv, semantic, supported
from .errors import ConfigError, format_path
from .loader import unpack

__all__ = ['load_bootstrap', 'load_discovery_response', 'ConfigError', 'unpack', 'validate_resource', 'summarize']


def _overlaps(path, others):
    """True if ``path`` is inside, or an ancestor of, any of ``others`` (normalized)."""
    key = tuple(locate.norm(s) for s in path)
    for other in others:
        n = min(len(key), len(other))
        if key[:n] == other[:n]:
            return True
    return False


def _failed_message(path):
    """The message holding a failed field, or the field itself near the root."""
    parent = path[:-2] if path[-1:] == ('@type',) else path[:-1]
    return parent if len(parent) >= 2 else path


def _check(msg, path=(), clusters=None):
    """supported + PGV + semantic errors; nothing is reported inside an unsupported field."""
    unsupported = supported.check(msg, path)
    skip = [tuple(locate.norm(s) for s in p) for p, _ in unsupported]
    rest = pgv.check(msg, path) + semantic.check(msg, path, clusters)
    return unsupported + [(p, r) for p, r in rest
                          if not any(tuple(locate.norm(s) for s in p[:len(u)]) == u for u in skip)]


def load_bootstrap(path):
    """Parses and validates a bootstrap file; raises ConfigError listing every error found."""
    from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
    return _load(path, Bootstrap, _check)


def load_discovery_response(path):
    """Parses a watched xDS file (a DiscoveryResponse, ``path_config_source``) and validates
    each resource as an xDS resource is; raises ConfigError with every error located
    ('FILE:LINE:COL: resources[0].filter_chains[0]...: reason')."""
    from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
    return _load(path, DiscoveryResponse, _check_resources)


def _check_resources(resp):
    out = []
    for i, any_msg in enumerate(resp.resources):
        try:
            msg = unpack(any_msg)
        except ValueError:
            continue  # an unknown @type was reported by the parse
        out += _check(msg, ('resources', i))
    return out


def _load(path, cls, check):
    name = os.fspath(path)
    try:
        with open(name, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f'{name}: cannot read config: {e}']) from None
    try:
        data, duplicate_keys = loader.parse_text(text)
    except yaml.YAMLError as e:
        raise ConfigError([loader.yaml_error(name, text, e)]) from None
    if not isinstance(data, dict):
        got = 'an empty file' if data is None else f'a {type(data).__name__}'
        raise ConfigError([f'{name}:1:1: <root>: expected an object '
                           f'({cls.DESCRIPTOR.full_name}), got {got}'])

    loader.resolve_types(data)
    errors, broken = [], []
    message = cls()
    try:
        loader.parse_dict(data, message)
    except Exception as e:  # noqa: BLE001 - json_format raises more than ParseError
        errors = locate.locate(data, cls.DESCRIPTOR, e)
        # Parse what is left so the other checks can report in the same run, except inside
        # the messages that failed (below the top two levels): a dropped field there would
        # cause misleading errors.
        broken = [tuple(locate.norm(s) for s in _failed_message(p)) for p, _ in errors]
        pruned = locate.prune(data, [p for p, _ in errors])
        message = None
        if pruned is not None:
            try:
                message = loader.parse_dict(pruned, cls())
            except Exception:  # noqa: BLE001
                message = None
    if message is not None:
        errors += [(p, r) for p, r in check(message) if not _overlaps(p, broken)]
    if not errors and not duplicate_keys:
        return message

    index = locate.LineIndex(text)
    errors += [(p, f"duplicate key '{p[-1]}' (only the last one would be used)")
               for p in index.duplicates]
    located = sorted((index.where(p), format_path(p), r) for p, r in errors)
    lines, seen = [], set()
    for (line, col), p, reason in located:
        text_line = f'{name}:{line}:{col}: {p}: {reason}'
        if text_line not in seen:
            seen.add(text_line)
            lines.append(text_line)
    raise ConfigError(lines)


def validate_resource(msg, path='', *, clusters=None):
    """The same PGV, supported-field and semantic checks on one resource (Listener, Cluster,
    RouteConfiguration, ClusterLoadAssignment, ...); returns ['path: reason', ...].

    ``clusters``: cluster names routes may reference; None skips that check (RDS default).
    """
    return [f'{format_path(p, path)}: {r}' for p, r in _check(msg, (), clusters)]


def summarize(bs):
    """One line for logs and `proxyd check`: static counts plus any dynamic sources."""
    sr = bs.static_resources
    n_l, n_c = len(sr.listeners), len(sr.clusters)
    text = f"{n_l} listener{'s' * (n_l != 1)}, {n_c} cluster{'s' * (n_c != 1)}"
    if bs.HasField('dynamic_resources'):
        dyn = bs.dynamic_resources
        sources = [kind for kind, field in (('LDS', 'lds_config'), ('CDS', 'cds_config'),
                                            ('ADS', 'ads_config')) if dyn.HasField(field)]
        if sources:
            text += ' + dynamic ' + ', '.join(sources)
    return text

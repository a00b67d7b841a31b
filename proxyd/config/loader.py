"""YAML/JSON text -> dict -> protobuf, importing Envoy's ``_pb2`` modules only as needed.

xds-protos ships ~600 modules; importing all of them costs 0.7-0.9 s, so each ``@type``
URL pulls in only the modules of its own proto package (see research/ecosystem.md §4).
"""
import importlib
import pkgutil

import yaml
from google.protobuf import json_format

# the leaf helpers (no import of proxyd): re-exported for the config's own users
from proxyd.proto import (TYPED_STRUCTS, _import_package, extension_config,  # noqa: F401
                          find_descriptor, message_class, unpack)


class _Loader(yaml.CSafeLoader):
    """CSafeLoader that keeps YAML timestamps as text and notices duplicate keys.

    Protobuf wants timestamps as RFC 3339 strings, and a repeated key would otherwise
    silently win over the first one; the line index reports where it is.
    """

    duplicate_keys = False

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value
                    if isinstance(k, yaml.ScalarNode) and k.tag != 'tag:yaml.org,2002:merge']
            if len(keys) != len(set(keys)):
                self.duplicate_keys = True
        return super().construct_mapping(node, deep)


_Loader.add_constructor('tag:yaml.org,2002:timestamp', yaml.SafeLoader.construct_yaml_str)


# A file may expand through aliases to this many YAML nodes, or to 10 times its own node
# count if that is more (an anchor reused as a template); a "billion laughs" file expands
# exponentially and is refused before anything walks it.
MAX_EXPANDED_NODES = 1_000_000


class AliasBomb(yaml.YAMLError):
    def __init__(self, mark, expanded):
        self.problem_mark, self.expanded = mark, expanded
        self.problem = (f'aliases expand this to more than {expanded:,} YAML nodes (an alias '
                        f'bomb?); proxyd refuses alias expansion beyond {MAX_EXPANDED_NODES:,} '
                        f'nodes or 10 times the nodes written')


def _refuse_alias_bombs(root):
    """Expanded size of every node of the composed graph (an alias is a node reached
    again); raises AliasBomb at the innermost construct whose expansion is too big."""
    sizes, distinct, stack = {}, 0, [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            continue
        if key in sizes:
            continue
        sizes[key] = 0  # in progress: a recursive alias adds nothing more
        distinct += 1
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    limit = max(MAX_EXPANDED_NODES, 10 * distinct)
    if sizes[id(root)] <= limit:
        return
    node = root
    while True:
        bigger = next((c for c in _children(node) if sizes[id(c)] > limit), None)
        if bigger is None:
            raise AliasBomb(node.start_mark, limit)
        node = bigger


def _children(node):
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return ()


def parse_text(text):
    """Returns (data, has_duplicate_keys); raises yaml.YAMLError on a syntax error or an
    alias bomb. Built from libyaml's events (yaml_events.py) unless the file needs
    PyYAML's full loader (explicit tags, recursive aliases)."""
    from . import yaml_events
    try:
        doc = yaml_events.Document(text)
    except yaml_events.Unusual:
        return _parse_with_pyyaml(text)
    limit = max(MAX_EXPANDED_NODES, 10 * doc.distinct)
    if doc.expanded > limit:
        raise AliasBomb(next((mark for total, mark in doc.alias_marks if total > limit),
                             doc.alias_marks[-1][1]), limit)
    return doc.data, doc.duplicate_keys


def _parse_with_pyyaml(text):
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is not None and '&' in text:
            _refuse_alias_bombs(root)
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, loader.duplicate_keys


# Constructs that open and must be closed: an error inside one is reported where it starts.
_OPENED = {'while parsing a flow mapping': "this flow mapping ('{') is not closed",
           'while parsing a flow sequence': "this flow sequence ('[') is not closed",
           'while scanning a quoted scalar': 'this quoted string is not closed',
           'while parsing a flow node': 'this flow collection is not closed'}


def yaml_error(name, text, e):
    """'FILE:LINE:COL: invalid YAML: reason' for a YAML error, at the line where the broken
    construct starts (an unclosed '{' is noticed lines later), calling a tab a tab."""
    problem = getattr(e, 'problem', None) or str(e)
    mark, context = getattr(e, 'problem_mark', None), getattr(e, 'context', None)
    if mark is None:
        return f'{name}: invalid YAML: {problem}'
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ''
    if mark.column < len(line) and line[mark.column] == '\t':
        if not line[:mark.column].strip(' \t'):
            problem = 'a tab character is used for indentation; YAML indents with spaces only'
        else:
            problem = 'a tab character where YAML does not allow one; use spaces'
        return f'{name}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}'
    start = getattr(e, 'context_mark', None)
    if context in _OPENED and start is not None and (start.line, start.column) != (mark.line, mark.column):
        return (f'{name}:{start.line + 1}:{start.column + 1}: invalid YAML: {_OPENED[context]}: '
                f'{problem} (line {mark.line + 1}, column {mark.column + 1})')
    return f'{name}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}'


def package_messages(type_name):
    """Full names of the top-level messages in the package of ``type_name`` (for suggestions)."""
    package = type_name.rsplit('/', 1)[-1].rsplit('.', 1)[0]
    if not _import_package(package):
        return []
    pkg = importlib.import_module(package)
    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.endswith('_pb2'):
            mod = importlib.import_module(f'{package}.{info.name}')
            names += [d.full_name for d in mod.DESCRIPTOR.message_types_by_name.values()]
    return names


def resolve_types(data):
    """Makes every ``@type`` in the dict tree known to the descriptor pool before ParseDict."""
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            url = node.get('@type')
            if isinstance(url, str):
                find_descriptor(url)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_dict(data, message):
    """``data`` (rewritten in place to what Envoy accepts, see legacy.py) into ``message``."""
    from . import legacy
    legacy.accept(data, message.DESCRIPTOR)
    json_format.ParseDict(data, message)
    return message

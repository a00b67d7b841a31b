"""Error-path helpers: YAML line index, locating ParseDict failures, "did you mean".

protobuf's json_format stops at the first problem and reports a dotted path without a line
(sometimes no path at all). Only when parsing failed do we compose the YAML again to index
node positions, then walk the dict alongside the descriptors, re-running ParseDict on
sub-trees to find every innermost failing node.
"""
import copy
import difflib
import re

import yaml
from google.protobuf import descriptor, json_format

from . import contrib, loader
from .errors import MapKey

_MERGE = 'tag:yaml.org,2002:merge'


def norm(seg):
    """Path segment key shared by YAML keys and proto field names (snake_case == camelCase)."""
    return seg if isinstance(seg, int) else str(seg).replace('_', '').lower()


class LineIndex:
    """Maps a path tuple to the 1-based (line, col) of its key (mapping entry) or node."""

    def __init__(self, text):
        self.pos = {}
        self.duplicates = []  # paths of keys repeated within one mapping
        root = yaml.compose(text, Loader=yaml.CSafeLoader)
        if root is not None:
            self._walk(root, (), root.start_mark, override=True)

    def _set(self, key, mark, override):
        if override or key not in self.pos:
            self.pos[key] = (mark.line + 1, mark.column + 1)

    def _walk(self, node, path, mark, override):
        key = tuple(norm(s) for s in path)
        self._set(key, mark, override)
        if isinstance(node, yaml.MappingNode):
            merges, seen = [], set()
            for k, v in node.value:
                if k.tag == _MERGE:
                    merges += v.value if isinstance(v, yaml.SequenceNode) else [v]
                elif isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        self.duplicates.append(path + (k.value,))
                    seen.add(k.value)
                    self._walk(v, path + (k.value,), k.start_mark, override)
            for m in merges:  # merged keys never override explicit ones
                if isinstance(m, yaml.MappingNode):
                    for k, v in m.value:
                        if isinstance(k, yaml.ScalarNode):
                            self._walk(v, path + (k.value,), k.start_mark, False)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,), item.start_mark, override)

    def where(self, path):
        """(line, col) of the deepest indexed prefix of ``path``; an index 0 that is not in
        the file is a single object written where a list is expected (legacy.py)."""
        cur, found = (), self.pos.get((), (1, 1))
        for seg in (norm(s) for s in path):
            if cur + (seg,) in self.pos:
                cur += (seg,)
                found = self.pos[cur]
            elif seg != 0:
                break
        return found


def suggest(word, candidates, field_names=False):
    """"; did you mean 'x'?" for a near miss, else ''. Field names are compared in snake_case."""
    if field_names:
        word = re.sub(r'(?<=[a-z0-9])([A-Z])', r'_\1', word).lower()
    match = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ''


def _kind(value):
    return {dict: 'an object', list: 'a list', str: 'a string', bool: 'a boolean',
            int: 'a number', float: 'a number', type(None): 'null'}.get(type(value), type(value).__name__)


def _try(data, cls):
    try:
        json_format.ParseDict(data, cls())
    except Exception as e:  # json_format raises ParseError, but also TypeError/RecursionError
        return e
    return None


_CHAIN = re.compile(r'^(Failed to parse \w+ field: )+')
_INT = re.compile(r"invalid literal for int\(\) with base 10: (.*)")
_STR = re.compile(r"expected string or bytes-like object, got '(\w+)'")


def clean(err):
    """protobuf's message without the 'Failed to parse X field:' chain, location, field list."""
    text = _CHAIN.sub('', str(err).split('\nAvailable Fields', 1)[0])
    text = re.sub(r' at "?[A-Z]\w*(\.|\[|"|$).*$', '', text, flags=re.S).rstrip('. ')
    if m := _INT.search(text):
        return f'expected an integer, got {m.group(1)}'
    if m := _STR.search(text):
        return f'expected a string, got {m.group(1)}'
    return text


_FD = descriptor.FieldDescriptor
_EXPECTED = {_FD.CPPTYPE_STRING: 'a string', _FD.CPPTYPE_BOOL: 'a boolean',
             _FD.CPPTYPE_DOUBLE: 'a number', _FD.CPPTYPE_FLOAT: 'a number',
             _FD.CPPTYPE_ENUM: 'an enum value name'}


def _scalar_reason(field, value, err):
    if isinstance(value, (dict, list)):
        return f"expected {_EXPECTED.get(field.cpp_type, 'an integer')}, got {_kind(value)}"
    if field.enum_type is not None and isinstance(value, str):
        names = [v.name for v in field.enum_type.values]
        match = difflib.get_close_matches(value.upper(), names, n=1, cutoff=0.6)
        return (f"invalid value '{value}' for enum {field.enum_type.full_name} "
                f"(one of {', '.join(names)})" + (f"; did you mean '{match[0]}'?" if match else ''))
    return clean(err)


def _is_map(field):
    return field.message_type is not None and field.message_type.GetOptions().map_entry


_TEXT_WKT = {'google.protobuf.Duration': "a duration string such as '0.25s'",
             'google.protobuf.Timestamp': "an RFC 3339 timestamp string",
             'google.protobuf.FieldMask': "a field mask string"}


def _fields_by_key(desc):
    fields = {f.name: f for f in desc.fields}
    fields.update({f.json_name: f for f in desc.fields})
    return fields


def locate(data, descriptor, err):
    """All innermost failures of ``ParseDict(data, descriptor)`` as [(path, reason)]."""
    out = []
    _message(data, descriptor, (), out, err)
    return out


def _message(value, desc, path, out, err):
    before = len(out)
    if desc.full_name == 'google.protobuf.Any':
        _any(value, path, out, err)
    elif desc.full_name in _TEXT_WKT and not isinstance(value, str):
        out.append((path, f'expected {_TEXT_WKT[desc.full_name]}, got {_kind(value)}'))
    elif desc.full_name.startswith('google.protobuf.'):
        pass  # another well-known type: protobuf's own message names the problem
    elif not isinstance(value, dict):
        out.append((path, f'expected an object ({desc.full_name}), got {_kind(value)}'))
    else:
        cls = loader.message_class(desc)
        fields = _fields_by_key(desc)
        oneofs = {}
        for key, sub in value.items():
            field = fields.get(key)
            if field is None:
                out.append((path + (str(key),), f"unknown field '{key}' in {desc.full_name}"
                            + suggest(str(key), [f.name for f in desc.fields], True)))
                continue
            fpath = path + (field.name,)
            oneof = field.containing_oneof
            if oneof is not None and len(oneof.fields) > 1 and sub is not None:
                if oneof.name in oneofs:
                    out.append((fpath, f"only one of the oneof '{oneof.name}' may be set, "
                                       f"'{oneofs[oneof.name]}' is set too"))
                    continue
                oneofs[oneof.name] = field.name
            sub_err = _try({key: sub}, cls)
            if sub_err is not None:
                _field(sub, field, key, cls, fpath, out, sub_err)
    if len(out) == before:
        out.append((path, clean(err)))


def _field(value, field, key, cls, path, out, err):
    before = len(out)
    if _is_map(field):
        if not isinstance(value, dict):
            out.append((path, f'expected an object (map), got {_kind(value)}'))
        else:
            vfield = field.message_type.fields_by_name['value']
            for k, v in value.items():
                e = _try({key: {k: v}}, cls)
                if e is None:
                    continue
                if vfield.message_type is not None:
                    _message(v, vfield.message_type, path + (MapKey(k),), out, e)
                else:
                    out.append((path + (MapKey(k),), _scalar_reason(vfield, v, e)))
    elif field.is_repeated:
        if not isinstance(value, list):
            out.append((path, f'expected a list, got {_kind(value)}'))
        else:
            for i, item in enumerate(value):
                e = _try({key: [item]}, cls)
                if e is None:
                    continue
                if field.message_type is not None:
                    _message(item, field.message_type, path + (i,), out, e)
                else:
                    out.append((path + (i,), _scalar_reason(field, item, e)))
    elif field.message_type is not None:
        _message(value, field.message_type, path, out, err)
    else:
        out.append((path, _scalar_reason(field, value, err)))
    if len(out) == before:
        out.append((path, clean(err)))


def _any(value, path, out, err):
    if not isinstance(value, dict):
        out.append((path, f'expected an object with an @type, got {_kind(value)}'))
        return
    url = value.get('@type')
    if not isinstance(url, str):
        out.append((path, "'@type' is missing" if url is None else "'@type' must be a string"))
        return
    desc = loader.find_descriptor(url)
    if desc is None and contrib.extension(url):
        out.append((path + ('@type',), f"'{url}' is a known Envoy extension "
                                       f"({contrib.extension(url)}, in Envoy's contrib build only) "
                                       f"that proxyd does not implement"))
    elif desc is None:
        from .supported import EXTENSIONS
        names = loader.package_messages(url) + [u.rsplit('/', 1)[-1] for u in EXTENSIONS]
        match = difflib.get_close_matches(url.rsplit('/', 1)[-1], names, n=1, cutoff=0.8)
        hint = f"; did you mean 'type.googleapis.com/{match[0]}'?" if match else ''
        out.append((path + ('@type',), f"unknown @type '{url}'{hint}"))
    elif not desc.full_name.startswith('google.protobuf.'):
        _message({k: v for k, v in value.items() if k != '@type'}, desc, path, out, err)


def prune(data, paths):
    """Deep copy of ``data`` without the nodes at ``paths``; None if an index would shift.

    Lets the loader parse the rest of a broken file so validation can report its errors too.
    """
    data = copy.deepcopy(data)
    for path in paths:
        if path and path[-1] == '@type':
            path = path[:-1]
        if not path or isinstance(path[-1], int):
            return None
        node = data
        for seg in path[:-1]:
            node = _child(node, seg)
            if node is None:
                return None
        if not isinstance(node, dict):
            return None
        key = next((k for k in node if norm(k) == norm(path[-1])), None)
        if key is None:
            return None
        del node[key]
    return data


def _child(node, seg):
    if isinstance(seg, int):
        return node[seg] if isinstance(node, list) and seg < len(node) else None
    if isinstance(node, dict):
        return next((v for k, v in node.items() if norm(k) == norm(seg)), None)
    return None

"""YAML text -> Python objects built straight from libyaml's parse events.

PyYAML's CSafeLoader composes a node graph (resolving every scalar's tag through
Python-level resolver calls) and then walks it again to construct: 24.6 s of CPU for a
14 MB config with 52,004 clusters. Building the objects from the event stream, with the
same YAML 1.1 implicit resolution (PyYAML's own resolver table and constructors), takes
a third of that. Anything unusual (explicit tags, recursive or undefined aliases, several
documents) raises ``Unusual`` and the caller uses PyYAML's loader, which gives the exact
PyYAML result or error.

Aliases add their anchor's expanded size to the document's; the caller bounds it (the
billion-laughs defence), and ``alias_marks`` tells where each alias took the total.
"""
import yaml
from yaml import events as E

_STR = 'tag:yaml.org,2002:str'
_RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers
_C = yaml.constructor.SafeConstructor()
_BUILD = {
    'tag:yaml.org,2002:null': lambda value: None,
    'tag:yaml.org,2002:bool': lambda value: _C.bool_values[value.lower()],
    'tag:yaml.org,2002:int': lambda value: _C.construct_yaml_int(yaml.ScalarNode('', value)),
    'tag:yaml.org,2002:float': lambda value: _C.construct_yaml_float(yaml.ScalarNode('', value)),
    'tag:yaml.org,2002:timestamp': lambda value: value,  # protobuf wants RFC 3339 text
}


class Unusual(Exception):
    """Something only PyYAML's full loader handles."""


class _Merge:
    """A plain ``<<`` key."""


MERGE = _Merge()


def _plain(value):
    for tag, regexp in _RESOLVERS.get(value[:1], ()):
        if regexp.match(value):
            if tag == 'tag:yaml.org,2002:merge':
                return MERGE
            build = _BUILD.get(tag)
            if build is None:
                raise Unusual(tag)
            return build(value)
    return value


class Document:
    """One parsed document: ``data``, ``duplicate_keys``, ``expanded`` (nodes counting
    every alias as a copy), ``distinct`` (nodes written) and ``alias_marks``
    [(expanded total after the alias, mark)]."""

    def __init__(self, text):
        self.duplicate_keys = False
        self.distinct = 0
        self.alias_marks = []
        self.data = self._build(text)

    def _build(self, text):
        anchors = {}
        # Frames: [container, size, anchor, raw keys seen, pending key, merges]
        stack = []
        root = None
        expanded = 0
        documents = 0
        for ev in yaml.parse(text, Loader=yaml.CSafeLoader):
            cls = type(ev)
            if cls is E.ScalarEvent:
                tag = ev.tag
                if tag is None or tag == '!':
                    value = _plain(ev.value) if (ev.implicit[0] and tag is None) else ev.value
                elif tag == _STR:
                    value = ev.value
                else:
                    raise Unusual(tag)
                size = 1
                self.distinct += 1
                raw = ev.value
            elif cls is E.MappingStartEvent or cls is E.SequenceStartEvent:
                if ev.tag is not None and not ev.implicit:
                    raise Unusual(ev.tag)
                self.distinct += 1
                stack.append([{} if cls is E.MappingStartEvent else [], 1, ev.anchor,
                              set(), None, []])
                continue
            elif cls is E.MappingEndEvent or cls is E.SequenceEndEvent:
                frame = stack.pop()
                value, size = frame[0], frame[1]
                if frame[5]:
                    # PyYAML's precedence: explicit keys, then the first << key, and in a
                    # list of mappings the first one.
                    merged = {}
                    for sources in reversed(frame[5]):
                        for source in reversed(sources):
                            merged.update(source)
                    merged.update(value)
                    value = merged
                if frame[2] is not None:
                    if frame[2] in anchors:
                        raise Unusual('duplicate anchor')
                    anchors[frame[2]] = (value, size)
                raw = None
            elif cls is E.AliasEvent:
                if ev.anchor not in anchors:
                    raise Unusual('undefined or recursive alias')
                value, size = anchors[ev.anchor]
                expanded += size
                self.alias_marks.append((expanded + self.distinct, ev.start_mark))
                raw = None
            elif cls is E.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise Unusual('several documents')
                continue
            else:
                continue
            if cls is E.ScalarEvent and ev.anchor is not None:
                if ev.anchor in anchors:
                    raise Unusual('duplicate anchor')
                anchors[ev.anchor] = (value, 1)
            if not stack:
                root = value
                continue
            frame = stack[-1]
            frame[1] += size
            container = frame[0]
            if type(container) is list:
                if value is MERGE:
                    raise Unusual('<< as a value')
                container.append(value)
            elif frame[4] is None:
                if value is MERGE:
                    frame[4] = MERGE
                elif type(value) is dict or type(value) is list:
                    raise Unusual('a collection as a key')
                else:
                    if raw is not None:
                        if raw in frame[3]:
                            self.duplicate_keys = True
                        frame[3].add(raw)
                    frame[4] = (value,)
            elif frame[4] is MERGE:
                frame[4] = None
                sources = value if type(value) is list else [value]
                if not all(type(s) is dict for s in sources):
                    raise Unusual('merge of a non-mapping')
                frame[5].append(sources)
            else:
                if value is MERGE:
                    raise Unusual('<< as a value')
                container[frame[4][0]] = value
                frame[4] = None
        self.expanded = expanded + self.distinct
        return root

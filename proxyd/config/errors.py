"""ConfigError and the path notation shared by every check.

Checks report ``(path, reason)`` where path is a tuple of segments: ``str`` for a field
(proto snake_case name), ``int`` for a list index, ``MapKey`` for a map key. Keeping paths
structured until the end lets the loader look the same tuple up in the YAML line index.
"""


class ConfigError(Exception):
    """Raised with every problem found; ``errors`` holds one 'FILE:LINE: path: reason' each."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__('\n'.join(self.errors))


class MapKey(str):
    """A key of a protobuf map (or Struct) field, shown as ``field["key"]``."""


def format_path(path, prefix=''):
    out = prefix
    for seg in path:
        if isinstance(seg, int):
            out += f'[{seg}]'
        elif isinstance(seg, MapKey):
            out += f'["{seg}"]'
        else:
            out += f'.{seg}' if out else seg
    return out or '<root>'

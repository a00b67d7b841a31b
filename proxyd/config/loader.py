"""YAML/JSON text -> dict -> protobuf, importing Envoy's ``_pb2`` modules only as needed.

xds-protos ships ~600 modules; importing all of them costs 0.7-0.9 s, so each ``@type``
URL pulls in only the modules of its own proto package (see research/ecosystem.md §4).
"""
import importlib
import pkgutil

import yaml
from google.protobuf import descriptor_pool, json_format, message_factory

_imported_packages = set()
# Only these top-level packages hold API protos; never import an arbitrary module named by a config.
_PROTO_ROOTS = ('envoy', 'xds', 'udpa', 'validate', 'google')


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


def parse_text(text):
    """Returns (data, has_duplicate_keys); raises yaml.YAMLError on a syntax error."""
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    return data, loader.duplicate_keys


def _import_package(package):
    """Imports every ``_pb2`` module of one proto package; False if there is no such package."""
    if package in _imported_packages:
        return True
    if package.split('.', 1)[0] not in _PROTO_ROOTS:
        return False
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return False
    if not hasattr(pkg, '__path__'):
        return False
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.endswith('_pb2'):
            importlib.import_module(f'{package}.{info.name}')
    _imported_packages.add(package)
    return True


def find_descriptor(type_name):
    """Descriptor of a fully qualified message name (or type URL), or None if unknown."""
    type_name = type_name.rsplit('/', 1)[-1]
    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName(type_name)
    except KeyError:
        pass
    parts = type_name.split('.')
    for end in range(len(parts) - 1, 0, -1):  # nested messages: try shorter prefixes
        if _import_package('.'.join(parts[:end])):
            break
    try:
        return pool.FindMessageTypeByName(type_name)
    except KeyError:
        return None


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


def message_class(descriptor):
    return message_factory.GetMessageClass(descriptor)


def unpack(any_msg):
    """google.protobuf.Any -> the concrete message, importing its proto package on demand."""
    descriptor = find_descriptor(any_msg.type_url)
    if descriptor is None:
        raise ValueError(f'unknown type URL {any_msg.type_url!r}')
    msg = message_class(descriptor)()
    if not any_msg.Unpack(msg):
        raise ValueError(f'cannot unpack {any_msg.type_url!r}')
    return msg


TYPED_STRUCTS = ('xds.type.v3.TypedStruct', 'udpa.type.v1.TypedStruct')


def extension_config(any_msg):
    """(type name, config message) of an extension's typed_config. A TypedStruct (Envoy's
    carrier for configs without a compiled proto) names the type and holds a Struct."""
    name = any_msg.type_url.rsplit('/', 1)[-1]
    msg = unpack(any_msg)
    if name in TYPED_STRUCTS:
        return msg.type_url.rsplit('/', 1)[-1], msg.value
    return name, msg


def parse_dict(data, message):
    json_format.ParseDict(data, message)
    return message

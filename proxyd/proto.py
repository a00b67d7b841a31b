"""Protobuf leaf helpers: type URL -> descriptor and class, `Any` -> message, importing
each Envoy proto package only when a config names it. Imports nothing of proxyd, so any
module (transport, observability, upstream) may use it without an import circle through
`proxyd.config`."""
import importlib
import pkgutil

from google.protobuf import descriptor_pool, message_factory

_imported_packages = set()
# Only these top-level packages hold API protos; never import an arbitrary module named by a config.
_PROTO_ROOTS = ('envoy', 'xds', 'udpa', 'validate', 'google')


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

"""What Envoy's config parsing accepts beyond strict proto3 JSON, applied to the dict tree
before ``ParseDict``: a single value where a repeated field expects a list (protobuf's
legacy JSON syntax, used by Envoy's own examples), and enum names in any case (Envoy
parses with ``case_insensitive_enum_parsing``: ``auto``, ``strict_dns``, ``round_robin``).
"""
from . import loader


def accept(data, desc):
    """Rewrites ``data`` (the dict for message ``desc``) in place into strict proto3 JSON."""
    stack = [(data, desc)]
    while stack:
        value, desc = stack.pop()
        if desc.full_name == 'google.protobuf.Any':
            if not isinstance(value, dict) or not isinstance(value.get('@type'), str):
                continue
            desc = loader.find_descriptor(value['@type'])
            if desc is None:
                continue
        if desc.full_name.startswith('google.protobuf.') or not isinstance(value, dict):
            continue  # Struct, wrappers, Duration ...: their JSON forms are taken as they are
        fields = _fields(desc)
        for key, sub in list(value.items()):
            field = fields.get(key)
            if field is None or sub is None:
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                vfield = field.message_type.fields_by_name['value']
                if isinstance(sub, dict):
                    for k, v in sub.items():
                        _item(sub, k, v, vfield, stack)
                continue
            if field.is_repeated:
                if not isinstance(sub, list):
                    sub = value[key] = [sub]
                for i, item in enumerate(sub):
                    _item(sub, i, item, field, stack)
            else:
                _item(value, key, sub, field, stack)


def _item(container, key, value, field, stack):
    if field.message_type is not None:
        stack.append((value, field.message_type))
    elif field.enum_type is not None and isinstance(value, str):
        names = field.enum_type.values_by_name
        if value not in names and value.upper() in names:
            container[key] = value.upper()


_FIELDS = {}


def _fields(desc):
    fields = _FIELDS.get(desc)
    if fields is None:
        fields = {f.name: f for f in desc.fields}
        fields.update({f.json_name: f for f in desc.fields})
        _FIELDS[desc] = fields
    return fields

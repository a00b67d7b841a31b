"""A small interpreter for Envoy's protoc-gen-validate rules (``validate.rules`` options).

The official PGV runtime crashes on protobuf 7, never descends into ``Any`` and reports no
paths, so we read the rules straight from the descriptors (cached per message type) and
report ``(path, reason)`` like the other checks. Messages follow PGV's wording.
"""
import ipaddress
import re

from validate import validate_pb2 as V

from . import loader
from .errors import MapKey

_NUMERIC = {'float', 'double', 'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64',
            'fixed32', 'fixed64', 'sfixed32', 'sfixed64'}
_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$")
_HEADER_VALUE = re.compile(r'^[^\x00-\x08\x0a-\x1f\x7f]*$')
_HEADER_LAX = re.compile(r'^[^\x00\x0a\x0d]*$')
_HOSTNAME = re.compile(r'^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.?)+$')
_patterns = {}
_plans = {}


class _Plan:
    """What to look at in one message type: fields with rules or sub-messages, required
    oneofs, and what an unset field yields (its rules run once on the default value), so
    a check visits only the fields a message sets (ListFields)."""

    def __init__(self, desc):
        opts = desc.GetOptions()
        self.skip = opts.Extensions[V.disabled] or opts.Extensions[V.ignored]
        self.oneofs = [o for o in desc.oneofs if o.GetOptions().Extensions[V.required]]
        self.fields = {}
        self.unset = []  # (field name, [(path suffix, reason)]) when the field is not set
        for f in desc.fields:
            fopts = f.GetOptions()
            rules = fopts.Extensions[V.rules] if fopts.HasExtension(V.rules) else None
            if rules is None and f.message_type is None:
                continue
            self.fields[f.name] = rules
            if rules is None:
                continue
            found = []
            if f.is_repeated:
                map_entry = f.message_type is not None and f.message_type.GetOptions().map_entry
                _repeated({} if map_entry else [], f, rules, (), found)
            elif f.containing_oneof is not None:
                continue
            elif f.message_type is None:
                _value(f.default_value, f, rules, (), found)
            else:
                kind = rules.WhichOneof('type')
                if rules.message.required or (kind in ('duration', 'timestamp', 'any')
                                              and getattr(rules, kind).required):
                    found.append(((), 'value is required'))
            if found:
                self.unset.append((f.name, found))


def _plan(desc):
    plan = _plans.get(desc.full_name)
    if plan is None:
        plan = _plans[desc.full_name] = _Plan(desc)
    return plan


def check(msg, path=()):
    """Every PGV violation in ``msg`` and its sub-messages (``Any`` unpacked) as [(path, reason)]."""
    out = []
    _check(msg, path, out)
    return out


def _check(msg, path, out):
    name = msg.DESCRIPTOR.full_name
    if name == 'google.protobuf.Any':
        try:
            msg = loader.unpack(msg)
        except ValueError:
            return
    elif name.startswith('google.protobuf.'):
        return
    plan = _plan(msg.DESCRIPTOR)
    if plan.skip:
        return
    for oneof in plan.oneofs:
        if msg.WhichOneof(oneof.name) is None:
            names = ', '.join(f.name for f in oneof.fields)
            out.append((path, f"exactly one of {names} must be set (oneof '{oneof.name}')"))
    listed = msg.ListFields()
    fields = plan.fields
    for field, value in listed:
        if field.name not in fields:
            continue
        rules = fields[field.name]
        fpath = path + (field.name,)
        if field.is_repeated:
            _repeated(value, field, rules, fpath, out)
        elif field.message_type is None:
            _value(value, field, rules, fpath, out)
        else:
            if rules is not None:
                _value(value, field, rules, fpath, out)
            if not (rules is not None and rules.message.skip):
                _check(value, fpath, out)
    if plan.unset:
        present = {field.name for field, _ in listed}
        for fname, found in plan.unset:
            if fname not in present:
                out.extend((path + (fname,) + suffix, reason) for suffix, reason in found)


def _repeated(values, field, rules, path, out):
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        vfield = entry.fields_by_name['value']
        if rules is not None and rules.HasField('map'):
            r = rules.map
            if not (r.ignore_empty and not values):
                _count(len(values), r.min_pairs if r.HasField('min_pairs') else None,
                       r.max_pairs if r.HasField('max_pairs') else None, 'pair', path, out)
                for k, v in values.items():
                    if r.HasField('keys'):
                        _value(k, entry.fields_by_name['key'], r.keys, path + (MapKey(k),), out)
                    if r.HasField('values'):
                        _value(v, vfield, r.values, path + (MapKey(k),), out)
        if vfield.message_type is not None:
            for k, v in values.items():
                _check(v, path + (MapKey(k),), out)
        return
    items = None
    if rules is not None and rules.HasField('repeated'):
        r = rules.repeated
        if r.ignore_empty and not values:
            return
        _count(len(values), r.min_items if r.HasField('min_items') else None,
               r.max_items if r.HasField('max_items') else None, 'item', path, out)
        if r.unique and len(set(map(_hashable, values))) != len(values):
            out.append((path, 'repeated value must contain unique items'))
        items = r.items if r.HasField('items') else None
    for i, v in enumerate(values):
        if items is not None:
            _value(v, field, items, path + (i,), out)
        if field.message_type is not None and not (items is not None and items.message.skip):
            _check(v, path + (i,), out)


def _hashable(v):
    return v.SerializeToString(deterministic=True) if hasattr(v, 'SerializeToString') else v


def _count(n, low, high, what, path, out):
    if low is not None and n < low:
        out.append((path, f'value must contain at least {low} {what}(s)'))
    if high is not None and n > high:
        out.append((path, f'value must contain no more than {high} {what}(s)'))


def _value(value, field, rules, path, out):
    """Applies one FieldRules to one value (a singular field or one element)."""
    if rules is None:
        return
    kind = rules.WhichOneof('type')
    if kind is None:
        return
    r = getattr(rules, kind)
    if kind in _NUMERIC or kind in ('string', 'bytes', 'bool'):
        if field.message_type is not None:  # wrapper types: rules apply to .value
            value = value.value
        if kind in _NUMERIC:
            _numeric(value, r, path, out)
        elif kind == 'string':
            _string(value, r, path, out)
        elif kind == 'bytes':
            _bytes(value, r, path, out)
        elif r.HasField('const') and value != r.const:
            out.append((path, f'value must equal {str(r.const).lower()}'))
    elif kind == 'enum':
        if r.defined_only and field.enum_type.values_by_number.get(value) is None:
            out.append((path, 'value must be one of the defined enum values'))
        _membership(value, r, path, out, lambda n: field.enum_type.values_by_number[n].name
                    if n in field.enum_type.values_by_number else str(n))
    elif kind == 'duration':
        _duration(value, r, path, out)
    elif kind == 'any':
        allowed = getattr(r, 'in')
        if allowed and value.type_url not in allowed:
            out.append((path, f"type URL must be in list [{', '.join(allowed)}]"))
        if value.type_url in r.not_in:
            out.append((path, f"type URL must not be in list [{', '.join(r.not_in)}]"))


def _fmt(v):
    return f'{v:g}' if isinstance(v, float) else str(v)


def _bounds(value, r, path, out, fmt=_fmt, conv=lambda x: x):
    for attr, test, words in (('gt', lambda a, b: a > b, 'greater than'),
                              ('gte', lambda a, b: a >= b, 'greater than or equal to'),
                              ('lt', lambda a, b: a < b, 'less than'),
                              ('lte', lambda a, b: a <= b, 'less than or equal to'),
                              ('const', lambda a, b: a == b, 'equal to')):
        if r.HasField(attr):
            bound = getattr(r, attr)
            if not test(value, conv(bound)):
                out.append((path, f'value must be {words} {fmt(bound)}'))


def _membership(value, r, path, out, fmt=_fmt, conv=lambda x: x):
    allowed = [conv(x) for x in getattr(r, 'in')]
    if allowed and value not in allowed:
        out.append((path, f"value must be in list [{', '.join(fmt(x) for x in getattr(r, 'in'))}]"))
    if value in [conv(x) for x in r.not_in]:
        out.append((path, f"value must not be in list [{', '.join(fmt(x) for x in r.not_in)}]"))


def _numeric(value, r, path, out):
    if r.HasField('ignore_empty') and r.ignore_empty and value == 0:
        return
    _bounds(value, r, path, out)
    _membership(value, r, path, out)


def _nanos(d):
    return d.seconds * 10**9 + d.nanos


def _duration(value, r, path, out):
    fmt = lambda d: d.ToJsonString()  # noqa: E731 - '0s', '1.500s' like Envoy's messages
    _bounds(_nanos(value), r, path, out, fmt, _nanos)
    _membership(_nanos(value), r, path, out, fmt, _nanos)


def _pattern(p):
    if p not in _patterns:
        try:
            _patterns[p] = re.compile(p)
        except re.error:
            _patterns[p] = None  # an RE2-only pattern: not worth emulating here
    return _patterns[p]


def _string(value, r, path, out):
    if r.ignore_empty and value == '':
        return
    n, nbytes = len(value), len(value.encode())
    for attr, ok, msg in (
            ('const', lambda c: value == c, lambda c: f"value must equal '{c}'"),
            ('len', lambda c: n == c, lambda c: f'value length must be {c} characters'),
            ('min_len', lambda c: n >= c, lambda c: f'value length must be at least {c} characters'),
            ('max_len', lambda c: n <= c, lambda c: f'value length must be at most {c} characters'),
            ('len_bytes', lambda c: nbytes == c, lambda c: f'value length must be {c} bytes'),
            ('min_bytes', lambda c: nbytes >= c, lambda c: f'value length must be at least {c} bytes'),
            ('max_bytes', lambda c: nbytes <= c, lambda c: f'value length must be at most {c} bytes'),
            ('prefix', value.startswith, lambda c: f"value does not have prefix '{c}'"),
            ('suffix', value.endswith, lambda c: f"value does not have suffix '{c}'"),
            ('contains', lambda c: c in value, lambda c: f"value does not contain substring '{c}'"),
            ('not_contains', lambda c: c not in value, lambda c: f"value contains substring '{c}'"),
            ('pattern', lambda c: _pattern(c) is None or _pattern(c).search(value),
             lambda c: f"value does not match regex pattern '{c}'")):
        if r.HasField(attr) and not ok(getattr(r, attr)):
            out.append((path, msg(getattr(r, attr))))
    _membership(value, r, path, out, fmt=repr)
    wk = r.WhichOneof('well_known')
    if wk == 'well_known_regex':
        if r.well_known_regex == V.HTTP_HEADER_NAME:
            regex, what = (_HEADER_NAME if r.strict else _HEADER_LAX), 'HTTP header name'
        elif r.well_known_regex == V.HTTP_HEADER_VALUE:
            regex, what = (_HEADER_VALUE if r.strict else _HEADER_LAX), 'HTTP header value'
        else:
            return
        if not regex.match(value):
            out.append((path, f'value must be a valid {what}'))
    elif wk in ('ip', 'ipv4', 'ipv6', 'hostname', 'address') and getattr(r, wk):
        if not _well_known(value, wk):
            out.append((path, f'value must be a valid {wk}'))


def _well_known(value, wk):
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        ip = None
    if wk == 'ip':
        return ip is not None
    if wk in ('ipv4', 'ipv6'):
        return ip is not None and ip.version == int(wk[-1])
    return (wk == 'address' and ip is not None) or bool(_HOSTNAME.match(value))


def _bytes(value, r, path, out):
    if r.ignore_empty and not value:
        return
    for attr, ok, words in (('len', lambda c: len(value) == c, 'exactly'),
                            ('min_len', lambda c: len(value) >= c, 'at least'),
                            ('max_len', lambda c: len(value) <= c, 'at most')):
        if r.HasField(attr) and not ok(getattr(r, attr)):
            out.append((path, f'value length must be {words} {getattr(r, attr)} bytes'))

"""Any mangled config gives ConfigError lines of the documented shape, never a traceback."""
import copy
import re

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from proxyd.config import ConfigError, load_bootstrap

VALUES = [None, 0, -1, 70000, 1.5, True, 'x', '', '0s', [], {}, [1], {'a': 1}, 'STRICT_DNS',
          {'@type': 'type.googleapis.com/foo.Bar'}]
LINE = re.compile(r'^.+:\d+:\d+: \S+: .+$')


def _nodes(data, path=()):
    yield path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield from _nodes(value, path + (key,))


def _mutate(data, rnd):
    data = copy.deepcopy(data)
    for _ in range(rnd.randint(1, 3)):
        path = rnd.choice([p for p in _nodes(data) if p])
        parent = data
        for seg in path[:-1]:
            parent = parent[seg]
        roll = rnd.random()
        if roll < 0.5:
            parent[path[-1]] = rnd.choice(VALUES)
        elif isinstance(parent, dict):
            if roll < 0.75:
                del parent[path[-1]]
            else:
                parent[f'{path[-1]}x'] = 1
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_mangled_configs_fail_cleanly(config, rnd):
    base = yaml.safe_load(config().text)
    cfg = config(yaml.safe_dump(_mutate(base, rnd)))
    try:
        load_bootstrap(cfg.path)
    except ConfigError as e:
        for line in e.errors:
            assert LINE.match(line), line
            assert 'Failed to parse' not in line

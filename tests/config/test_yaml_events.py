"""The event-stream YAML builder gives exactly what PyYAML's safe loader gives (values,
types, key order, merges, shared aliases) or the same error."""
import random

import pytest
import yaml

from proxyd.config import loader

CASES = [
    'a: 1\nb: [1, 2.5, -3, 0x1f, 0o17, 017, 1_000, 190:20:30, .inf, -.Inf, .nan, 0b101, +12, 1e3]\n',
    'a: yes\nb: No\nc: on\nd: OFF\ne: ~\nf: null\ng:\nh: "yes"\ni: \'1\'\nj: Yes\nk: y\n',
    't: 2001-12-14t21:59:43.10-05:00\nd: 2002-12-14\n',
    'base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n',
    'a: &a {x: 1}\nb: &b {x: 2, z: 3}\nc:\n  <<: [*a, *b]\n  w: 0\n',
    'a: &a {x: 1}\nb: &b {x: 2}\nc:\n  <<: *a\n  <<: *b\n',
    'k: v\nk: w\n', '"<<": 1\n', 'a: !!str 123\n', 'x: &r [*r]\n', '--- 1\n--- 2\n', '',
    'a: *undefined\n', '? [1, 2]\n: x\n', '=: 1\n', 'a: |\n  text\n  more\nb: >\n  folded\n',
    'a: "\\u00e9t\\u00e9"\nb: \'it\'\'s\'\n', '- a\n- b: c\n  d: e\n', 'a: !foo bar\n',
    '1: a\n01: b\n', 'a: &x 5\nb: *x\n', 'a: [1, {b: 2}\n', 'a: "open\n',
]


def both(text):
    out = []
    for parse in (loader._parse_with_pyyaml, loader.parse_text):
        try:
            out.append(('ok', repr(parse(text))))
        except yaml.YAMLError as e:
            out.append(('error', type(e).__name__, str(e)))
    return out


@pytest.mark.parametrize('text', CASES)
def test_same_as_pyyaml(text):
    old, new = both(text)
    assert old == new


def test_same_as_pyyaml_on_random_documents():
    rnd = random.Random(11)

    def gen(depth=0):
        r = rnd.random()
        if depth > 3 or r < 0.4:
            return rnd.choice([None, True, False, 0, -7, 1.5, 'x', '', 'yes', '0x1F', '1:30',
                               '2001-01-01', '~', 'a b', '"q"', '<<', 10 ** 20, float('inf')])
        if r < 0.7:
            return [gen(depth + 1) for _ in range(rnd.randint(0, 4))]
        return {rnd.choice(['a', 'b', 'c', 1, 'on', None]): gen(depth + 1)
                for _ in range(rnd.randint(0, 4))}

    for _ in range(300):
        shared = gen(1)
        doc = {'s': shared, 't': [shared, gen()], 'u': gen()}  # safe_dump writes an anchor
        for style in (None, True, False):
            text = yaml.safe_dump(doc, default_flow_style=style)
            old, new = both(text)
            assert old == new, text


def test_aliases_share_one_object():
    data, _ = loader.parse_text('a: &t {x: [1]}\nb: *t\n')
    assert data['a'] is data['b']

"""The Markdown table of what proxyd implements, generated from proxyd/config/supported.py.

Usage: python scripts/supported_table.py          print it
       python scripts/supported_table.py --write  replace README.md's table (everything
                                                  after its `<!-- supported-table -->` line)
A test fails when README.md's table is not what this prints.
"""
import contextlib
import io
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
MARKER = '<!-- supported-table -->\n'
sys.path.insert(0, ROOT)

from proxyd.config import supported  # noqa: E402


def main():
    print('| Message | Supported fields |')
    print('|---|---|')
    for message in sorted(supported.FIELDS):
        fields = []
        for field in sorted(supported.FIELDS[message]):
            allowed = supported.ENUMS.get((message, field))
            fields.append(f"`{field}` ({', '.join(sorted(allowed))})" if allowed else f'`{field}`')
        print(f"| `{message}` | {', '.join(fields) or '(no fields)'} |")
    print()
    print('| Extension (typed_config `@type`) | Kind |')
    print('|---|---|')
    for url, kind in sorted(supported.EXTENSIONS.items()):
        print(f'| `{url}` | {kind} |')


def render() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main()
    return out.getvalue()


def write_readme() -> None:
    path = os.path.join(ROOT, 'README.md')
    with open(path) as f:
        text = f.read()
    head = text[:text.index(MARKER) + len(MARKER)]
    with open(path, 'w') as f:
        f.write(head + render())


if __name__ == '__main__':
    write_readme() if sys.argv[1:] == ['--write'] else main()

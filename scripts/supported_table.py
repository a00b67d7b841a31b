"""Print the Markdown table of what proxyd implements, generated from proxyd/config/supported.py.

Usage: python scripts/supported_table.py >> README.md (or paste the output where needed).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

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


if __name__ == '__main__':
    main()

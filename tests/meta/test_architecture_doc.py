"""docs/ARCHITECTURE.md stays true to the tree: every module path it names exists, and
every package of proxyd is placed somewhere in it."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def _named_paths() -> set[str]:
    return set(re.findall(r"`(proxyd/[\w/.]+?)/?`", DOC.read_text()))


def test_every_named_path_exists():
    named = _named_paths()
    assert len(named) > 30
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == []


def test_every_package_is_placed():
    text = DOC.read_text()
    packages = sorted(p.parent.relative_to(ROOT).as_posix()
                      for p in (ROOT / "proxyd").rglob("__init__.py"))
    unplaced = [p for p in packages if p != "proxyd" and p + "/" not in text]
    assert unplaced == []

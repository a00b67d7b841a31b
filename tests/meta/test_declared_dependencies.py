"""Every import that proxyd and its tests make comes from the standard library, the repo,
or a distribution that `pip install '.[test]'` brings (setup.cfg's declarations and
what they require). CI installs only `pip install '.[test]'`
into a fresh venv; a module that happens to be on the developer's machine (it once was
`cryptography`) would make collection fail there, so this catches it on any machine."""
import ast
import configparser
import importlib.metadata
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)", line)
        if m:
            names.add(_norm(m.group(1)))
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: set[str]) -> set[str]:
    """The declared distributions and what they require in turn: what pip installs."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" not in req:
                todo.extend(_requirement_names(req))
    return seen


def _declared() -> tuple[set[str], set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    runtime = _requirement_names(cfg["options"]["install_requires"])
    test = _requirement_names(cfg["options.extras_require"]["test"])
    return _closure(runtime), _closure(runtime | test)


def _imports(paths) -> dict[str, str]:
    """top-level module -> one file importing it (absolute imports only)."""
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _local_modules() -> set[str]:
    """Modules the repo itself provides: proxyd, and the tests' helper modules."""
    local = {"proxyd", "tests"}
    for p in (ROOT / "tests").rglob("*.py"):
        local.add(p.stem)
    for p in (ROOT / "tests").rglob("*"):
        if p.is_dir():
            local.add(p.name)  # test folders import each other as (namespace) packages
    return local


def _undeclared(paths, allowed: set[str]) -> list[str]:
    dists = importlib.metadata.packages_distributions()
    local = _local_modules()
    bad = []
    for module, where in sorted(_imports(paths).items()):
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        owners = {_norm(d) for d in dists.get(module, [])}
        if not owners & allowed:
            bad.append(f"{module} (imported by {where}; from {sorted(owners) or 'nothing installed'})")
    return bad


def test_proxyd_imports_only_runtime_dependencies():
    runtime, _ = _declared()
    assert _undeclared(sorted((ROOT / "proxyd").rglob("*.py")), runtime) == []


def test_tests_import_only_declared_dependencies():
    _, everything = _declared()
    assert _undeclared(sorted((ROOT / "tests").rglob("*.py")), everything) == []

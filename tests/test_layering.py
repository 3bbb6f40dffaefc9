"""The shape of the code (docs/architecture.md): which layer may import which, and how large a module or a class
may grow. A new exception to a size limit goes into the table below with its reason."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "p2pd"

MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250
SIZE_EXCEPTIONS = {}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def rel(path):
    return path.relative_to(ROOT).as_posix()


def imports(path):
    """Every module name *path* imports (``from x import y`` gives x and x.y)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update("%s.%s" % (node.module, alias.name) for alias in node.names)
    return found


def under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


RULES = [
    ("p2pd/core/", "twisted.internet", "the pure codecs and cores run without a reactor"),
    ("p2pd/peer/", "p2pd.registry", "the peer uses only what both roles share (core/, errors, listening)"),
    ("p2pd/registry/", "p2pd.peer", "the registry knows nothing of the peer's insides"),
    ("p2pd/peer/files/", "p2pd.peer.net", "files never learn which path carries their bytes"),
    ("p2pd/peer/files/", "p2pd.peer.chat", "files reach chat only through the interfaces they are given"),
    ("p2pd/peer/chat/", "p2pd.peer.files", "chat knows nothing of files"),
    ("p2pd/peer/chat/", "p2pd.peer.net", "chat knows nothing of the data paths"),
    ("p2pd/peer/storage/", "twisted", "the store is plain SQLite, usable from any thread"),
]


@pytest.mark.parametrize("where, forbidden, why", RULES)
def test_import_rules(where, forbidden, why):
    offenders = sorted("%s imports %s" % (rel(p), name) for p in modules() if rel(p).startswith(where)
                       for name in imports(p) if under(name, forbidden))
    assert offenders == [], why


def test_the_plugin_only_declares():
    plugin = ROOT / "twisted" / "plugins" / "p2pd_plugin.py"
    tree = ast.parse(plugin.read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "Import", "ImportFrom", "Assign"}, "the plugin file builds nothing: p2pd/tap.py does"


def test_module_sizes():
    long = ["%s: %d lines" % (rel(p), n) for p in modules() if (n := len(p.read_text().splitlines())) >
            MAX_MODULE_LINES]
    assert long == []


def test_class_sizes():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                key = "%s:%s" % (rel(path), node.name)
                size = node.end_lineno - node.lineno + 1
                if size > SIZE_EXCEPTIONS.get(key, MAX_CLASS_LINES):
                    long.append("%s: %d lines" % (key, size))
    assert long == []


def test_the_size_exceptions_are_still_needed():
    """An exception that is no longer needed goes (so the table stays honest)."""
    sizes = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                sizes["%s:%s" % (rel(path), node.name)] = node.end_lineno - node.lineno + 1
    assert {key for key in SIZE_EXCEPTIONS if sizes.get(key, 0) > MAX_CLASS_LINES} == set(SIZE_EXCEPTIONS)

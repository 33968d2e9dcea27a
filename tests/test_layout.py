"""Issue 15: the code reads one way. No module imports a private (`_name`) from another package, and no two
modules import each other (an encoder registry aside). Checked on the source, imports inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

import embedstore

ROOT = Path(embedstore.__file__).parent.parent
REGISTRY = "embedstore.encoders.base"  # fills its registry by importing every encoder module, each importing Encoder
# index/build.py and index/large.py are being split (factory, tuning and file helpers below both): drop these then.


def modules(top: str) -> dict[str, Path]:
    """Dotted name -> file of every module under ROOT/top (a package's __init__ under the package's name)."""
    found = {}
    for path in sorted((ROOT / top).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) of every import statement in the file.

    `from pkg import sub` where pkg.sub is a module counts as importing the module pkg.sub.
    """
    package = package_of(name, path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in known else (base, alias.name, node.lineno))
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(top: str) -> list[str]:
    """`file:line module[.name]` of every private name or private module imported from another package."""
    mods = modules(top)
    library = modules("embedstore")
    known = {**library, **mods}
    bad = []
    for name, path in mods.items():
        own = package_of(name, path)
        for module, item, line in imports(name, path, set(known)):
            if item is None:  # a module: its package is its parent
                private, source = any(is_private(part) for part in module.split(".")), module.rpartition(".")[0]
            else:  # a name: its package is that of the module it comes from
                private = is_private(item) or any(is_private(part) for part in module.split("."))
                source = package_of(module, known[module]) if module in known else module
            if private and source != own:
                bad.append(f"{path.relative_to(ROOT).as_posix()}:{line} {module}{'' if item is None else '.' + item}")
    return bad


def mutual_imports(top: str) -> list[str]:
    """`a <-> b` for every two modules under top that import each other."""
    mods = modules(top)
    edges = {name: {module for module, _, _ in imports(name, path, set(mods)) if module in mods and module != name}
             for name, path in mods.items()}
    pairs = {frozenset((a, b)) for a, targets in edges.items() for b in targets if a in edges[b]}
    return sorted(" <-> ".join(sorted(pair)) for pair in pairs)


def allowed(pair: str) -> bool:
    """The encoder registry and its encoders."""
    a, b = pair.split(" <-> ")
    registry = REGISTRY in (a, b) and all(m.startswith("embedstore.encoders.") for m in (a, b))
    return registry


def test_no_module_imports_a_private_name_from_another_package():
    assert private_imports("embedstore") == []


def test_no_test_imports_a_private_name_of_the_library():
    assert [b for b in private_imports("tests") if " embedstore." in b] == []


def test_no_two_modules_import_each_other():
    assert [pair for pair in mutual_imports("embedstore") if not allowed(pair)] == []


def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch):
    """Each rule fails on a planted offender (a function-level import too), so an empty answer above means something."""
    import tests.test_layout as layout

    pkg = tmp_path / "embedstore"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    for init in (pkg / "__init__.py", pkg / "a" / "__init__.py", pkg / "b" / "__init__.py"):
        init.write_text("")
    (pkg / "a" / "one.py").write_text("from embedstore.b.two import _hidden\n\n\ndef f():\n    from embedstore.b import two\n")
    (pkg / "a" / "own.py").write_text("from embedstore.a.one import _fine\nfrom . import _also_fine\n")
    (pkg / "b" / "two.py").write_text("import embedstore.a.one\n_hidden = 1\n")
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    assert private_imports("embedstore") == ["embedstore/a/one.py:1 embedstore.b.two._hidden"]
    assert mutual_imports("embedstore") == ["embedstore.a.one <-> embedstore.b.two"]

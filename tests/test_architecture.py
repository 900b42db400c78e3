"""The structure ARCHITECTURE.md describes, checked on the sources with ``ast`` (comments and prose do
not count): no import circle between the package's modules (lazy imports inside functions included),
executors imported only by the runner, importing a submodule does not import the whole package, and
no family name outside ``families/`` (the registry is the one family table)."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from latent_decoder.families import FAMILIES, PREVIEW_SPACES
from latent_decoder.previews.factors import FACTORS_FILE

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "latent_decoder"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (type-checking-only imports aside)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            # ``from pkg import mod`` imports pkg.mod; ``from mod import name`` imports mod
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    circles = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name], done)
    # A package's __init__ re-exporting its own submodules is not a circle of sibling modules.
    real = [c for c in circles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, "import circles: " + "; ".join(" -> ".join(c) for c in real)


def layers() -> dict[str, int]:
    """Module -> its layer's row in ARCHITECTURE.md's layer table (0 is the base)."""
    table = (REPO_ROOT / "ARCHITECTURE.md").read_text().split("## Modules by layer")[1].split("\n## ")[0]
    rows = [line.split("|")[2] for line in table.splitlines() if line.startswith("| ") and "`" in line]
    known = modules()
    found: dict[str, int] = {}
    for row, cell in enumerate(rows):
        for entry in re.findall(r"`([^`]+)`", cell):
            if entry.endswith("/"):  # a subpackage: every module in it
                prefix = "latent_decoder." + entry.rstrip("/").replace("/", ".")
                matched = [m for m in known if m == prefix or m.startswith(prefix + ".")]
            else:
                name = "latent_decoder." + entry.removesuffix(".py").replace("/", ".")
                matched = [m for m in known if m == name.removesuffix(".__init__")]
            assert matched, f"ARCHITECTURE.md names {entry}, which is not a module"
            for module in matched:
                found[module] = row
    return found


def test_every_module_imports_only_its_layer_and_the_layers_below() -> None:
    known, layer = modules(), layers()
    missing = sorted(set(known) - set(layer) - {"latent_decoder"})
    assert not missing, f"not in ARCHITECTURE.md's layer table: {missing}"
    upward = [f"{name} ({layer[name]}) imports {dep} ({layer[dep]})"
              for name, path in known.items() if name in layer
              for dep in imports(name, path, known) if dep in layer and layer[dep] > layer[name]]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_only_the_runner_imports_an_executor() -> None:
    known = modules()
    users = {name for name, path in known.items() if not name.startswith("latent_decoder.executors")
             and any(m.startswith("latent_decoder.executors") for m in imports(name, path, known))}
    assert users == {"latent_decoder.runner"}, users


def loaded_after(statement: str, watched: tuple[str, ...]) -> list[str]:
    code = f"import sys\n{statement}\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    return eval(out.stdout)


def test_importing_a_submodule_does_not_import_the_package() -> None:
    assert loaded_after("import latent_decoder.summary, latent_decoder.views.build, latent_decoder.plan",
                        ("latent_decoder.api", "latent_decoder.runner", "torch")) == []
    # The command line starts without torch (`--help`, a dry run, `status` stay quick).
    assert loaded_after("import latent_decoder.cli", ("latent_decoder.api", "torch", "ray")) == []


def string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in a module, f-string parts included."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_family_name_outside_families() -> None:
    """What differs between families is a rule's attribute or hook, never a test of its name: a family
    (or a preview space) is added in one module of ``families/``."""
    names = {family.name for family in FAMILIES.values()} | set(PREVIEW_SPACES)
    found = [f"{path.relative_to(REPO_ROOT)}:{line}: {value!r}" for name, path in modules().items()
             if not name.startswith("latent_decoder.families") for line, value in string_literals(path) if value in names]
    assert not found, "family names outside families/:\n" + "\n".join(found)


def test_published_factors_belong_to_preview_spaces_of_the_registry() -> None:
    """The registry is the one family table: every published map is keyed by one of its spaces."""
    keys = {key for key in json.loads(FACTORS_FILE.read_text()) if not key.startswith("_")}
    assert keys <= set(PREVIEW_SPACES), keys - set(PREVIEW_SPACES)

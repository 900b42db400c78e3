"""Rules of the package's structure, checked on its sources with ``ast`` (comments and prose do not count)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import latent_decoder
from latent_decoder.families import FAMILIES, PREVIEW_SPACES
from latent_decoder.previews.factors import FACTORS_FILE

PACKAGE = Path(latent_decoder.__file__).parent


def modules(exclude: str) -> list[Path]:
    """The package's modules outside the subpackage ``exclude``."""
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] != exclude]


def string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in a module, f-string parts included."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_family_name_outside_families():
    """What differs between families is a rule's attribute or hook, never a test of its name: a family
    (or a preview space) is added in one module of ``families/``."""
    names = {family.name for family in FAMILIES.values()} | set(PREVIEW_SPACES)
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {value!r}"
             for path in modules(exclude="families") for line, value in string_literals(path) if value in names]
    assert not found, "family names outside families/:\n" + "\n".join(found)


def test_published_factors_belong_to_preview_spaces_of_the_registry():
    """The registry is the one family table: every published map is keyed by one of its spaces."""
    keys = {key for key in json.loads(FACTORS_FILE.read_text()) if not key.startswith("_")}
    assert keys <= set(PREVIEW_SPACES), keys - set(PREVIEW_SPACES)

"""The README's table of every video pipeline lists each pipeline class of the installed diffusers that
outputs video, in ``pipelines/`` and ``modular_pipelines/``, with the rule that decodes it or why
none does, and says what the code does.

Which classes output video is read from diffusers' sources (never imported: importing every pipeline
takes long and some need packages absent here): a pipeline whose ``__call__`` returns its output
class with ``frames``/``video``/``videos`` (or a video output class with ``images``), and a modular pipeline whose folder's blocks output
``videos``. The sources are scanned as text (parsing them all takes seconds): classes start at
column 0, methods at 4, and a ``return`` belongs to the last of each before it.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

from latent_decoder.families import FAMILIES, UNSUPPORTED

from conftest import REPO_ROOT

SECTION = "#### Every video pipeline in diffusers"
NOT_YET = "not supported yet:"


def diffusers_root() -> Path:
    """The installed diffusers' package folder, found without importing it (that imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("diffusers")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


# a video output class: frames/video/videos, or a video pipeline's output class holding its frames as
# ``images`` (Text2Video-Zero's TextToVideoPipelineOutput, TextToVideoSDXLPipelineOutput)
RETURNS_VIDEO = re.compile(r"^ {8,}return (?:\w+\([^)]*?\b(?:frames|videos?)=|\w*Video\w*Output\(images=)", re.M)


def _last_before(matches: list[re.Match[str]], position: int) -> str | None:
    names = [m.group(1) for m in matches if m.start() < position]
    return names[-1] if names else None


@lru_cache(maxsize=1)
def video_pipelines() -> dict[str, str]:
    """Class name -> its source file, for every pipeline of the installed diffusers that outputs video."""
    root = diffusers_root()
    found: dict[str, str] = {}
    for path in sorted((root / "pipelines").rglob("pipeline_*.py")):
        text = path.read_text()
        classes = list(re.finditer(r"^class (\w+)\(", text, re.M))
        methods = list(re.finditer(r"^    def (\w+)\(", text, re.M))
        for match in RETURNS_VIDEO.finditer(text):
            owner = _last_before(classes, match.start())
            if owner and _last_before(methods, match.start()) == "__call__":
                found[owner] = str(path.relative_to(root))
    for folder in sorted(p for p in (root / "modular_pipelines").iterdir() if p.is_dir()):
        if not any('"videos"' in p.read_text() for p in folder.glob("*.py")):
            continue
        module = folder / "modular_pipeline.py"
        for match in re.finditer(r"^class (\w+ModularPipeline)\(", module.read_text(), re.M):
            found[match.group(1)] = str(module.relative_to(root))
    return found


def readme_rows() -> list[tuple[list[str], str]]:
    """The section's table: (pipeline classes, rule text) per row."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if not line.startswith("| `"):
            continue
        classes, rule = (cell.strip() for cell in line.strip("|").split(" | ", 1))
        rows.append((re.findall(r"`([^`]+)`", classes), rule))
    return rows


def rules_named(rule: str) -> list[str]:
    return [name for name in re.findall(r"`([^`]+)`", rule) if name in FAMILIES]


def documented_diffusers() -> str:
    """The diffusers release the README's table describes (its heading)."""
    text = (REPO_ROOT / "README.md").read_text()
    return re.search(re.escape(SECTION) + r" ([0-9.]+)", text).group(1)


@pytest.fixture
def documented_or_newer() -> None:
    """``make test-oldest`` runs these tests on an older diffusers, which lacks pipelines the table lists:
    skipped there (on a newer one the table must grow, so they run)."""
    import diffusers
    from packaging.version import Version

    if Version(diffusers.__version__) < Version(documented_diffusers()):
        pytest.skip(f"the table describes diffusers {documented_diffusers()}, this is {diffusers.__version__}")


def test_the_enumeration_finds_the_known_video_pipelines(documented_or_newer: None):
    """The source scan sees pipelines of each kind (a regression guard for the scan itself)."""
    found = video_pipelines()
    for name in ("WanPipeline", "Cosmos3OmniPipeline", "StableVideoDiffusionPipeline", "MiniMaxH3ModularPipeline",
                 "WanAnimate2ModularPipeline", "LTX2VideoDiffusionDecodePipeline"):
        assert name in found, name
    assert "FluxPipeline" not in found and "BriaFiboPipeline" not in found and "FluxModularPipeline" not in found
    assert len(found) >= 90


def test_readme_lists_every_video_pipeline_once_with_its_rule_or_why_not(documented_or_newer: None):
    listed: dict[str, str] = {}
    for classes, rule in readme_rows():
        for name in classes:
            assert name not in listed, f"{name} is listed twice in the README's pipeline table"
            listed[name] = rule
    missing = sorted(set(video_pipelines()) - set(listed))
    assert not missing, f"video pipelines of diffusers missing from the README's pipeline table: {missing}"
    unknown = sorted(set(listed) - set(video_pipelines()))
    assert not unknown, f"the README's pipeline table lists classes diffusers has not (or that output no video): {unknown}"


def test_each_row_says_what_the_code_does(documented_or_newer: None):
    """A row naming rules: each of them decodes the class (``Family.pipelines``); "not supported:": the code
    refuses it with that reason; "not supported yet:": no rule decodes it (when a rule comes, its row
    must name it)."""
    decoded_by = {name: [f.name for f in FAMILIES.values() if name in f.pipelines] for name in video_pipelines()}
    for classes, rule in readme_rows():
        for name in classes:
            if rule.startswith(NOT_YET):
                assert not decoded_by[name], f"{name}: now decoded by {decoded_by[name]}; name it in the README row"
                assert name not in UNSUPPORTED, name
            elif rule.startswith("not supported:"):
                assert name in UNSUPPORTED and not decoded_by[name], name
                reason = UNSUPPORTED[name].split(";")[0].split(" (")[0]
                assert reason[:30] in rule, f"{name}: the README's reason differs from the code's: {UNSUPPORTED[name]}"
            else:
                named = rules_named(rule)
                assert named, f"{name}: the row names no rule ({rule})"
                assert set(named) == set(decoded_by[name]), f"{name}: the README names {named}, the code {decoded_by[name]}"


def test_every_rule_is_in_the_family_table():
    """The family table above has a row per rule (its first cell names them)."""
    text = (REPO_ROOT / "README.md").read_text()
    table = text[text.index("| `--family` | models"):text.index(SECTION)]
    named = {n for line in table.splitlines() if line.startswith("| `")
             for n in re.findall(r"`([^`]+)`", line.split(" | ")[0])}
    assert set(FAMILIES) <= named, sorted(set(FAMILIES) - named)

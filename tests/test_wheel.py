"""``pip install`` from the wheel works: the wheel holds every data file the package opens, and its
commands run from a folder outside the checkout (``wheel_install``: a fresh venv holding only the
wheel). The demo run by ``demo_run`` (conftest) is the installed wheel's; test_demo.py checks it and
its pictures (in the file that makes it, so that one pytest worker runs the demo)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from wheel_install import build_wheel

RUNTIME_DATA = {  # what the code opens at run time; every other data file is held to the same rule below
    "latent_decoder/demo_model/vae/config.json", "latent_decoder/demo_model/vae/diffusion_pytorch_model.safetensors",
    "latent_decoder/demo_model/scheduler/scheduler_config.json", "latent_decoder/demo_model/training.json",
    "latent_decoder/previews/latent_rgb_factors.json",
}


def test_the_wheel_holds_every_data_file_of_the_package(installed_wheel) -> None:
    """Every non-Python file of the checkout under latent_decoder/ (the demo model, the preview factors,
    the views' templates when there are some) is in the wheel: a new data file cannot be forgotten."""
    data = {name for name in installed_wheel.files if name.startswith("latent_decoder/") and not name.endswith(".py")}
    assert RUNTIME_DATA <= data
    assert sorted(data - set(zipfile.ZipFile(installed_wheel.wheel).namelist())) == []


def test_a_templates_folder_of_any_package_ships(installed_wheel, tmp_path: Path) -> None:
    """A ``templates/`` folder added to a package later (the views' Jinja2 templates) ships without
    touching the packaging: a wheel built from a copy of the checkout that holds one."""
    files = [name for name in installed_wheel.files
             if name.startswith("latent_decoder/") and name.endswith(".py") or name in ("pyproject.toml", "README.md")]
    source = tmp_path / "source"
    templates = source / "latent_decoder" / "views" / "templates"
    (templates / "parts").mkdir(parents=True)
    for name in ("gallery.html", "parts/video.html.j2"):
        (templates / name).write_text("{{ title }}\n")
    (tmp_path / "dist").mkdir()
    wheel = build_wheel(files, source, tmp_path / "dist")
    assert {"latent_decoder/views/templates/gallery.html",
            "latent_decoder/views/templates/parts/video.html.j2"} <= set(zipfile.ZipFile(wheel).namelist())

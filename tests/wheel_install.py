"""The project as ``pip install`` leaves it: the wheel built from the checkout's files, installed into
a fresh virtualenv, its commands run from a folder outside the checkout.

Every test that imports the package uses the editable install, which reads data files from the
source tree: a file the wheel leaves out (the demo VAE's config and weights once were) goes
unnoticed there. The venv is made without pip and the wheel installed with ``--no-deps``; the
dependencies come from the test environment through a ``.pth`` file holding its site-packages
path as a plain line, so the editable install's own ``.pth`` finder there is not run and the
wheel's copy of ``latent_decoder`` is the one imported.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
IGNORED_PARTS = {"__pycache__", ".git", ".venv", "build", "dist"}


def checkout_files() -> list[str]:
    """The checkout's files, relative: what git tracks or would track (not its ignored build
    leftovers); without git, every file outside caches and build folders."""
    if shutil.which("git") and (REPO_ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO_ROOT, capture_output=True, check=True).stdout.decode()
        names = [name for name in listed.split("\0") if name]
    else:
        names = [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*")
                 if not IGNORED_PARTS & set(p.relative_to(REPO_ROOT).parts) and not p.name.endswith(".egg-info")]
    return sorted(name for name in names if (REPO_ROOT / name).is_file())


def user_process(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """A process started as a user of the installed package starts it: no PYTHONPATH into the
    checkout, the hub offline."""
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full.update(HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([str(a) for a in args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def build_wheel(files: list[str], source: Path, dist: Path) -> Path:
    """Copy ``files`` of the checkout to ``source`` and build the wheel into ``dist``, offline, with
    the build backend installed in the test environment (no build isolation)."""
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    result = user_process(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", dist, source, cwd=dist)
    if result.returncode != 0:
        raise RuntimeError(f"building the wheel failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    [wheel] = dist.glob("latent_decoder-*.whl")
    return wheel


@dataclass(frozen=True)
class InstalledWheel:
    """A fresh venv holding only the wheel (``files``: what it was built from)."""

    wheel: Path
    venv: Path
    files: list[str]

    def run(self, command: str, *args: str | Path, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """``command`` (``python``, ``latent-decoder``) from the venv's ``bin/``."""
        return user_process(self.venv / "bin" / command, *args, cwd=cwd, env=env)


def install_wheel(wheel: Path, target: Path, files: list[str]) -> InstalledWheel:
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = user_process(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=target)
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site.stdout.strip()) / "test_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    result = user_process(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                          "-q", wheel, cwd=target)
    if result.returncode != 0:
        raise RuntimeError(f"installing the wheel failed:\n{result.stderr[-3000:]}")
    return InstalledWheel(wheel, target, files)

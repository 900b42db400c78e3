"""The tool's own processes (the CLI, a Ray actor) freeze their heap once a decoder holds its model
(``heap.py``); a program that calls the library keeps its garbage collector as it set it. Each check
runs in a fresh process: the freeze is process-wide, and this test process is the library's caller."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT, journal_records


def python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_library_keeps_its_collector_and_an_actor_freezes_after_loading(make_experiment) -> None:
    exp = make_experiment(steps=2)
    seen = python(f"""
        import gc, json
        from latent_decoder.experiment import Experiment
        from latent_decoder.runner import run_decode
        from latent_decoder.settings import CliOptions, resolve_settings

        settings = resolve_settings(Experiment.load({str(exp)!r}), CliOptions(device="cpu"))
        report = run_decode(settings, progress=False)
        library = gc.get_freeze_count()

        from latent_decoder.executors.ray import actor_class
        from latent_decoder.worker import DecodeWorker

        actor = actor_class(DecodeWorker)(settings.output, settings.output_dir, "cpu")
        print(json.dumps({{"exit": report.exit_code, "library": library, "actor": gc.get_freeze_count(),
                          "enabled": gc.isenabled()}}))
    """)
    assert seen["exit"] == 0
    assert seen["library"] == 0, "a library call froze its caller's heap"
    # torch and diffusers alone leave far more than this many objects behind
    assert seen["actor"] > 100_000, seen
    assert seen["enabled"], "freezing must not turn the collector off"


def test_the_cli_freezes_once_its_worker_holds_the_model(make_experiment) -> None:
    exp = make_experiment(steps=2)
    seen = python(f"""
        import gc, json, sys
        from latent_decoder import cli

        sys.argv = ["latent-decoder", "decode", {str(exp)!r}, "--device", "cpu"]
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
        print(json.dumps({{"exit": code, "frozen": gc.get_freeze_count()}}))
    """)
    assert seen["exit"] == 0 and seen["frozen"] > 100_000, seen
    assert {r["status"] for r in journal_records(exp / "latents_videos").values()} == {"ok"}

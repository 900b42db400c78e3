"""One journal per output folder (SQLite): torn entries ignored, old ``.records/`` migrated, the
summary small and true to the experiment as it is now, per-step detail through ``status``."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli

from conftest import REPO_ROOT, journal_records


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def decode(exp: Path, *args: str):
    return invoke("decode", str(exp), "--device", "cpu", *args)


def summary_of(exp: Path) -> dict:
    return json.loads((exp / "latents_videos" / "decode_summary.json").read_text())


def write_legacy_records(out: Path) -> int:
    """Turn a journal into the per-step JSON records older versions wrote (``.records/<item>.json``)."""
    records = journal_records(out)
    for key, rec in records.items():
        settings = {k: v for k, v in rec["settings"].items() if k not in ("frames", "height", "width")}
        old = {"item": key, "prompt": rec["prompt"], "video": rec["video"], "step": rec["step"],
               "step_index": rec["step_index"], "status": rec["status"], "latent_path": rec["latent_path"],
               "settings": settings, "outputs": rec["outputs"], "output_sizes": rec["output_sizes"],
               "error": rec["error"], "error_type": rec["error_type"], "decode_seconds": rec["decode_seconds"],
               "encode_seconds": rec["encode_seconds"], "load_seconds": rec["load_seconds"],
               "latent_shape": rec["latent_shape"], "latent_dtype": rec["latent_dtype"],
               "frames_shape": rec["frames_shape"], "device": rec["device"], "host": rec["host"],
               "worker": rec["worker"], "pid": rec["pid"], "finished_at": rec["finished_at"], "metadata": None,
               "schema": 1}
        path = out / ".records" / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(old, indent=1))
    (out / ".latent-decoder.db").unlink()
    return len(records)


def test_old_records_layout_is_migrated_on_first_use(make_experiment):
    exp = make_experiment(prompts=2, steps=2)
    out = exp / "latents_videos"
    assert decode(exp).exit_code == 0
    videos = {p: p.stat().st_mtime_ns for p in out.rglob("step_*.mp4")}
    assert write_legacy_records(out) == 4
    # A regenerated latent after the old run: its old record must not count.
    changed = exp / "latents" / "prompt_001" / "vid_001" / "step_001.npy.gz"
    changed.write_bytes(changed.read_bytes())
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**10))

    dry = decode(exp, "--dry-run")  # reads the old records without migrating (writes nothing)
    assert "dry run: 4 items (3 done, 1 decode again (changed input))" in dry.output, dry.output
    assert (out / ".records").is_dir() and not (out / ".latent-decoder.db").exists()
    status = invoke("status", str(exp))
    assert status.exit_code == 0 and "total: 4 steps" in status.output, status.output

    result = decode(exp)
    assert result.exit_code == 0 and "1 ok, 0 failed, 3 already done" in result.output, result.output
    assert not (out / ".records").exists(), "the old records are gone once migrated"
    assert len(journal_records(out)) == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("step_*.mp4") if "prompt_001/vid_001/step_001" not in str(p)} == {
        p: t for p, t in videos.items() if "prompt_001/vid_001/step_001" not in str(p)}


def test_a_transaction_cut_by_kill_9_is_ignored(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, steps=2)
    out = exp / "latents_videos"
    assert decode(exp).exit_code == 0
    before = journal_records(out)
    # A process appends an attempt and dies before its commit: a hot rollback journal is left behind.
    script = textwrap.dedent(f"""
        import os, sqlite3
        conn = sqlite3.connect({str(out / '.latent-decoder.db')!r}, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO attempts(item, status) VALUES ('prompt_000/vid_001/step_000', 'failed')")
        conn.execute("UPDATE items SET last=last_insert_rowid(), state='failed'")
        conn.execute("PRAGMA cache_spill=1")
        conn.execute("UPDATE attempts SET outputs = hex(randomblob(200000))")  # spills pages into the file
        os._exit(9)
    """)
    subprocess.run([sys.executable, "-c", script], check=False)
    assert (out / ".latent-decoder.db-journal").exists(), "the test must leave a hot journal"
    assert journal_records(out) == before  # a reader sees the state before the torn transaction
    result = decode(exp)
    assert result.exit_code == 0 and "2 already done" in result.output, result.output
    with sqlite3.connect(out / ".latent-decoder.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_summary_counts_pending_drops_deleted_latents_and_reports_duplicates(make_experiment):
    exp = make_experiment(prompts=2, steps=3)
    out = exp / "latents_videos"
    assert decode(exp, "--prompt-filter", "prompt_000").exit_code == 0
    summary = summary_of(exp)
    # The filtered run's summary covers the whole experiment: 3 done, 3 never decoded.
    assert (summary["total_steps"], summary["successful_steps"], summary["pending_steps"]) == (6, 3, 3)
    assert summary["success_rate"] == 0.5 and "steps" not in summary
    assert summary["video_summaries"]["prompt_001/vid_001"]["pending_steps"] == 3

    # A broken latent fails; the user deletes it as the README suggests: it leaves the summary.
    broken = exp / "latents" / "prompt_001" / "vid_001" / "step_002.npy.gz"
    broken.write_bytes(b"junk")
    assert decode(exp).exit_code == 1
    assert summary_of(exp)["failed_steps"] == 1
    broken.unlink()
    result = decode(exp)
    assert result.exit_code == 0, result.output
    summary = summary_of(exp)
    assert (summary["total_steps"], summary["successful_steps"], summary["failed_steps"]) == (5, 5, 0)
    assert summary["failures"] == [] and "prompt_001/vid_001/step_002" not in journal_records(out)

    # Two files for one step number are reported, not silently reduced to one.
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    (video_dir / "step_1.npy.gz").write_bytes((video_dir / "step_001.npy.gz").read_bytes())
    result = decode(exp)
    assert result.exit_code == 0
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: prompt_000/vid_001: step 1 has 2 files (step_001.npy.gz, step_1.npy.gz); "
                       "decoding step_001.npy.gz"]
    assert summary_of(exp)["duplicates"] == [warning[0].removeprefix("warning: ")]
    assert summary_of(exp)["total_steps"] == 5


def test_status_lists_per_video_failed_steps_and_exports_jsonl(make_experiment):
    exp = make_experiment(prompts=2, steps=2)
    (exp / "latents" / "prompt_001" / "vid_001" / "step_001.npy.gz").write_bytes(b"not gzip")
    assert decode(exp).exit_code == 1
    text = invoke("status", str(exp))
    assert text.exit_code == 0
    assert "prompt_000/vid_001: 2 done" in text.output and "prompt_001/vid_001: 1 done, 1 failed" in text.output
    assert "total: 4 steps, 3 done, 1 failed" in text.output
    failed = invoke("status", str(exp), "--failed")
    assert "step_001" in failed.output and "not a gzip" in failed.output and "prompt_000" not in failed.output
    lines = invoke("status", str(exp), "--json", "--prompt", "prompt_001").output.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["item"], r["status"]) for r in records] == [
        ("prompt_001/vid_001/step_000", "ok"), ("prompt_001/vid_001/step_001", "failed")]
    assert records[0]["outputs"]["video"] == "prompt_001/vid_001/step_000.mp4" and records[0]["input"]["digest"]
    # Latent statistics of each decoded step, from the stored latent itself.
    import gzip
    import io

    import numpy as np

    latent = np.load(io.BytesIO(gzip.decompress(
        (exp / "latents" / "prompt_001" / "vid_001" / "step_000.npy.gz").read_bytes()))).astype(np.float64)
    stats = records[0]["latent_stats"]
    assert stats["mean"] == pytest.approx(latent.mean(), abs=1e-5) and stats["std"] == pytest.approx(latent.std(), rel=1e-4)
    assert stats["channel_norms"] == pytest.approx(np.sqrt((latent ** 2).sum(axis=(0, 2, 3, 4))), rel=1e-4)
    missing = invoke("status", str(exp), "--output-dir", str(exp / "elsewhere"))
    assert missing.exit_code == 2 and "nothing was decoded there yet" in missing.output


def test_nothing_to_decode_is_a_setup_error_that_leaves_no_folder(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, steps=1)
    result = decode(exp, "--step-filter", "99")
    assert result.exit_code == 2 and "match the filters" in result.output
    assert not (exp / "latents_videos").exists()
    empty = tmp_path / "empty"
    (empty / "latents").mkdir(parents=True)
    (empty / "configs").mkdir()
    (exp / "configs" / "generation_config.yaml").rename(empty / "configs" / "generation_config.yaml")
    for args in ([], ["--dry-run"]):
        result = decode(empty, *args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert "no latent steps under" in result.output
    assert not (empty / "latents_videos").exists()


def test_ctrl_c_while_planning_or_loading_exits_130(make_experiment, monkeypatch):
    exp = make_experiment(prompts=1, steps=1)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("latent_decoder.runner.resolve_model", interrupted)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu"])
    assert result.exit_code == 130 and "Aborted" not in result.output


def test_script_entry_point_ctrl_c_during_planning_is_130(make_experiment):
    """The same through a real process and a real SIGINT, while the plan is being made."""
    exp = make_experiment(prompts=1, steps=1)
    script = textwrap.dedent(f"""
        import os, signal, sys
        import latent_decoder.plan as plan
        real = plan.make_plan
        def slow(*a, **k):
            os.kill(os.getpid(), signal.SIGINT)
            return real(*a, **k)
        plan.make_plan = slow
        import latent_decoder.runner as runner
        runner.make_plan = slow
        from latent_decoder.cli import main
        sys.argv = ["latent-decoder", "decode", {str(exp)!r}, "--device", "cpu"]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr

"""A filtered run never certifies what it did not look at: every run checks the whole experiment's
files cheaply (a stat per latent, a listing per output folder), so the summary, ``status`` and the
gallery tell the state of steps outside the filters too, as a dry run does."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.synthetic import save_npy_gz


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def damage_prompt_001(exp: Path) -> None:
    """One latent of prompt_001 regenerated, one of its outputs deleted: two steps to decode again."""
    latent = exp / "latents" / "prompt_001" / "vid_001" / "step_000.npy.gz"
    save_npy_gz(latent, np.random.default_rng(7).standard_normal((1, 16, 3, 4, 6)).astype(np.float16))
    (exp / "latents_videos" / "prompt_001" / "vid_002" / "step_001.mp4").unlink()


def check_two_pending(exp: Path, output: str) -> None:
    out = exp / "latents_videos"
    assert "all items in the folder: 10/12 ok, 0 failed, 2 pending" in output, output
    summary = json.loads((out / "decode_summary.json").read_text())
    assert (summary["successful_steps"], summary["pending_steps"]) == (10, 2)
    assert summary["pending"] == {"changed": 1, "pending": 1}
    videos = summary["video_summaries"]
    assert videos["prompt_001/vid_001"]["pending"] == {"changed": 1}
    assert videos["prompt_001/vid_002"]["pending"] == {"pending": 1}
    status = invoke("status", str(exp)).output
    assert "prompt_001/vid_001: 2 done, 1 changed" in status and "prompt_001/vid_002: 2 done, 1 pending" in status
    html = (out / "index.html").read_text()
    card = re.search(r'data-key="prompt_001/vid_001".*?</article>', html, re.S).group(0)
    assert "1 pending" in card, card
    dry = invoke("decode", str(exp), "--device", "cpu", "--dry-run").output
    assert "2 decode again" not in dry and "1 decode again (changed input)" in dry, dry
    assert "1 decode again (outputs missing)" in dry, dry


def test_a_filtered_run_reports_changes_outside_its_filter(make_experiment):
    """Reproduced on the old main: the run printed 12/12 ok, the summary, status and gallery agreed,
    and a dry run said 2 items must be decoded again."""
    exp = make_experiment(prompts=2, videos=2, steps=3)
    assert invoke("decode", str(exp), "--device", "cpu").exit_code == 0
    damage_prompt_001(exp)
    result = invoke("decode", str(exp), "--device", "cpu", "--prompt-filter", "prompt_000")
    assert result.exit_code == 0 and "decoded 0 item(s)" in result.output
    check_two_pending(exp, result.output)


def test_a_forced_filtered_run_too(make_experiment):
    exp = make_experiment(prompts=2, videos=2, steps=3)
    assert invoke("decode", str(exp), "--device", "cpu").exit_code == 0
    damage_prompt_001(exp)
    result = invoke("decode", str(exp), "--device", "cpu", "--force", "--step-filter", "2")
    assert result.exit_code == 0 and "decoded 4 item(s)" in result.output, result.output
    check_two_pending(exp, result.output)

"""The views of a decoded experiment (``progression.png``, ``progression.mp4``, ``latent_stats.json``)
and the gallery (``index.html``), checked on disk and in a real browser: Debian's chromium driven by
Playwright (``make test`` installs it; without it the browser test skips and says why)."""
from __future__ import annotations

import json
import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import imageio_ffmpeg
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latent_decoder.cli import cli
from latent_decoder.views.progression_video import progression_format
from latent_decoder.views.sheet import FAILED_BG, sheet_geometry

from conftest import journal_records

CHROMIUM = Path("/usr/bin/chromium")
FRAMES, HEIGHT, WIDTH = 9, 32, 48
BROKEN = "prompt_000/vid_001/step_002"
VIEW_FILES = ("progression.png", "progression_thumb.jpg", "progression.mp4", "latent_stats.json", "index.html")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def decode(exp: Path, *args: str):
    return invoke("decode", str(exp), "--device", "cpu", *args)


def mp4_frames(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]


@pytest.fixture
def decoded(make_experiment) -> Path:
    """Two prompts of four steps, one step broken (not gzip), decoded: exit 1, views built."""
    exp = make_experiment(prompts=2, steps=4, frames=FRAMES, height=HEIGHT, width=WIDTH)
    (exp / "latents" / f"{BROKEN}.npy.gz").write_bytes(b"definitely not gzip data")
    result = decode(exp)
    assert result.exit_code == 1, result.output
    return exp


def mtimes(out: Path) -> dict[str, int]:
    """Every view file of the output folder with its mtime (ns)."""
    found = {"index.html": (out / "index.html").stat().st_mtime_ns}
    for video in ("prompt_000/vid_001", "prompt_001/vid_001"):
        for name in VIEW_FILES:
            found[f"{video}/{name}"] = (out / video / name).stat().st_mtime_ns
    return found


# ------------------------------------------------------------------------------------------- views

def test_sheet_has_one_row_per_step_showing_its_frames(decoded):
    out = decoded / "latents_videos"
    records = journal_records(out)
    geometry = sheet_geometry(WIDTH, HEIGHT, FRAMES)
    for video in ("prompt_000/vid_001", "prompt_001/vid_001"):
        steps = sorted((r for r in records.values() if r["item"].startswith(video)), key=lambda r: r["step_index"])
        sheet = np.asarray(Image.open(out / video / "progression.png").convert("RGB"))
        assert sheet.shape[:2] == (len(steps) * geometry.row_height, geometry.width), video
        thumb = Image.open(out / video / "progression_thumb.jpg")  # what the index shows
        assert thumb.width == min(480, geometry.width)
        assert thumb.height / thumb.width == pytest.approx(sheet.shape[0] / sheet.shape[1], rel=0.02)
        frames = {r["step"]: mp4_frames(out / r["outputs"]["video"]) for r in steps if r["status"] == "ok"}
        picks = [round(i * (FRAMES - 1) / (geometry.columns - 1)) for i in range(geometry.columns)]
        for row, rec in enumerate(steps):
            if rec["status"] != "ok":
                left, top, right, bottom = geometry.tile_box(row, 0)
                assert tuple(sheet[top + 2, left + 2]) == FAILED_BG, f"{rec['item']}: a failed row is grey"
                continue
            for column in (0, geometry.columns // 2, geometry.columns - 1):
                left, top, right, bottom = geometry.tile_box(row, column)
                tile = sheet[top:bottom, left:right].astype(np.int16)

                def distance(step: str) -> float:
                    frame = Image.fromarray(frames[step][picks[column]]).resize(
                        (geometry.tile_width, geometry.tile_height), Image.BICUBIC)
                    return float(np.abs(tile - np.asarray(frame, np.int16)).mean())

                own = distance(rec["step"])
                assert own < 1.0, f"{rec['item']} column {column}: tile differs from its frame by {own:.2f}"
                assert all(distance(other) > own for other in frames if other != rec["step"]), \
                    f"{rec['item']}: row {row} shows another step's frame"


def test_progression_video_plays_every_step_in_turn(decoded):
    out = decoded / "latents_videos"
    records = journal_records(out)
    for video, ok_steps in (("prompt_000/vid_001", 3), ("prompt_001/vid_001", 4)):
        fmt = progression_format(FRAMES, WIDTH, HEIGHT)
        reader = imageio_ffmpeg.read_frames(str(out / video / "progression.mp4"))
        meta = next(reader)
        count = sum(1 for _ in reader)
        per_step = [len(fmt.frames_of(FRAMES)) for r in records.values()
                    if r["item"].startswith(video) and r["status"] == "ok"]
        assert len(per_step) == ok_steps
        assert count == sum(per_step) == ok_steps * FRAMES  # short steps: every frame, failed steps left out
        assert tuple(meta["size"]) == fmt.size and meta["fps"] == pytest.approx(fmt.fps)
        assert FRAMES / fmt.fps <= 1.2, "each step plays about a second at most"


def test_latent_stats_json_holds_the_journal_figures(decoded):
    out = decoded / "latents_videos"
    records = journal_records(out)
    for video in ("prompt_000/vid_001", "prompt_001/vid_001"):
        doc = json.loads((out / video / "latent_stats.json").read_text())
        with_stats = sorted((r for r in records.values() if r["item"].startswith(video) and r["latent_stats"]),
                            key=lambda r: r["step_index"])
        assert [s["step"] for s in doc["steps"]] == [r["step"] for r in with_stats]
        for entry, rec in zip(doc["steps"], with_stats):
            meta = json.loads((decoded / "latents" / f"{rec['item']}_metadata.json").read_text())
            assert entry["mean"] == rec["latent_stats"]["mean"]
            assert entry["std"] == rec["latent_stats"]["std"]
            assert entry["channel_norms"] == rec["latent_stats"]["channel_norms"]
            assert entry["timestep"] == meta["timestep"]
            assert entry["sigma"] == pytest.approx(meta["timestep"] / 1000)  # Wan: flow matching
        assert doc["prompt_text"] == meta["prompt"]
    assert "step_002" not in {s["step"] for s in json.loads(
        (out / "prompt_000/vid_001/latent_stats.json").read_text())["steps"]}, "a latent that cannot be read has none"


def test_views_are_rebuilt_only_when_their_steps_change(decoded):
    out = decoded / "latents_videos"
    before = mtimes(out)
    state = (out / ".latent-decoder-views.json").stat().st_mtime_ns

    # Nothing changed: the gallery command writes nothing.
    gallery = invoke("gallery", str(decoded))
    assert gallery.exit_code == 0 and gallery.output.strip() == str(out / "index.html")
    assert mtimes(out) == before
    assert (out / ".latent-decoder-views.json").stat().st_mtime_ns == state
    # A run that retries the broken step, which fails the same way: no video's views change (the
    # index may, with the new run's time).
    result = decode(decoded)
    assert result.exit_code == 1 and "0 ok, 1 failed, 7 already done" in result.output, result.output
    assert {k: v for k, v in mtimes(out).items() if k != "index.html"} == {
        k: v for k, v in before.items() if k != "index.html"}
    before = mtimes(out)

    # A new step in prompt_001: its views are rebuilt (one row more), prompt_000's are not.
    video_dir = decoded / "latents" / "prompt_001" / "vid_001"
    shutil.copy(video_dir / "step_003.npy.gz", video_dir / "step_004.npy.gz")
    meta = json.loads((video_dir / "step_003_metadata.json").read_text())
    (video_dir / "step_004_metadata.json").write_text(json.dumps({**meta, "step": 4, "timestep": 0.0}))
    old_height = Image.open(out / "prompt_001/vid_001/progression.png").height
    time.sleep(0.01)
    result = decode(decoded)
    assert "1 ok, 1 failed, 7 already done" in result.output, result.output
    after = mtimes(out)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"index.html", *(f"prompt_001/vid_001/{name}" for name in VIEW_FILES)}
    geometry = sheet_geometry(WIDTH, HEIGHT, FRAMES)
    assert Image.open(out / "prompt_001/vid_001/progression.png").height == old_height + geometry.row_height
    assert len(json.loads((out / "prompt_001/vid_001/latent_stats.json").read_text())["steps"]) == 5

    # A sheet older than its newest step output is rebuilt, by the next run or by `gallery`.
    sheet = out / "prompt_000/vid_001/progression.png"
    os.utime(sheet, ns=(sheet.stat().st_atime_ns, sheet.stat().st_mtime_ns - 3600 * 10**9))
    stale = sheet.stat().st_mtime_ns
    assert invoke("gallery", str(decoded)).exit_code == 0
    assert sheet.stat().st_mtime_ns > stale

    # Views never drawn (a folder decoded by an older version) or deleted: the next run draws them,
    # whatever it decodes (here it only retries prompt_000's broken step).
    (out / ".latent-decoder-views.json").unlink()
    for name in VIEW_FILES:
        (out / "prompt_001/vid_001" / name).unlink()
    result = decode(decoded)
    assert "0 ok, 1 failed, 8 already done" in result.output, result.output
    assert all((out / "prompt_001/vid_001" / name).is_file() for name in VIEW_FILES)
    assert 'href="prompt_001/vid_001/index.html"' in (out / "index.html").read_text()


def test_png_frames_have_views_too(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, steps=2, frames=FRAMES, height=HEIGHT, width=WIDTH)
    out = tmp_path / "png"
    assert decode(exp, "--format", "png", "--output-dir", str(out)).exit_code == 0
    video = out / "prompt_000" / "vid_001"
    geometry = sheet_geometry(WIDTH, HEIGHT, FRAMES)
    assert Image.open(video / "progression.png").size == (geometry.width, 2 * geometry.row_height)
    assert sum(1 for _ in imageio_ffmpeg.read_frames(str(video / "progression.mp4"))) - 1 == 2 * FRAMES
    page = (video / "index.html").read_text()
    assert 'href="step_000/frame_0000.png"' in page and "<video" in page  # frames linked; progression played


def test_a_views_failure_never_fails_the_run(make_experiment, monkeypatch, caplog):
    from latent_decoder.views import build

    def broken(*_args, **_kwargs):
        raise RuntimeError("ffmpeg exploded\nsecond line")

    monkeypatch.setattr(build, "build_video", broken)
    exp = make_experiment(prompts=1, steps=2, frames=FRAMES, height=HEIGHT, width=WIDTH)
    with caplog.at_level("WARNING", logger="latent_decoder"):
        result = decode(exp)
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and r.name.startswith("latent_decoder.views")]
    assert len(warnings) == 1 and "ffmpeg exploded" in warnings[0] and "\n" not in warnings[0], warnings
    index = (exp / "latents_videos" / "index.html").read_text()
    assert "its views could not be drawn: ffmpeg exploded" in index, "the index is still written, with what it has"
    monkeypatch.undo()
    gallery = invoke("gallery", str(exp))  # the failed video is built next time
    assert gallery.exit_code == 0, gallery.output
    assert (exp / "latents_videos" / "prompt_000" / "vid_001" / "progression.png").is_file()


class _Page(HTMLParser):
    """A page's elements (tag, attributes) and text, as a browser parses them."""

    def __init__(self, path: Path) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text = ""
        self.feed(path.read_text())
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data

    def attrs(self, tag: str, name: str) -> list[str | None]:
        return [a.get(name) for t, a in self.elements if t == tag and name in a]


def test_user_text_shows_as_text_and_its_links_resolve(make_experiment):
    """Folder names, prompt texts and error reasons are the user's: the pages show them as text (no
    element, script or handler comes from them) and link their folders by relative paths that exist."""
    exp = make_experiment(prompts=1, steps=2, frames=FRAMES, height=HEIGHT, width=WIDTH)
    latents = exp / "latents"
    prompt, video = "prompt_<b>&\"'#%20", "v<img src=x onerror=alert(1)>"
    (latents / "prompt_000").rename(latents / prompt)
    (latents / prompt / "vid_001").rename(latents / prompt / video)
    folder = latents / prompt / video
    text = "<script>alert('x')</script> & \"quoted\" </blockquote>"
    for meta in folder.glob("*_metadata.json"):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "prompt": text}))
    (folder / "step_001.npy.gz").write_bytes(b"<i>not gzip</i>")
    assert decode(exp).exit_code == 1
    out = exp / "latents_videos"
    reason = journal_records(out)[f"{prompt}/{video}/step_001"]["error"]
    assert "<i" in reason
    index, page = _Page(out / "index.html"), _Page(out / prompt / video / "index.html")
    for parsed, scripts in ((index, 1), (page, 0)):  # the index's filter script only
        assert [t for t, _ in parsed.elements].count("script") == scripts
        assert not [a for _, attrs in parsed.elements for a in attrs if a.startswith("on")]
        assert "x" not in parsed.attrs("img", "src")
    assert f"\u201c{text}\u201d" in index.text and f"{video}" in index.text and reason in index.text
    assert index.attrs("article", "data-key") == [f"{prompt}/{video}"]
    assert index.attrs("details", "data-text") == [f"{prompt} {text}"]
    assert f"{prompt}/{video}" in page.text and text in page.text and f"{prompt}/{video}: denoising" in page.text
    for parsed, path in ((index, out / "index.html"), (page, out / prompt / video / "index.html")):
        refs = [r for name in ("href", "src", "poster") for tag in ("a", "img", "video") for r in parsed.attrs(tag, name)]
        assert len(refs) > 4
        for ref in refs:
            assert not urlparse(ref).scheme and (path.parent / unquote(ref.split("#")[0])).exists(), ref
    step_link = next(r for r in index.attrs("a", "href") if "#" in r)
    assert step_link.rpartition("#")[2] == "step_001" and ("step_001" in page.attrs("div", "id"))


def test_gallery_command_errors_are_one_line(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, steps=1, frames=FRAMES, height=HEIGHT, width=WIDTH)
    result = CliRunner().invoke(cli, ["gallery", str(exp)])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        f"error: {exp / 'latents_videos'}: nothing decoded there yet (no .latent-decoder.db); "
        "run latent-decoder decode EXP first"]


# ----------------------------------------------------------------------------------------- browser

def _browser():
    """Playwright and Debian's chromium, or a skip that says what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]' (make test installs it)")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (make test does it as root)")
    return sync_playwright


def _references_exist(page, page_path: Path) -> int:
    """Every src/href of the page is relative and names a file on disk; returns how many were checked."""
    refs = page.evaluate("""() => Array.from(document.querySelectorAll('[src],[href],[poster]')).flatMap(
        e => ['src', 'href', 'poster'].filter(a => e.hasAttribute(a)).map(a => e.getAttribute(a)))""")
    assert refs
    for ref in refs:
        assert not urlparse(ref).scheme and not ref.startswith("//"), f"{page_path}: {ref} is not a relative link"
        target = (page_path.parent / unquote(ref.split("#")[0])).resolve()
        assert target.exists(), f"{page_path}: {ref} does not exist"
    return len(refs)


def test_gallery_in_a_real_browser(decoded, tmp_path):
    sync_playwright = _browser()
    out = decoded / "latents_videos"
    reason = journal_records(out)[BROKEN]["error"]
    assert reason
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
            page.on("request", lambda r: None if r.url.startswith("file:") else problems.append(f"network: {r.url}"))

            index = out / "index.html"
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            assert _references_exist(page, index) > 4
            sheets = page.locator('img[src$="progression_thumb.jpg"]')  # the sheets, small
            assert sheets.count() == 2
            for i in range(2):
                sheets.nth(i).scroll_into_view_if_needed()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=sheets.nth(i).element_handle())
            page.evaluate("window.scrollTo(0, 0)")
            failure = page.locator(".failures .reason", has_text=reason)
            assert failure.count() == 1 and failure.is_visible(), "the failed step's reason shows on the index"
            page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
            # The filter hides what does not match.
            page.fill("#filter", "prompt_001")
            assert not page.locator('details.prompt[data-text^="prompt_000"]').is_visible()
            page.fill("#filter", "")

            video_page = out / "prompt_000" / "vid_001" / "index.html"
            page.locator('a[href="prompt_000/vid_001/index.html"]').first.click()
            page.wait_for_load_state("load")
            assert Path(unquote(urlparse(page.url).path)) == video_page
            assert _references_exist(page, video_page) > 8
            sheet = page.locator('img[src="progression.png"]')
            sheet.scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=sheet.element_handle())
            assert page.locator("svg.chart").count() == 2
            failed = page.locator(".step.failed", has_text=reason)
            assert failed.count() == 1 and failed.is_visible()
            assert page.locator("video[preload=none]").count() == 1 + 3  # the progression, then every decoded step
            if page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.64001E\"')"):
                played = page.evaluate("""async () => { const v = document.querySelector('video'); v.muted = true;
                    await v.play(); await new Promise(r => setTimeout(r, 400)); v.pause();
                    return [v.currentTime, v.videoWidth, v.error]; }""")
                assert played[0] > 0 and played[1] > 0 and played[2] is None, played
            page.screenshot(path=str(tmp_path / "video_page.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert (tmp_path / "gallery.png").stat().st_size > 10_000

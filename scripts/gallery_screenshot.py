#!/usr/bin/env python
"""Screenshot a gallery page with Debian's chromium (Playwright, no browser download), as the README's
``docs/gallery.png`` is made:

    .venv/bin/latent-decoder demo /tmp/demo                      # or: decode any experiment
    .venv/bin/python scripts/gallery_screenshot.py /tmp/demo/latents_videos/index.html docs/gallery.png

The PNG is quantised to 256 colours (the page is flat colours and small frames), which keeps it small.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="an index.html of the gallery")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900, help="viewport height (the shot is of the viewport)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri())
        page.wait_for_load_state("load")
        page.wait_for_function("Array.from(document.images).filter(i => i.getBoundingClientRect().top < innerHeight)"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        shot = page.screenshot()
        browser.close()
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

"""Screenshot of a running Space for docs/space.png: headless Debian Chromium (scripts/install_browser.sh)
walks the category tree to a leaf, waits for the gallery's images, and saves the whole page.

    .venv/bin/python space/app.py &                  # the README's main job's model and index
    python scripts/space_screenshot.py --output docs/space.png
"""

from __future__ import annotations

import argparse
import sys

from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
# Each tree level searches as it is picked: wait until no answer is pending and the gallery's images are
# decoded, and that has held for SETTLED_MS (the next event of a chain may start a moment later).
SETTLED_MS = 1000
SETTLED = """settled_ms => {
  const imgs = [...document.querySelectorAll('#results img')];
  const busy = document.querySelector('.pending, .progress-text') !== null
    || imgs.length === 0 || !imgs.every(img => img.complete && img.naturalWidth > 0);
  if (busy) { window.__idleSince = undefined; return false; }
  window.__idleSince ??= performance.now();
  return performance.now() - window.__idleSince >= settled_ms;
}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/", help="the running Space")
    parser.add_argument("--path", default="Home > Kitchen > Ceramic Mugs", help="tree path to walk")
    parser.add_argument("--output", default="docs/space.png", help="PNG to write")
    args = parser.parse_args(argv)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(args.url)
        for level, name in enumerate(args.path.split(" > "), start=1):
            page.locator(f"#tree-level-{level} input").click()
            page.get_by_role("option", name=name, exact=True).click()
        expect(page.locator("#query textarea")).to_have_value(args.path)
        page.wait_for_function(SETTLED, arg=SETTLED_MS)
        page.evaluate("document.fonts.ready.then(() => true)")
        page.screenshot(path=args.output, full_page=True)
        browser.close()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Space in a real browser: headless Debian Chromium, driven by Playwright, types a category, clicks
Search and sees product images in the gallery; walking the category tree fills the query and searches;
the variant switch picks the model; an empty query shows a message.

Needs /usr/bin/chromium: scripts/test.sh installs it (scripts/install_browser.sh) when these tests are
selected and it is missing. Without it this test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from space.answers import DEFAULT_K
from tests.test_space import start_space

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")  # session: the server it shares with test_space.py stops at the end only
def page(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/install_browser.sh (installs Debian's chromium) first"
        )
    space = start_space(tmp_path_factory.getbasetemp() / "space")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(space.url)
        yield page
        browser.close()
    space.stop()


def platform_fonts(page, selector: str) -> list[dict]:
    """The fonts Chromium actually drew a node's text with (CDP CSS.getPlatformFontsForNode): one entry per
    font, with its family, PostScript name, whether it is a web font and how many glyphs it drew."""
    page.locator(selector).first.wait_for()
    page.evaluate("document.fonts.ready.then(() => true)")  # the theme's @font-face files have loaded
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        assert node, f"no {selector} on the page"
        return cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    finally:
        cdp.detach()


@pytest.mark.parametrize("selector", ["h1", "#tree-heading strong", "#search-button"])
def test_bold_text_is_drawn_in_one_font_the_app_serves(page, selector):
    # Gradio's default theme had bold text draw "A" and "B" from its subset SemiBold file and every other
    # letter from a system fallback: the title's "A" and the tree heading's "B" looked smaller.
    fonts = platform_fonts(page, selector)
    assert len(fonts) == 1, f"{selector} is drawn in {len(fonts)} fonts: {fonts}"
    assert fonts[0]["isCustomFont"], f"{selector} fell back to a system font: {fonts}"


def test_typing_a_category_shows_product_images(page):
    page.locator("#query textarea").fill("Red Things")
    page.locator("#search-button").click()
    images = page.locator("#results img")
    expect(images).to_have_count(DEFAULT_K)  # one thumbnail per hit at the default k
    expect(images.first).to_be_visible()
    page.wait_for_function(  # decoded pixels, not just an <img> tag
        "() => { const img = document.querySelector('#results img'); return img.complete && img.naturalWidth > 0; }"
    )
    expect(page.locator("#search-latency")).to_contain_text(" ms")


def test_walking_the_tree_root_to_leaf_fills_the_query_and_searches(page):
    path = ["Sports", "Sports Outdoor", "Blue Things"]
    for level, name in enumerate(path, start=1):
        page.locator(f"#tree-level-{level} input").click()
        page.get_by_role("option", name=name, exact=True).click()
        expect(page.locator("#query textarea")).to_have_value(" > ".join(path[:level]))
    expect(page.locator("#search-latency")).to_contain_text("ms")
    expect(page.locator("#results img").first).to_be_visible()


def test_the_variant_switch_picks_the_model(page):
    page.locator("#variant").get_by_label("clip-i", exact=True).check()
    page.locator("#query textarea").fill("Red Things")
    page.locator("#search-button").click()
    expect(page.locator("#search-latency")).to_contain_text("with clip-i (")
    page.locator("#variant").get_by_label("clip-ita", exact=True).check()
    page.locator("#search-button").click()
    expect(page.locator("#search-latency")).to_contain_text("with clip-ita (")


def test_an_empty_query_shows_a_message_not_a_crash(page):
    page.locator("#query textarea").fill("   ")
    page.locator("#search-button").click()
    expect(page.get_by_text("Type a category", exact=False).first).to_be_visible()

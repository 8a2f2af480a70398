"""The review page in a real browser (Debian's chromium through Playwright; Playwright never
downloads one): the real ``deduplicate --report``, the real ``review`` server, the page's
clicks and keys, and the files on disk after Apply. With IMAGE_DEDUP_SCREENSHOTS=1 it also
takes the README's screenshots."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import FIXTURE_MAX_DIST, all_files, make_photo, save_photo, tree_state

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parent.parent
# the README's screenshots are taken again only when asked (IMAGE_DEDUP_SCREENSHOTS=1), so that a
# test run leaves the working tree as it was
SHOTS = REPO / "docs" / "img" if os.environ.get("IMAGE_DEDUP_SCREENSHOTS") == "1" else None

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason=f"{CHROMIUM} missing (apt-get install chromium)"
)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
    return env


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "services.cli", *map(str, args)]


@pytest.fixture
def library(tmp_path) -> Path:
    """Two groups: a photo with a resized and a re-encoded copy, and a pair."""
    lib = tmp_path / "Pictures"
    save_photo(lib / "2021/harbour.jpg", 41, (800, 600), exif_tags=4)
    save_photo(lib / "2021/small/harbour.jpg", 41, (400, 300))
    save_photo(lib / "phone/harbour-reencoded.jpg", 41, (800, 600), quality=60)
    save_photo(lib / "pets/dog.jpg", 42, (640, 480))
    save_photo(lib / "pets/dog copy.jpg", 42, (640, 480), quality=75)
    save_photo(lib / "pets/solo.jpg", 43)
    return lib


def _serve(library: Path, tmp_path: Path, *review_flags: str | Path):
    """``deduplicate --report`` then ``review`` as the user runs them; yields (url, report, process)."""
    env = _env(tmp_path / "home")
    store, report = tmp_path / "store.sqlite", tmp_path / "run.json"
    subprocess.run(_cli("deduplicate", library, "--store", store, "--report", report, "--max-dist",
                        FIXTURE_MAX_DIST, "--threads", "1", "--quiet"), cwd=REPO, env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen(_cli("review", report, library, "--store", store, "--threads", "1",
                                 "--max-dist", FIXTURE_MAX_DIST, *review_flags),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = ""
        for line in proc.stdout:
            if line.startswith("open "):
                url = line.split()[1]
                break
        assert url.startswith("http://127.0.0.1:") and "?token=" in url, proc.stderr.read()
        yield url, report, proc
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, "the server stops cleanly on SIGTERM"


@pytest.fixture
def server(library, tmp_path):
    """The review of ``library`` with Apply moving duplicates to a target; yields (url, report, target, process)."""
    target = tmp_path / "dups"
    for url, report, proc in _serve(library, tmp_path, "--target", target, "--no-dry-run"):
        yield url, report, target, proc


def _until(page, expression: str, arg=None, timeout: float = 20) -> None:
    """Wait until ``expression`` (a JavaScript function of ``arg``) is true in the page. Not
    Playwright's wait_for_function: its polling evaluates strings, which the page's Content
    Security Policy rightly forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression, arg):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(100)


def _thumbs_loaded(group) -> None:
    group.locator(".thumb img").first.wait_for()
    _until(group.page, "g => [...g.querySelectorAll('.thumb img')].every(i => i.complete && i.naturalWidth > 0)",
           group.element_handle())


def test_review_pick_a_copy_mark_a_pair_and_apply(server, library, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, report_path, target, proc = server
    before = tree_state(library)
    shots = SHOTS or tmp_path
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(url)
        harbour = page.locator(".group", has_text="harbour-reencoded.jpg")
        dogs = page.locator(".group", has_text="dog copy.jpg")
        expect(page.locator(".group")).to_have_count(2)
        _thumbs_loaded(harbour)
        _thumbs_loaded(dogs)
        expect(harbour.locator(".file")).to_have_count(3)
        kept = harbour.locator(".file.keep")
        expect(kept).to_contain_text("harbour.jpg")
        expect(kept).to_contain_text("800×600")
        expect(kept).to_contain_text("2021")
        expect(harbour.locator(".file", has_text="small")).to_contain_text("400×300")
        expect(harbour.locator(".file", has_text="reencoded")).to_contain_text("distance 0.")
        # why the kept copy was kept, in words, not a rule's name
        expect(harbour.locator("h2 .why")).to_have_text("kept: more EXIF data: 4 tags vs 0")
        expect(harbour.locator(".file", has_text="small")).to_contain_text("the kept copy won: more pixels: 800x600 vs 400x300")
        expect(page.locator("#totals")).to_contain_text("pending 2 of 2 groups")
        page.screenshot(path=str(shots / "review-groups.png"))

        # keep the re-encoded copy instead: focus its group, press its number
        harbour.locator(".status").click()
        number = harbour.locator(".file", has_text="reencoded").locator(".num").inner_text()
        page.keyboard.press(number)
        expect(harbour).to_have_class("group accepted focus")
        expect(harbour.locator(".file.keep")).to_contain_text("harbour-reencoded.jpg")
        expect(harbour.locator(".file.keep")).to_contain_text("keep · reviewer")
        expect(page.locator("#totals")).to_contain_text("to free: 2 files")

        # compare two copies with the slider, then flicker
        page.keyboard.press("c")
        expect(page.locator("#compare")).to_be_visible()
        _until(page, "() => ['#cmp-img-a', '#cmp-img-b'].every(s => document.querySelector(s).naturalWidth > 0)")
        box = page.locator("#cmp-stage").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
        left = float(page.locator("#cmp-divider").evaluate("d => parseFloat(d.style.left)"))
        assert 25 < left < 35, "the divider follows the drag"
        page.screenshot(path=str(shots / "review-compare.png"))
        page.keyboard.press(" ")
        expect(page.locator("#cmp-stage")).to_have_class(re.compile(r"\bflicker\b"))
        page.keyboard.press("Escape")
        expect(page.locator("#compare")).to_be_hidden()

        # the pair is not duplicates (its button), and the full-size view opens on a click
        dogs.locator("button.distinct").click()
        expect(dogs).to_have_class("group distinct focus")
        dogs.locator(".thumb").first.click()
        expect(page.locator("#viewer")).to_be_visible()
        _until(page, "() => document.querySelector('#viewer-img').naturalWidth === 640")
        page.keyboard.press("Escape")

        # what Apply will carry out is on disk already: exactly the decisions
        reviewed = json.loads(report_path.with_name("run.reviewed.json").read_text())
        assert [(Path(g["keep"]).name, sorted(Path(r).name for r in g["remove"])) for g in reviewed["groups"]] == [
            ("harbour-reencoded.jpg", ["harbour.jpg", "harbour.jpg"])]
        [dog_group] = [g for g in json.loads(report_path.read_text())["groups"] if "dog" in g["keep"]]
        assert reviewed["reviewed"]["distinct"] == [[dog_group["keep"], *dog_group["remove"]]]
        assert {dog_group["keep"], *dog_group["remove"]} == {str(library / "pets/dog copy.jpg"), str(library / "pets/dog.jpg")}

        # apply, confirming in the page
        page.locator("#apply").click()
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text("Move 2 files")
        expect(page.locator("#confirm-text")).to_contain_text(str(target))
        page.locator("#confirm-ok").click()
        expect(page.locator("#result")).to_be_visible(timeout=30000)
        expect(page.locator("#result-text")).to_contain_text("done: 2")

        # the page shows what was done, and offers nothing more to apply
        page.keyboard.press("Escape")
        expect(harbour).to_have_class(re.compile(r"\bapplied\b"))
        expect(harbour.locator(".file .outcome.done")).to_have_count(2)
        expect(harbour.locator(".file.gone img")).to_have_count(0)
        expect(page.locator("#totals")).to_contain_text("to free: 0 files")
        expect(page.locator("#totals")).to_contain_text("applied 1")
        expect(page.locator("#apply")).to_be_disabled()

        # a server that stopped is said so, without a click
        proc.terminate()
        proc.wait(timeout=30)
        expect(page.locator("#banner")).to_contain_text("not answering", timeout=15000)
        browser.close()

    moved = {"2021/harbour.jpg", "2021/small/harbour.jpg"}
    assert all_files(target) == {f"Pictures/{p}" for p in moved}, "exactly the reviewed removals moved"
    after = tree_state(library)
    assert {str(Path(p).relative_to(library)) for p in before} - {
        str(Path(p).relative_to(library)) for p in after} == moved
    for path, state in after.items():
        assert state == before[path], f"{path} untouched"


def test_compare_lays_a_turned_cropped_copy_over_the_kept_one_and_apply_says_it_only_checks(tmp_path):
    """The slider is for seeing what differs: the copy, turned a quarter and cropped, is shown
    turned back and placed where the verdict found it, so both sides of the slider show the same
    picture. Apply is a dry run unless turned off, and says so, and that the action is the trash."""
    from playwright.sync_api import expect, sync_playwright

    lib = tmp_path / "Pictures"
    original = make_photo(44, (960, 720))
    lib.mkdir()
    original.save(lib / "sea.jpg", quality=92)
    original.crop((72, 54, 888, 666)).transpose(Image.Transpose.ROTATE_90).save(lib / "sea-crop.jpg", quality=90)
    for url, _, _ in _serve(lib, tmp_path):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            expect(page.locator("#source")).to_contain_text("only check (dry run)")
            group = page.locator(".group")
            expect(group).to_have_count(1)
            expect(group.locator(".file.keep")).to_contain_text("sea.jpg")
            group.locator("button.compare").click()
            _until(page, "() => ['#cmp-img-a', '#cmp-img-b'].every(s => document.querySelector(s).naturalWidth > 0)")
            expect(page.locator("#cmp-note")).to_contain_text("lined up")
            frame = page.locator("#cmp-img-a").bounding_box()  # the kept copy: its own frame
            inner = {"x": frame["x"] + frame["width"] * 0.25, "y": frame["y"] + frame["height"] * 0.25,
                     "width": frame["width"] * 0.5, "height": frame["height"] * 0.5}
            stage = page.locator("#cmp-stage").bounding_box()

            def shot(x: float) -> np.ndarray:
                page.mouse.click(x, stage["y"] + stage["height"] / 2)
                page.wait_for_timeout(100)
                return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=inner))).convert("L"), dtype=np.float32)

            kept, copy = shot(stage["x"] + stage["width"] - 1), shot(stage["x"] + 1)
            assert kept.std() > 20, "the picture has detail to compare by"
            assert np.abs(kept - copy).mean() < 12, "both sides show the same picture, lined up"
            page.keyboard.press("Escape")

            page.locator(".group button.accept").click()
            page.locator("#apply").click()
            text = page.locator("#confirm-text").inner_text()
            assert text.startswith("Dry run: check, but change nothing") and "to the trash" in text, text
            assert "delete" not in text and "for good" not in text, text
            page.locator("#confirm-ok").click()
            expect(page.locator("#result-text")).to_contain_text("dry_run: 1")
            browser.close()
    assert {p.name for p in lib.iterdir()} == {"sea.jpg", "sea-crop.jpg"}, "a dry run changes nothing"

"""The generated index.html in a REAL headless browser (Debian's chromium driven by selenium, the
``browser`` fixture of tests/conftest.py): boxes and captions render where they belong, keys and
hover work, nothing in a caption or file name is interpreted as HTML, and a screenshot of it is a
real picture. Skipped, with the reason printed, only when chromium or chromium-driver is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fake_model import FakeDenseCapModel  # noqa: E402
from infer_images import scene  # noqa: E402

from densecap.inference.cli import build_parser, run  # noqa: E402
from densecap.inference.predictor import DenseCapPredictor  # noqa: E402

EVIL = '</script><img src=x onerror="window.PWNED=1"> "q" \'s\' & <b>bold</b>'
W, H = 1400, 860
TOPK = 4


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("viewer_in")
    img, _ = scene(320, 240)
    Image.fromarray(img).save(d / "first.jpg", quality=95)
    img2, _ = scene(400, 300)
    Image.fromarray(img2).save(d / 'odd name <i>&"\'.png')
    # EXIF orientation 6: stored 300 x 180 sideways, displayed 180 wide x 300 high
    disp, _ = scene(180, 300)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(disp, k=1))).save(d / "exif.jpg", quality=95, exif=exif)
    Image.fromarray(scene(64, 48)[0]).save(d / "frame.ppm")  # a format browsers cannot show: copied
    (d / "broken.jpg").write_bytes(b"nope")
    out = tmp_path_factory.mktemp("viewer_out")
    model = FakeDenseCapModel(caption_template=EVIL + " {colour}")
    args = build_parser().parse_args(
        ["--weights", "unused.pth", "--no-progress", "--input", str(d), "--output", str(out), "--topk", str(TOPK)]
    )
    run(args, DenseCapPredictor(model, image_size=128))
    results = json.load(open(out / "results.json"))
    return {"out": str(out), "results": results["results"], "errors": results["errors"]}


class Page:
    """The few things the test does to a page, on a selenium driver."""

    KEYS = {"ArrowRight": "\ue014", "ArrowLeft": "\ue012"}  # selenium's Keys.ARROW_RIGHT / ARROW_LEFT

    def __init__(self, driver) -> None:
        self.d = driver

    def eval(self, expr: str):
        return self.d.execute_script("return " + expr)

    def wait_for(self, expr: str, timeout: float = 20.0) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, timeout, poll_frequency=0.05).until(lambda d: d.execute_script("return " + expr))

    def key(self, k: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.d).send_keys(self.KEYS.get(k, k)).perform()

    def mouse_move(self, x: float, y: float) -> None:
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        a = ActionBuilder(self.d)
        a.pointer_action.move_to_location(int(x), int(y))
        a.perform()

    def console(self):
        return [e for e in self.d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


STATE = "[Number(document.body.dataset.index), Number(document.body.dataset.shown), document.querySelectorAll('#frame .box').length]"


def test_viewer_renders_keys_hover_and_screenshot(browser, viewport, page, tmp_path):
    res = page["results"]
    assert [r["img_name"] for r in res] == ["exif.jpg", "first.jpg", "frame.ppm", 'odd name <i>&"\'.png']
    url = "file://" + os.path.join(page["out"], "index.html")
    viewport(W, H)
    browser.get_log("browser")  # start with an empty console log
    b = Page(browser)
    browser.get(url)
    b.wait_for("document.body.dataset.loaded === '1'")
    # --- first image: boxes and captions where they belong ---------------------------------
    assert b.eval(STATE) == [0, TOPK, TOPK]
    r = res[0]
    caps = b.eval("Array.from(document.querySelectorAll('#caps .cap .txt')).map(e => e.textContent)")
    assert caps == r["captions"][:TOPK]
    labels = b.eval("Array.from(document.querySelectorAll('#frame .box .lbl')).map(e => e.textContent)")
    assert labels == r["captions"][:TOPK]
    # the browser applies the EXIF rotation: the natural size is the displayed frame of results.json
    assert b.eval("[img.naturalWidth, img.naturalHeight]".replace("img", "document.getElementById('img')")) == [180, 300]
    geo = b.eval(
        "(function(){var i=document.getElementById('img').getBoundingClientRect();"
        "return {img:[i.left,i.top,i.width,i.height], boxes:Array.from(document.querySelectorAll('#frame .box'))"
        ".map(function(e){var q=e.getBoundingClientRect();return [q.left,q.top,q.width,q.height]})}})()"
    )
    il, it, iw, ih = geo["img"]
    assert iw > 300, "the image is enlarged to use the page"
    assert abs(iw / ih - 180 / 300) < 0.02
    for (x, y, w, h), (bl, bt, bw, bh) in zip(r["boxes"][:TOPK], geo["boxes"]):
        sx, sy = iw / r["width"], ih / r["height"]
        assert abs(bl - (il + x * sx)) < 2 and abs(bt - (it + y * sy)) < 2, ((x, y), (bl, bt))
        assert abs(bw - w * sx) < 2 and abs(bh - h * sy) < 2
    # --- nothing from a caption or file name became HTML ------------------------------------
    assert b.eval("window.PWNED === undefined && document.querySelectorAll('#caps b, #frame b, #list i, img[src=x]').length === 0")
    assert caps[0].startswith(EVIL)
    names = b.eval("Array.from(document.querySelectorAll('#list li')).map(e => e.textContent)")
    assert names[:4] == [x["img_name"] for x in res] and "broken.jpg" in names[4]
    # --- keys --------------------------------------------------------------------------------
    b.key("ArrowRight")
    assert b.eval(STATE)[0] == 1
    b.key("j")
    assert b.eval(STATE)[0] == 2
    b.key("k")
    assert b.eval(STATE)[0] == 1
    b.key("ArrowLeft")
    b.key("ArrowLeft")  # wraps around to the last image
    assert b.eval(STATE)[0] == 3
    b.wait_for("document.body.dataset.loaded === '1'")
    assert b.eval("document.getElementById('imgtitle').textContent").startswith('odd name <i>&"\'.png')
    b.key("+")
    b.key("+")
    assert b.eval(STATE) == [3, TOPK + 2, TOPK + 2]
    b.key("-")
    b.key("-")
    b.key("-")
    assert b.eval(STATE) == [3, TOPK - 1, TOPK - 1]
    b.key("a")
    n = len(res[3]["captions"])
    assert b.eval(STATE) == [3, n, n]
    b.key("0")
    assert b.eval(STATE) == [3, TOPK, TOPK]
    # the .ppm frame is shown through its JPEG copy
    b.key("k")
    b.wait_for("document.body.dataset.loaded === '1'")
    assert b.eval("document.getElementById('img').getAttribute('src')").startswith("./images/")
    b.key("j")
    b.wait_for("document.body.dataset.loaded === '1'")
    # --- hover a caption: its box is highlighted, the others dimmed -------------------------
    cx, cy = b.eval("(function(){var q=document.querySelector('#caps .cap[data-i=\"2\"]').getBoundingClientRect();"
                    "return [q.left+q.width/2, q.top+q.height/2]})()")
    b.mouse_move(cx, cy)
    assert b.eval("document.body.dataset.highlight") == "2"
    assert b.eval("Array.from(document.querySelectorAll('#frame .box.hl')).map(e => e.dataset.i)") == ["2"]
    assert b.eval("document.querySelectorAll('#frame .box.dim').length") == TOPK - 1
    # --- screenshot ------------------------------------------------------------------------
    shot = str(tmp_path / "viewer.png")
    assert browser.save_screenshot(shot)
    assert not b.console(), b.console()  # no JavaScript errors or warnings
    png = open(shot, "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2

    img = cv2.imread(shot)
    assert img.shape[:2] == (H, W)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200, "blank screenshot"
    keep = os.environ.get("DENSECAP_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)

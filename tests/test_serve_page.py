"""The web page in headless Chromium (selenium, tests/conftest.py's ``browser``) against the app on
a real uvicorn server in this process: the token prompt, an upload with its boxes and captions,
hover both ways, drawing a box and getting its caption, the whole-image caption, a search with its
grid of hits, and captions that are never interpreted as HTML. A screenshot is saved under
``output/test-artifacts/`` (and copied to ``$DENSECAP_KEEP_SERVE_SCREENSHOT`` when that is set)."""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

from fake_model import FakeDenseCapModel  # noqa: E402
from infer_images import scene  # noqa: E402
from serve_helpers import free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "output", "test-artifacts")
EVIL = '</script><img src=x onerror="window.PWNED=1"> <b>bold</b> &amp; "q"'
W, H = 1400, 1250
TOKEN = "page-token"


@pytest.fixture(scope="module")
def live(serve_assets):
    import uvicorn

    from densecap.inference.predictor import DenseCapPredictor
    from densecap.retrieval.index import RegionIndex
    from densecap.retrieval.search import RetrievalModel
    from densecap.serve import DenseCapService, create_app

    model = FakeDenseCapModel(with_image_caption=True)
    predictor = DenseCapPredictor(model, image_size=128, image_caption=True)
    index = RegionIndex.open(serve_assets["index"])
    rm = RetrievalModel.from_checkpoint(serve_assets["ckpt"], device="cpu", known=index.checkpoint)
    svc = DenseCapService(predictor, retrieval=rm, index=index, max_batch=4, max_wait_ms=5, weights="demo.pth")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc, token=TOKEN), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(300):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield {"base": f"http://127.0.0.1:{port}", "model": model, "service": svc}
    server.should_exit = True
    t.join(20)
    svc.close()


def wait(driver, js, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script("return " + js))


def js(driver, expr):
    return driver.execute_script("return " + expr)


def rects(driver, sel):
    return js(driver, f"Array.from(document.querySelectorAll({sel!r})).map(function(e){{var q=e.getBoundingClientRect();"
                      "return [q.left, q.top, q.width, q.height]})")


def mouse(driver):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    return ActionBuilder(driver)


def test_page_upload_hover_draw_search(browser, viewport, live, tmp_path):
    from selenium.webdriver.common.by import By

    img, patches = scene(480, 360)
    img[250:330, 40:160] = (30, 180, 40)  # a green patch too
    path = str(tmp_path / "street.png")
    Image.fromarray(img).save(path)

    viewport(W, H)
    browser.get(live["base"] + "/")
    wait(browser, "document.body.dataset.ready === '1'")
    # --- the server wants a token: the page asks for it --------------------------------------
    assert js(browser, "document.getElementById('tokenform').hidden") is False
    browser.find_element(By.ID, "file").send_keys(path)
    wait(browser, "document.body.dataset.state === 'error'")
    assert "token" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#tokenform button").click()  # retries the upload with it
    wait(browser, "document.body.dataset.state === 'captioned' && document.getElementById('img').style.width !== ''")
    assert js(browser, "document.getElementById('error').hidden") is True

    # --- boxes and captions, where they belong --------------------------------------------------
    want = live["service"].record(live["service"].predictor.predict([img])[0], "street.png", max_regions=10,
                                  min_score=0.0, image_caption=True)
    caps = js(browser, "Array.from(document.querySelectorAll('#caps li .txt')).map(e => e.textContent)")
    labels = js(browser, "Array.from(document.querySelectorAll('#boxes .box .lbl')).map(e => e.textContent)")
    assert caps == want["captions"] == labels and len(caps) == 10
    assert browser.find_element(By.ID, "imgcap").text == want["image_caption"] == "an image with " + caps[0]
    il, it, iw, ih = rects(browser, "#img")[0]
    assert iw > 600, "the image is enlarged to use the page"
    assert abs(iw / ih - 480 / 360) < 0.01
    sx, sy = iw / 480, ih / 360
    for (x, y, w, h), (bl, bt, bw, bh) in zip(want["boxes"], rects(browser, "#boxes .box")):
        assert abs(bl - (il + x * sx)) < 1.5 and abs(bt - (it + y * sy)) < 1.5
        assert abs(bw - w * sx) < 1.5 and abs(bh - h * sy) < 1.5

    # --- hover a caption -> its box; hover a box -> its caption ---------------------------------
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", browser.find_element(By.CSS_SELECTOR, "#caps li[data-i='3']"))
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, "#caps li[data-i='3']")).perform()
    assert js(browser, "document.body.dataset.highlight") == "3"
    assert js(browser, "Array.from(document.querySelectorAll('#boxes .box.hl')).map(e => e.dataset.i)") == ["3"]
    assert js(browser, "document.querySelectorAll('#boxes .box.dim').length") == 9
    last = browser.find_elements(By.CSS_SELECTOR, "#boxes .box")[-1]  # drawn on top of the others
    browser.execute_script("window.scrollTo(0, 0)")
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    assert js(browser, "document.body.dataset.highlight") == "-1"
    assert js(browser, "document.querySelectorAll('#boxes .box.hl, #boxes .box.dim').length") == 0
    ActionChains(browser).move_to_element(last).perform()
    assert js(browser, "document.body.dataset.highlight") == "9"
    assert js(browser, "Array.from(document.querySelectorAll('#caps li.hl')).map(e => e.dataset.i)") == ["9"]

    # --- drag a box over the green patch: its caption ------------------------------------------
    il, it, iw, ih = rects(browser, "#img")[0]
    x0, y0, x1, y1 = 50, 260, 150, 320  # original pixels, inside the green patch
    a = mouse(browser)
    a.pointer_action.move_to_location(int(il + x0 * sx), int(it + y0 * sy)).pointer_down()
    a.pointer_action.move_to_location(int(il + (x0 + x1) / 2 * sx), int(it + (y0 + y1) / 2 * sy))
    a.pointer_action.move_to_location(int(il + x1 * sx), int(it + y1 * sy)).pointer_up()
    a.perform()
    wait(browser, "document.body.dataset.state === 'boxcaptioned'")
    user = js(browser, "Array.from(document.querySelectorAll('#caps li.user .txt')).map(e => e.textContent)")
    assert user == ["green region"]
    (bl, bt, bw, bh), = rects(browser, "#boxes .box.user")
    assert abs(bl - (il + x0 * sx)) < 3 and abs(bt - (it + y0 * sy)) < 3
    assert abs(bw - (x1 - x0) * sx) < 3 and abs(bh - (y1 - y0) * sy) < 3
    given = live["model"].seen_inputs[-1]["given_boxes"].tolist()[0]
    assert all(abs(g - w) <= 1.5 for g, w in zip(given, [x0, y0, x1 - x0, y1 - y0])), given

    # --- search: a grid of hits with their boxes -------------------------------------------------
    q = browser.find_element(By.ID, "query")
    q.send_keys("a red circle")
    browser.find_element(By.ID, "searchbtn").click()
    wait(browser, "document.body.dataset.searched === '1'")
    res = live["service"].search("a red circle", topk=12, mode="fast")
    cards = js(browser, "Array.from(document.querySelectorAll('#hits .hit .cap')).map(e => e.textContent)")
    assert cards == [f"{h['rank']}. {h['caption']}" for h in res["hits"]] and len(cards) == 12
    loaded = js(browser, "Array.from(document.querySelectorAll('#hits .hit img')).map(i => [i.naturalWidth, i.naturalHeight])")
    assert loaded == [[h["width"], h["height"]] for h in res["hits"]]  # fetched with the token
    assert len(rects(browser, "#hits .hit .box")) == 12
    assert "hits among" in browser.find_element(By.ID, "searchinfo").text

    # --- screenshot -----------------------------------------------------------------------------
    ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, "#caps li[data-i='0']")).perform()
    browser.execute_script("window.scrollTo(0, 0)")
    shot = str(tmp_path / "serve_page.png")
    assert browser.save_screenshot(shot)
    os.makedirs(ARTIFACTS, exist_ok=True)
    shutil.copy(shot, os.path.join(ARTIFACTS, "serve_page.png"))
    keep = os.environ.get("DENSECAP_KEEP_SERVE_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    import cv2

    pic = cv2.imread(shot)
    assert pic.shape[:2] == (H, W)
    assert pic.std() > 20 and len(np.unique(pic.reshape(-1, 3), axis=0)) > 200, "blank screenshot"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "token required" not in e["message"]
              and "401" not in e["message"]]
    assert not severe, severe

    # --- captions are text, never HTML ----------------------------------------------------------
    live["model"].caption_template = EVIL + " {colour}"
    try:
        browser.find_element(By.ID, "file").send_keys(path)
        wait(browser, "document.body.dataset.state === 'captioned' && document.querySelector('#caps li .txt') !== null "
                      "&& document.querySelector('#caps li .txt').textContent.indexOf('PWNED') >= 0")
        first = js(browser, "document.querySelector('#caps li .txt').textContent")
        assert first.startswith(EVIL)
        assert js(browser, "document.getElementById('imgcap').textContent").startswith("an image with " + EVIL)
        assert js(browser, "window.PWNED === undefined && document.querySelectorAll('#caps b, #boxes b, #imgcap b, "
                           "img[src=x]').length === 0")
    finally:
        live["model"].caption_template = "{colour} region"

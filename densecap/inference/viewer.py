"""``index.html``: a self-contained static viewer for a results.json (open the file; no server).

The page lists the images on the left, shows the current one with its top boxes and captions drawn
over it (absolutely positioned boxes, placed in percent of the image so they follow any zoom), and
the captions with scores on the right.

Keys: ``→``/``j`` next image, ``←``/``k`` previous image, ``+``/``=`` one more box, ``-``/``_`` one box
fewer, ``a`` all boxes, ``0`` back to the default number. Hovering a caption (or a box) highlights
the box (or its caption) and dims the others. Clicking a name in the list opens that image.

Safety: the data is embedded as JSON in a ``<script type="application/json">`` element with ``<``,
``>`` and ``&`` escaped as ``\\u003c`` etc. (so a caption or file name containing ``</script>``
cannot end the element), and the page inserts every caption and name with ``textContent``, never
as HTML. The only HTML built in Python (the title) is ``html.escape``-d.

Images are referenced by URL relative to the HTML file: the original files (browsers apply their
EXIF orientation, as ``read_image`` does), or ``images/<name>.jpg`` copies for video frames and for
files browsers do not display reliably (TIFF, PPM, CMYK JPEG, 16-bit PNG). Keep the output folder
where it is, or move it together with the images.

State for tests and scripts lives in the DOM: ``body[data-index]`` (current image),
``body[data-shown]`` (boxes shown), ``body[data-highlight]`` (hovered box or -1),
``body[data-loaded]`` ("1" once the image has loaded), ``.box[data-i]`` and ``.cap[data-i]``.
"""
from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence

from densecap.utils.io import atomic_write_text

from .visualize import palette

# formats every current browser displays in <img>
BROWSER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


def browser_can_show(path: str) -> bool:
    """Whether a browser shows ``path`` as read_image does: a web format in a plain 8-bit mode
    (CMYK JPEGs and 16-bit PNGs render inconsistently across browsers, so they get a copy)."""
    if os.path.splitext(path)[1].lower() not in BROWSER_IMAGE_EXTENSIONS:
        return False
    try:
        from PIL import Image

        with Image.open(path) as im:  # reads the header only
            return im.mode in ("RGB", "RGBA", "L", "LA", "P", "1")
    except Exception:  # noqa: BLE001 - unreadable header: let the copy path decide
        return False


def embed_json(obj: Any) -> str:
    """JSON safe to place inside a ``<script>`` element (no ``</script>``, ``<!--`` or raw U+2028)."""
    s = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def relative_url(target: str, start_dir: str) -> str:
    """URL of file ``target`` relative to directory ``start_dir`` (percent-encoded); a file:// URL
    when no relative path exists (another drive on Windows)."""
    target = os.path.abspath(target)
    try:
        rel = os.path.relpath(target, os.path.abspath(start_dir))
    except ValueError:
        return "file://" + urllib.parse.quote(target.replace(os.sep, "/"))
    parts = rel.split(os.sep)
    return "./" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


def viewer_entry(record: Dict[str, Any], src: str) -> Dict[str, Any]:
    """The part of a results.json record the page needs, plus the image URL."""
    e = {
        "name": record.get("name"),
        "img_name": record.get("img_name"),
        "src": src,
        "width": record["width"],
        "height": record["height"],
        "boxes": record["boxes"],
        "scores": record["scores"],
        "captions": record["captions"],
    }
    if record.get("image_caption") is not None:
        e["image_caption"] = record["image_caption"]
    return e


def write_viewer(
    path: str,
    entries: Sequence[Dict[str, Any]],
    *,
    topk: int = 10,
    title: str = "Dense captions",
    errors: Optional[List[Dict[str, str]]] = None,
) -> None:
    """Write the viewer page for ``entries`` (from :func:`viewer_entry`) to ``path``, atomically."""
    n_colors = max([len(e["captions"]) for e in entries] + [1])
    data = {
        "topk": int(topk),
        "colors": ["#%02x%02x%02x" % c for c in palette(n_colors)],
        "images": list(entries),
        "errors": list(errors or []),
    }
    fill = {"TITLE": html.escape(title, quote=True), "DATA": embed_json(data)}
    page = re.sub(r"%%(TITLE|DATA)%%", lambda m: fill[m.group(1)], _TEMPLATE)  # one pass: no re-substitution
    atomic_write_text(path, page)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>
  * { box-sizing: border-box; }
  html, body { margin: 0; height: 100%; background: #1e1f22; color: #e6e6e6;
    font: 14px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  body { display: flex; flex-direction: column; }
  header { padding: 8px 14px; background: #2b2d31; display: flex; gap: 16px; align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0; font-weight: 600; }
  header .help { color: #a0a3a8; font-size: 12px; }
  kbd { background: #3a3d43; border-radius: 3px; padding: 0 4px; font-family: inherit; }
  #main { flex: 1; display: flex; min-height: 0; }
  #list { width: 220px; overflow-y: auto; background: #25272b; margin: 0; padding: 4px 0; list-style: none; }
  #list li { padding: 3px 10px; cursor: pointer; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: #c8c8c8; }
  #list li.current { background: #3b6fd4; color: #fff; }
  #list li.error { color: #e07a7a; cursor: default; }
  #stage { flex: 1; display: flex; flex-direction: column; align-items: center; justify-content: flex-start; padding: 10px; min-width: 0; overflow: auto; }
  #imgtitle { margin-bottom: 6px; color: #c8c8c8; max-width: 100%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  #frame { position: relative; display: inline-block; overflow: hidden; line-height: 0; flex: none; }
  #img { display: block; }
  .box { position: absolute; border: 3px solid; box-shadow: 0 0 0 1px rgba(0,0,0,.7); transition: opacity .1s; }
  .box .lbl { position: absolute; top: 0; left: 0; padding: 1px 4px; font-size: 12px; line-height: 1.3;
    white-space: nowrap; max-width: 400px; overflow: hidden; text-overflow: ellipsis; color: #000; }
  .box.right .lbl { left: auto; right: 0; }
  .box.hl { border-width: 5px; z-index: 1000 !important; }
  .box.dim, .cap.dim { opacity: .25; }
  #imgcap { margin-top: 8px; font-style: italic; color: #f0f0f0; max-width: 100%; }
  #caps { width: 340px; overflow-y: auto; background: #25272b; margin: 0; padding: 6px 8px 6px 30px; }
  .cap { padding: 2px 4px; border-radius: 3px; cursor: default; }
  .cap.hl { background: #3a3d43; }
  .cap .sw { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
  .cap .sc { color: #9a9da3; font-size: 12px; margin-left: 6px; }
  #status { color: #a0a3a8; font-size: 12px; }
  #empty { padding: 40px; color: #a0a3a8; }
</style>
</head>
<body data-index="-1" data-shown="0" data-highlight="-1" data-loaded="0">
<header>
  <h1>%%TITLE%%</h1>
  <span id="status"></span>
  <span class="help"><kbd>&larr;</kbd><kbd>&rarr;</kbd> or <kbd>k</kbd><kbd>j</kbd> image &middot;
    <kbd>+</kbd><kbd>-</kbd> more/fewer boxes &middot; <kbd>a</kbd> all &middot; <kbd>0</kbd> default &middot; hover a caption to find its box</span>
</header>
<div id="main">
  <ul id="list"></ul>
  <div id="stage">
    <div id="imgtitle"></div>
    <div id="frame"><img id="img" alt=""></div>
    <div id="imgcap"></div>
  </div>
  <ol id="caps"></ol>
</div>
<script type="application/json" id="densecap-data">%%DATA%%</script>
<script>
"use strict";
(function () {
  var DATA = JSON.parse(document.getElementById("densecap-data").textContent);
  var images = DATA.images, colors = DATA.colors;
  var body = document.body, list = document.getElementById("list"), frame = document.getElementById("frame");
  var img = document.getElementById("img"), caps = document.getElementById("caps");
  var state = { index: -1, shown: 0 };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clampShown(n) {
    var total = images.length ? images[state.index].captions.length : 0;
    return Math.max(0, Math.min(total, n));
  }
  function highlight(i) {
    body.dataset.highlight = String(i);
    var boxes = frame.querySelectorAll(".box"), items = caps.querySelectorAll(".cap");
    [boxes, items].forEach(function (nodes) {
      for (var k = 0; k < nodes.length; k++) {
        var j = Number(nodes[k].dataset.i);
        nodes[k].classList.toggle("hl", i >= 0 && j === i);
        nodes[k].classList.toggle("dim", i >= 0 && j !== i);
      }
    });
  }
  function render() {
    var rec = images[state.index];
    var old = frame.querySelectorAll(".box");
    for (var k = 0; k < old.length; k++) old[k].remove();
    caps.textContent = "";
    for (var i = 0; i < state.shown; i++) {
      var b = rec.boxes[i], c = colors[i % colors.length];
      var box = el("div", "box");
      box.dataset.i = String(i);
      box.style.left = (100 * b[0] / rec.width) + "%";
      box.style.top = (100 * b[1] / rec.height) + "%";
      box.style.width = (100 * b[2] / rec.width) + "%";
      box.style.height = (100 * b[3] / rec.height) + "%";
      box.style.borderColor = c;
      box.style.zIndex = String(state.shown - i);  // the best box on top
      if (b[0] + b[2] / 2 > rec.width * 0.6) box.classList.add("right");
      var lbl = el("span", "lbl", rec.captions[i]);
      lbl.style.background = c;
      box.appendChild(lbl);
      frame.appendChild(box);
      var li = el("li", "cap");
      li.dataset.i = String(i);
      var sw = el("span", "sw"); sw.style.background = c;
      li.appendChild(sw);
      li.appendChild(el("span", "txt", rec.captions[i]));
      li.appendChild(el("span", "sc", Number(rec.scores[i]).toFixed(3)));
      caps.appendChild(li);
      (function (j, a, bx) {
        a.addEventListener("mouseenter", function () { highlight(j); });
        a.addEventListener("mouseleave", function () { highlight(-1); });
        bx.addEventListener("mouseenter", function () { highlight(j); });
        bx.addEventListener("mouseleave", function () { highlight(-1); });
      })(i, li, box);
    }
    body.dataset.shown = String(state.shown);
    document.getElementById("status").textContent =
      (state.index + 1) + " / " + images.length + " \u00b7 " + state.shown + " of " + rec.captions.length + " boxes";
    highlight(-1);
  }
  function show(index) {
    if (!images.length) return;
    index = ((index % images.length) + images.length) % images.length;
    var changed = index !== state.index;
    state.index = index;
    body.dataset.index = String(index);
    var rec = images[index];
    if (changed) {
      body.dataset.loaded = "0";
      img.src = rec.src;
      img.alt = rec.img_name || rec.name || "";
      document.getElementById("imgtitle").textContent = (rec.img_name || rec.name) + "  (" + rec.width + " \u00d7 " + rec.height + ")";
      document.getElementById("imgcap").textContent = rec.image_caption || "";
      var items = list.querySelectorAll("li[data-index]");
      for (var k = 0; k < items.length; k++) items[k].classList.toggle("current", Number(items[k].dataset.index) === index);
      var cur = list.querySelector("li.current");
      if (cur && cur.scrollIntoView) cur.scrollIntoView({ block: "nearest" });
    }
    state.shown = clampShown(DATA.topk > 0 ? DATA.topk : rec.captions.length);
    render();
  }
  function setShown(n) { state.shown = clampShown(n); render(); }

  function fit() {  // largest size that fits the stage, small images enlarged up to 4x
    var nw = img.naturalWidth, nh = img.naturalHeight;
    if (!nw || !nh) return;
    var stage = document.getElementById("stage");
    var aw = stage.clientWidth - 24;  // padding 2 x 10 and a little air
    var ah = stage.clientHeight - 40 - document.getElementById("imgtitle").offsetHeight - document.getElementById("imgcap").offsetHeight;
    var s = Math.max(0.05, Math.min(aw / nw, ah / nh, 4));
    img.style.width = Math.round(nw * s) + "px";
    img.style.height = Math.round(nh * s) + "px";
  }
  img.addEventListener("load", function () { fit(); body.dataset.loaded = "1"; });
  window.addEventListener("resize", fit);
  img.addEventListener("error", function () { body.dataset.loaded = "error"; });
  images.forEach(function (rec, i) {
    var li = el("li", "", rec.img_name || rec.name);
    li.dataset.index = String(i);
    li.title = rec.img_name || rec.name;
    li.addEventListener("click", function () { show(i); });
    list.appendChild(li);
  });
  (DATA.errors || []).forEach(function (e) {
    var li = el("li", "error", "\u26a0 " + String(e.path).split(/[\\/]/).pop());
    li.title = e.path + ": " + e.error;
    list.appendChild(li);
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !images.length) return;
    var k = ev.key;
    if (k === "ArrowRight" || k === "j") show(state.index + 1);
    else if (k === "ArrowLeft" || k === "k") show(state.index - 1);
    else if (k === "+" || k === "=") setShown(state.shown + 1);
    else if (k === "-" || k === "_") setShown(state.shown - 1);
    else if (k === "a") setShown(images[state.index].captions.length);
    else if (k === "0") setShown(DATA.topk > 0 ? DATA.topk : images[state.index].captions.length);
    else return;
    ev.preventDefault();
  });
  if (images.length) show(0);
  else document.getElementById("stage").appendChild(el("div", "", "No images were captioned."));
})();
</script>
</body>
</html>
"""

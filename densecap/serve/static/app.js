// The densecap page: upload an image, see its regions and captions, draw boxes, search the index.
// Everything a server or a user supplies is shown with textContent (never parsed as HTML).
"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var state = { file: null, result: null, user: [], token: "", health: null, thumbs: {} };

  // ---- talking to the server ---------------------------------------------------------------
  function authHeaders(extra) {
    var h = Object.assign({}, extra || {});
    if (state.token) h["Authorization"] = "Bearer " + state.token;
    return h;
  }

  function showToken(why) {
    $("tokenform").hidden = false;
    if (why) showError(why);
    $("token").focus();
  }

  async function api(path, opts) {
    opts = Object.assign({}, opts || {});
    opts.headers = authHeaders(opts.headers);
    var r = await fetch(path, opts);
    if (r.status === 401) {
      showToken("This server needs a token: enter it above.");
      throw new Error("401: token required");
    }
    var ct = r.headers.get("content-type") || "";
    var body = ct.indexOf("json") >= 0 ? await r.json() : await r.text();
    if (!r.ok) {
      var d = body && body.detail !== undefined ? body.detail : body;
      if (typeof d !== "string") d = JSON.stringify(d);
      throw new Error(r.status + ": " + d);
    }
    return body;
  }

  function showError(msg) {
    var e = $("error");
    e.textContent = msg || "";
    e.hidden = !msg;
  }

  async function refreshHealth() {
    try {
      var h = await (await fetch("/healthz")).json();
      state.health = h;
      var parts = ["model " + h.model];
      parts.push(h.index ? ("index: " + h.num_images + " images, " + h.num_regions + " regions") : "no index");
      $("status").textContent = parts.join(" · ");
      if (h.token_required && !state.token) showToken();
      $("imgcaplabel").hidden = !h.image_caption;
      $("searchpanel").hidden = !h.index;
      if (!h.fast_search) $("mode").value = "exact";
      document.body.dataset.ready = "1";
    } catch (err) {
      $("status").textContent = "server unreachable";
      showError(String(err));
    }
  }

  // ---- regions ------------------------------------------------------------------------------
  function fit() {  // show the image as large as the page allows (small images are enlarged)
    var img = $("img");
    if (!img.naturalWidth) return;
    var avail = $("stagewrap").clientWidth, maxh = Math.max(240, window.innerHeight * 0.7);
    var s = Math.min(avail / img.naturalWidth, maxh / img.naturalHeight);
    img.style.width = Math.floor(img.naturalWidth * s) + "px";
    img.style.height = Math.floor(img.naturalHeight * s) + "px";
  }

  function place(el, box, w, h) {  // box [x, y, w, h] in original pixels -> % of the image
    el.style.left = (100 * box[0] / w) + "%";
    el.style.top = (100 * box[1] / h) + "%";
    el.style.width = (100 * box[2] / w) + "%";
    el.style.height = (100 * box[3] / h) + "%";
  }

  function regions() {
    var r = state.result, out = [];
    if (!r) return out;
    r.captions.forEach(function (c, i) { out.push({ box: r.boxes[i], caption: c, score: r.scores[i], user: false }); });
    state.user.forEach(function (u) { out.push(u); });
    return out;
  }

  function render() {
    var r = state.result, boxes = $("boxes"), caps = $("caps");
    boxes.textContent = "";
    caps.textContent = "";
    if (!r) return;
    regions().forEach(function (g, i) {
      var b = document.createElement("div");
      b.className = "box" + (g.user ? " user" : "");
      b.dataset.i = String(i);
      place(b, g.box, r.width, r.height);
      var lbl = document.createElement("span");
      lbl.className = "lbl";
      lbl.textContent = g.caption;
      b.appendChild(lbl);
      b.addEventListener("mouseenter", function () { highlight(i); });
      b.addEventListener("mouseleave", function () { highlight(-1); });
      boxes.appendChild(b);
      var li = document.createElement("li");
      li.dataset.i = String(i);
      if (g.user) li.className = "user";
      var t = document.createElement("span");
      t.className = "txt";
      t.textContent = g.caption;
      li.appendChild(t);
      var s = document.createElement("span");
      s.className = "score";
      s.textContent = g.user ? "your box" : g.score.toFixed(2);
      li.appendChild(s);
      li.addEventListener("mouseenter", function () { highlight(i); });
      li.addEventListener("mouseleave", function () { highlight(-1); });
      caps.appendChild(li);
    });
    $("imgcap").textContent = r.image_caption ? r.image_caption : "";
    $("hint").hidden = false;
  }

  function highlight(i) {
    document.body.dataset.highlight = String(i);
    document.querySelectorAll("#boxes .box").forEach(function (b) {
      var on = Number(b.dataset.i) === i;
      b.classList.toggle("hl", on);
      b.classList.toggle("dim", i >= 0 && !on);
    });
    document.querySelectorAll("#caps li").forEach(function (li) {
      li.classList.toggle("hl", Number(li.dataset.i) === i);
    });
  }

  // ---- captioning ---------------------------------------------------------------------------
  function form(extra) {
    var f = new FormData();
    f.append("image", state.file, state.file.name || "upload");
    Object.keys(extra || {}).forEach(function (k) { f.append(k, extra[k]); });
    return f;
  }

  async function caption(file) {
    state.file = file;
    state.result = null;
    state.user = [];
    render();
    showError("");
    var img = $("img");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(file);
    $("stage").hidden = false;
    document.body.dataset.state = "busy";
    var opts = { max_regions: $("maxregions").value || "0", min_score: $("minscore").value || "0" };
    if (state.health && state.health.image_caption && $("wantimgcap").checked) opts.image_caption = "true";
    try {
      state.result = await api("/v1/caption", { method: "POST", body: form(opts) });
      render();
      document.body.dataset.state = "captioned";
    } catch (err) {
      showError("Captioning failed: " + err.message);
      document.body.dataset.state = "error";
    }
  }

  async function captionBox(box) {
    document.body.dataset.state = "busy";
    try {
      var res = await api("/v1/caption", { method: "POST", body: form({ boxes: JSON.stringify([box]) }) });
      state.user.push({ box: res.boxes[0], caption: res.captions[0], score: res.scores[0], user: true });
      render();
      document.body.dataset.state = "boxcaptioned";
    } catch (err) {
      showError("Captioning the box failed: " + err.message);
      document.body.dataset.state = "error";
    }
  }

  // ---- drawing a box ------------------------------------------------------------------------
  var drag = null;

  function stagePoint(ev) {
    var q = $("img").getBoundingClientRect();
    return { x: Math.min(Math.max(ev.clientX - q.left, 0), q.width), y: Math.min(Math.max(ev.clientY - q.top, 0), q.height), q: q };
  }

  function onDown(ev) {
    if (ev.button !== 0 || !state.result) return;
    ev.preventDefault();
    var p = stagePoint(ev);
    drag = { x0: p.x, y0: p.y, x1: p.x, y1: p.y };
    updateDrag();
    $("drag").hidden = false;
  }

  function onMove(ev) {
    if (!drag) return;
    var p = stagePoint(ev);
    drag.x1 = p.x;
    drag.y1 = p.y;
    updateDrag();
  }

  function updateDrag() {
    var d = $("drag");
    d.style.left = Math.min(drag.x0, drag.x1) + "px";
    d.style.top = Math.min(drag.y0, drag.y1) + "px";
    d.style.width = Math.abs(drag.x1 - drag.x0) + "px";
    d.style.height = Math.abs(drag.y1 - drag.y0) + "px";
  }

  function onUp(ev) {
    if (!drag) return;
    var p = stagePoint(ev), d = drag;
    drag = null;
    $("drag").hidden = true;
    d.x1 = p.x; d.y1 = p.y;
    var w = Math.abs(d.x1 - d.x0), h = Math.abs(d.y1 - d.y0);
    if (w < 4 || h < 4) return;  // a click, not a box
    var r = state.result, sx = r.width / p.q.width, sy = r.height / p.q.height;
    var x = Math.min(d.x0, d.x1) * sx, y = Math.min(d.y0, d.y1) * sy;
    var box = [x, y, Math.min(w * sx, r.width - x), Math.min(h * sy, r.height - y)].map(function (v) {
      return Math.round(v * 10) / 10;
    });
    captionBox(box);
  }

  // ---- search -------------------------------------------------------------------------------
  async function thumb(name) {
    if (!state.thumbs[name]) {
      state.thumbs[name] = (async function () {
        var r = await fetch("/v1/images/" + name.split("/").map(encodeURIComponent).join("/"), { headers: authHeaders() });
        if (!r.ok) throw new Error(r.status + " for image " + name);
        return URL.createObjectURL(await r.blob());
      })();
    }
    return state.thumbs[name];
  }

  async function search(ev) {
    ev.preventDefault();
    var q = $("query").value.trim();
    if (!q) return;
    var hits = $("hits");
    hits.textContent = "";
    $("searchinfo").textContent = "searching…";
    document.body.dataset.searched = "0";
    try {
      var res = await api("/v1/search", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ query: q, topk: Number($("topk").value) || 10, mode: $("mode").value }),
      });
      var info = res.hits.length + " hits among " + res.num_regions + " regions (" + res.mode + ", " + res.seconds.toFixed(3) + " s)";
      if (res.oov && res.oov.length) info += "; not in the vocabulary: " + res.oov.join(", ");
      $("searchinfo").textContent = info;
      await Promise.all(res.hits.map(async function (h) {
        var card = document.createElement("div");
        card.className = "hit";
        var th = document.createElement("div");
        th.className = "thumb";
        var img = document.createElement("img");
        img.alt = h.caption;
        th.appendChild(img);
        var b = document.createElement("div");
        b.className = "box";
        place(b, h.box, h.width, h.height);
        th.appendChild(b);
        card.appendChild(th);
        var c = document.createElement("div");
        c.className = "cap";
        c.textContent = h.rank + ". " + h.caption;
        card.appendChild(c);
        var m = document.createElement("div");
        m.className = "meta";
        m.textContent = (h.image || "(not served)") + " · " + h.score.toFixed(2);
        card.appendChild(m);
        hits.appendChild(card);
        if (h.image) {
          try { img.src = await thumb(h.image); } catch (err) { m.textContent += " · " + err.message; }
          await img.decode().catch(function () {});
        }
      }));
      document.body.dataset.searched = "1";
    } catch (err) {
      $("searchinfo").textContent = "";
      showError("Search failed: " + err.message);
      document.body.dataset.searched = "error";
    }
  }

  // ---- wiring -------------------------------------------------------------------------------
  function pick(files) {
    if (files && files.length) caption(files[0]);
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("file").addEventListener("change", function () { pick(this.files); this.value = ""; });  // the same file again: a change
    var drop = $("drop");
    ["dragenter", "dragover"].forEach(function (t) {
      drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (t) {
      drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.remove("over"); });
    });
    drop.addEventListener("drop", function (e) { pick(e.dataTransfer.files); });
    $("stage").addEventListener("mousedown", onDown);
    $("img").addEventListener("load", fit);
    window.addEventListener("resize", fit);
    window.addEventListener("mousemove", onMove);
    window.addEventListener("mouseup", onUp);
    $("searchform").addEventListener("submit", search);
    $("tokenform").addEventListener("submit", function (e) {
      e.preventDefault();
      state.token = $("token").value.trim();
      state.thumbs = {};
      showError("");
      if (state.file) caption(state.file);
    });
    refreshHealth();
  });
})();

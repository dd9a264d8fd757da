"""A headless Chromium for tests of the generated HTML pages, with no Python dependency.

``ensure_chromium()`` finds Chromium (or installs Debian's ``chromium`` package with apt-get when
it is missing and we are root) and returns ``(path, reason)``, ``path`` None when unavailable.
:class:`HeadlessChromium` starts it with ``--remote-debugging-pipe`` and speaks the DevTools
protocol over that pipe (NUL-separated JSON messages on file descriptors 3 and 4), so tests can
load a page, evaluate JavaScript, send real key and mouse events and take screenshots::

    path, why = ensure_chromium()
    with HeadlessChromium(path, width=1280, height=800) as b:
        b.open("file:///tmp/out/index.html")
        b.eval("document.body.dataset.index")      # '0'
        b.key("ArrowRight"); b.key("j"); b.key("+")
        b.mouse_move(300, 200)
        b.screenshot("page.png")
"""
from __future__ import annotations

import base64
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
)


def find_chromium() -> Optional[str]:
    """``$DENSECAP_CHROMIUM`` or the first Chromium/Chrome on PATH."""
    env = os.environ.get("DENSECAP_CHROMIUM")
    if env and os.path.isfile(env) and os.access(env, os.X_OK):
        return env
    for name in CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return None


def ensure_chromium(install: bool = True, timeout: float = 900.0) -> Tuple[Optional[str], str]:
    """Return ``(path, reason)``: Chromium's path, installing Debian's ``chromium`` with apt-get
    when missing (only as root, only with ``install``); ``(None, why not)`` when unavailable."""
    path = find_chromium()
    if path:
        return path, "found"
    if not install:
        return None, "chromium is not installed (apt-get install -y chromium)"
    if not sys.platform.startswith("linux"):
        return None, f"chromium is not installed and cannot be installed automatically on {sys.platform}"
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and apt-get is not available to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed and installing it needs root (sudo apt-get install -y chromium)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    log: List[str] = []
    for attempt in range(2):
        try:
            r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=True)
        except subprocess.TimeoutExpired:
            return None, f"apt-get install chromium did not finish in {timeout:.0f} s"
        log.append(r.stdout[-400:])
        path = find_chromium()
        if r.returncode == 0 and path:
            return path, "installed with apt-get"
        if attempt == 0:  # stale package lists: update once and retry
            subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    return None, "apt-get could not install chromium: " + " | ".join(s.strip().replace("\n", " ") for s in log)[-600:]


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    """A headless Chromium driven over the DevTools protocol (pipe transport). Use as a context
    manager; every call waits at most ``timeout`` seconds."""

    def __init__(self, chromium: str, *, width: int = 1280, height: int = 800, timeout: float = 30.0) -> None:
        self.timeout = float(timeout)
        self.width, self.height = int(width), int(height)
        self._profile = tempfile.mkdtemp(prefix="densecap-chromium-")
        to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, from_chrome_w = os.pipe()
        # keep the child's ends away from 3 and 4 so the dup2 calls below cannot clobber them
        child_r, child_w = _dup_high(to_chrome_r), _dup_high(from_chrome_w)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def wire_pipe() -> None:  # in the child, before exec: Chromium reads fd 3, writes fd 4
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [chromium, *HEADLESS_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                f"--window-size={self.width},{self.height}", "about:blank"]
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                         close_fds=False, preexec_fn=wire_pipe)  # noqa: PLW1509
            # close_fds=False: fds 3/4 made by dup2 in the child survive exec; Python's own fds are
            # non-inheritable (O_CLOEXEC) so nothing else leaks into Chromium
        finally:
            os.close(child_r)
            os.close(child_w)
        self._buf = b""
        self._next_id = 0
        self.events: List[Dict[str, Any]] = []
        self.session: Optional[str] = None
        self.console: List[str] = []

    # ---- transport ----------------------------------------------------------------------------
    def _send(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None) -> int:
        self._next_id += 1
        msg: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode("utf-8") + b"\0"
        while data:
            n = os.write(self._to_chrome_w, data)
            data = data[n:]
        return self._next_id

    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from chromium within {self.timeout:.0f} s")
            r, _, _ = select.select([self._from_chrome_r], [], [], min(left, 1.0))
            if not r:
                if self.proc.poll() is not None:
                    raise BrowserError(f"chromium exited with status {self.proc.returncode}: {self._stderr_tail()}")
                continue
            chunk = os.read(self._from_chrome_r, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed the DevTools pipe: {self._stderr_tail()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw.decode("utf-8"))

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")[-800:]
        except Exception:  # noqa: BLE001
            return ""

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, *, session: Any = "page") -> Dict[str, Any]:
        """Send a command and wait for its result (events that arrive meanwhile are kept)."""
        sid = self.session if session == "page" else session
        mid = self._send(method, params, sid)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._on_event(msg)

    def _on_event(self, msg: Dict[str, Any]) -> None:
        if msg.get("method") == "Runtime.consoleAPICalled":
            args = msg.get("params", {}).get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif msg.get("method") == "Runtime.exceptionThrown":
            d = msg.get("params", {}).get("exceptionDetails", {})
            self.console.append("EXCEPTION: " + str(d.get("exception", {}).get("description", d.get("text"))))
        if "method" in msg:
            self.events.append(msg)

    def wait_event(self, method: str) -> Dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_message(deadline)
            if msg.get("method") == method:
                return msg
            self._on_event(msg)

    # ---- page helpers ---------------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Open ``url`` in a fresh tab of ``width x height`` and wait for its load event."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=None)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=None)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()
        res = self.call("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise BrowserError(f"cannot open {url}: {res['errorText']}")
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page; returns the value (JSON-serialisable results)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(f"JavaScript error: {d.get('exception', {}).get('description', d.get('text'))}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: Optional[float] = None) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        end = time.monotonic() + (timeout or self.timeout)
        while True:
            v = self.eval(expression)
            if v:
                return v
            if time.monotonic() > end:
                raise BrowserError(f"timed out waiting for {expression!r} (last value {v!r})")
            time.sleep(0.05)

    _KEYS = {
        "ArrowRight": ("ArrowRight", 39), "ArrowLeft": ("ArrowLeft", 37), "ArrowUp": ("ArrowUp", 38),
        "ArrowDown": ("ArrowDown", 40), "Escape": ("Escape", 27), "Enter": ("Enter", 13),
        "+": ("Equal", 187), "=": ("Equal", 187), "-": ("Minus", 189), "_": ("Minus", 189),
    }

    def key(self, key: str) -> None:
        """Press and release one key as a user would (keyDown with text for printable keys, keyUp)."""
        code, vk = self._KEYS.get(key, (None, None))
        if code is None and len(key) == 1:
            code = ("Key" + key.upper()) if key.isalpha() else ("Digit" + key if key.isdigit() else "")
            vk = ord(key.upper())
        down: Dict[str, Any] = {"type": "keyDown", "key": key, "code": code or "", "windowsVirtualKeyCode": vk or 0}
        if len(key) == 1:
            down["text"] = key
            down["unmodifiedText"] = key
        self.call("Input.dispatchKeyEvent", down)
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code or "", "windowsVirtualKeyCode": vk or 0})

    def mouse_move(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": float(x), "y": float(y)})

    def screenshot(self, path: str) -> bytes:
        """Save a PNG of the viewport to ``path``; returns its bytes."""
        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        with open(path, "wb") as f:
            f.write(data)
        return data

    # ---- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "proc", None) is None:
            return
        try:
            if self.proc.poll() is None:
                try:
                    self._send("Browser.close")
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            for fd in (self._to_chrome_w, self._from_chrome_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)
            self.proc = None

    def __enter__(self) -> "HeadlessChromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dup_high(fd: int, minimum: int = 10) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)


if __name__ == "__main__":  # `python -m densecap.utils.browser`: make sure Chromium is there
    found, why = ensure_chromium()
    print(found or f"unavailable: {why}")
    sys.exit(0 if found else 1)

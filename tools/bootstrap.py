#!/usr/bin/env python3
"""Set up the project's virtual environment and run a job in it (what `make demo` / `make test` call).

Standard library only: it runs before anything is installed. Steps, each skipped when already done:
1. create ``.venv`` with the running Python (3.9+; 3.11 is what CI uses);
2. install ``torch==2.14.1 torchvision==0.29.1`` (the pinned pair) when they are not there;
3. ``pip install -e .[dev]`` when setup.py changed since the last install (a stamp in .venv);
4. system packages the tests use (Java for METEOR, Chromium and chromium-driver for the browser tests), via apt-get when
   running as root and they are missing; otherwise a printed note (the tests that need them then
   skip with a reason, and METEOR fails with a clear message);
5. run the job: ``demo`` (python -m densecap.demo) or ``test`` (pytest).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
PY = os.path.join(VENV, "bin", "python")
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
STAMP = os.path.join(VENV, ".densecap-install-stamp")


def log(msg: str) -> None:
    print(f"[bootstrap] {msg}", flush=True)


def sh(cmd, **kw) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def ensure_venv() -> None:
    if not os.path.exists(PY):
        sh([sys.executable, "-m", "venv", VENV])
        sh([PY, "-m", "pip", "install", "-q", "--upgrade", "pip"])


def have_torch() -> bool:
    code = "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])"
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    want = " ".join(p.split("==")[1] for p in TORCH)
    return r.returncode == 0 and r.stdout.strip() == want


def ensure_torch() -> None:
    if not have_torch():
        sh([PY, "-m", "pip", "install", "-q", *TORCH])


def ensure_package() -> None:
    with open(os.path.join(ROOT, "setup.py"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if os.path.exists(STAMP) and open(STAMP).read().strip() == digest:
        return
    sh([PY, "-m", "pip", "install", "-q", "-e", ".[dev]"], cwd=ROOT)
    with open(STAMP, "w") as f:
        f.write(digest)


def ensure_system_packages(job: str) -> None:
    wanted = []
    if shutil.which("java") is None:
        wanted.append("default-jre-headless")
    if job == "test" and not (shutil.which("chromium") or shutil.which("chromium-browser")):
        wanted.append("chromium")
    if job == "test" and not shutil.which("chromedriver"):
        wanted.append("chromium-driver")
    if not wanted:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log(f"missing system packages {wanted}: install them (apt-get install -y {' '.join(wanted)}); "
            "METEOR needs Java, the browser tests need Chromium and its driver")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        sh(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted], env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as e:
        log(f"could not install {wanted} ({e}); continuing without them")


def main(argv) -> int:
    if len(argv) < 1 or argv[0] not in ("demo", "test", "setup"):
        print("usage: tools/bootstrap.py demo|test|setup [extra args]", file=sys.stderr)
        return 2
    job, extra = argv[0], argv[1:]
    os.chdir(ROOT)
    ensure_venv()
    ensure_torch()
    ensure_package()
    ensure_system_packages(job)
    if job == "setup":
        return 0
    if job == "demo":
        return subprocess.call([PY, "-m", "densecap.demo", *extra])
    return subprocess.call([PY, "-m", "pytest", "-q", "tests", *extra])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

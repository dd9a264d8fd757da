"""Shared fixtures: a small generated synthetic dataset, the tiny test config, and the external
programs some tests need.

Java (METEOR), Chromium and chromium-driver (the browser tests) are installed by ``make test``, so
their tests run. A test that needs one asks for the ``java`` or ``browser`` fixture; when a program is missing
the test is skipped and the reason is printed (and listed by ``-ra`` in the summary). Tests that
take more than a few seconds are marked ``slow`` (pytest.ini); they are part of the suite and
``-m "not slow"`` leaves them out for a quick run.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "synthetic", "densecap_tiny.yaml")


def skip_with_reason(what: str, reason: str) -> None:
    """Skip the running test because ``what`` is unavailable, printing ``reason`` to stderr."""
    print(f"\nSKIPPED (needs {what}): {reason}", file=sys.stderr)
    pytest.skip(f"needs {what}: {reason}")


@pytest.fixture(scope="session")
def java() -> str:
    """The Java runtime METEOR runs on; skips the test, saying why, when there is none."""
    from densecap.evaluation.meteor import JavaNotFoundError, find_java

    try:
        return find_java()
    except JavaNotFoundError as e:
        skip_with_reason("Java", str(e))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A 30-image synthetic dataset, generated and prepared once per test session."""
    from densecap.data import synthetic

    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(out, num_images=30, seed=0)
    synthetic.prepare(out, verbose=False)
    return out


def tiny_config(*opts):
    """The tiny quick-schedule config (configs/synthetic/densecap_tiny.yaml) with ``KEY VALUE``
    overrides: the one definition of the tiny dense captioning model of the tests."""
    from densecap.config import load_config

    return load_config(TINY_CONFIG, [str(o) for o in opts])


@pytest.fixture(scope="session")
def tiny_model_cfg():
    """:func:`tiny_config` as a fixture: ``tiny_model_cfg("MODEL.X", "1", ...)`` -> a fresh config."""
    return tiny_config


@pytest.fixture()
def tiny_cfg(synthetic_root, tmp_path):
    """The tiny config on the session's synthetic dataset, writing to tmp_path."""
    prepared = os.path.join(synthetic_root, "prepared")
    return tiny_config(
        "DATASETS.TRAIN", f"('{prepared}:train',)",
        "DATASETS.TEST", f"('{prepared}:val',)",
        "OUTPUT_DIR", str(tmp_path / "out"),
    )


@pytest.fixture(scope="session")
def serve_assets(tmp_path_factory):
    """A tiny real checkpoint with a joint embedding, 5 images and a region index over them."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from serve_helpers import build_assets

    return build_assets(str(tmp_path_factory.mktemp("serve_assets")))


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by selenium, with the driver and browser paths given explicitly
    (nothing is looked up or downloaded). Skipped, with the reason printed, only when Debian's
    chromium / chromium-driver packages are not installed (make test installs them)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        skip_with_reason("Chromium", f"{' and '.join(missing)} not found (apt-get install -y chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium manager: never download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
              "--window-size=1400,900", "--no-first-run", "--disable-extensions", "--disable-background-networking",
              "--force-device-scale-factor=1"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def set_viewport(driver, width: int, height: int) -> None:
    """Make the page's viewport exactly width x height CSS pixels (screenshots have this size)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


@pytest.fixture()
def viewport(browser):
    """``viewport(w, h)``: set the browser's viewport size in CSS pixels."""
    return lambda w, h: set_viewport(browser, w, h)

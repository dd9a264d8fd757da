"""Shared fixtures: a small generated synthetic dataset, the tiny test config, and the external
programs some tests need.

Java (METEOR) and Chromium (the viewer test) are installed by ``make test``, so their tests run.
A test that needs one asks for the ``java`` or ``chromium`` fixture; when the program is missing
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
def chromium() -> str:
    """Chromium's path (installed with apt-get when missing and possible); skips the test, saying
    why, when it is unavailable."""
    from densecap.utils.browser import ensure_chromium

    path, reason = ensure_chromium()
    if path is None:
        skip_with_reason("Chromium", reason)
    return path


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

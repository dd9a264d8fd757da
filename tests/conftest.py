"""Shared fixtures: a small generated synthetic dataset and the tiny test config."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "synthetic", "densecap_tiny.yaml")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A 30-image synthetic dataset, generated and prepared once per test session."""
    from densecap.data import synthetic

    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(out, num_images=30, seed=0)
    synthetic.prepare(out, verbose=False)
    return out


@pytest.fixture()
def tiny_cfg(synthetic_root, tmp_path):
    """The tiny quick-schedule config on the session's synthetic dataset, writing to tmp_path."""
    from densecap.config import load_config

    prepared = os.path.join(synthetic_root, "prepared")
    return load_config(
        TINY_CONFIG,
        [
            "DATASETS.TRAIN", f"('{prepared}:train',)",
            "DATASETS.TEST", f"('{prepared}:val',)",
            "OUTPUT_DIR", str(tmp_path / "out"),
        ],
    )

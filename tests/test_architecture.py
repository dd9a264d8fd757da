"""The package graph of docs/ARCHITECTURE.md, as import-linter contracts in setup.cfg.

``test_contracts_hold`` runs ``lint-imports`` on the package. The other tests copy the package,
add one forbidden import (inside a function, since those count too) and check that the same
contract file then fails and names the broken rule, so a contract that can never fail would be
caught here (one such case runs in the quick suite, the rest are marked ``slow``: about a second each).
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "setup.cfg")


def lint_imports(cwd: str) -> subprocess.CompletedProcess:
    """``lint-imports --config setup.cfg --no-cache`` with ``cwd``'s ``densecap`` first on the path."""
    env = dict(os.environ, PYTHONPATH=cwd)
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", CONFIG, "--no-cache"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_contracts_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", 0 broken." in r.stdout, r.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """One pristine copy of densecap/; each test copies it again and edits its own copy."""
    src = tmp_path_factory.mktemp("pristine")
    shutil.copytree(os.path.join(ROOT, "densecap"), src / "densecap",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.mark.parametrize(
    "module, line, message",
    [
        # a model module reaching up into the trainer
        ("modeling/anchors.py", "from densecap.engine import trainer", "densecap.modeling is not allowed to import densecap.engine"),
        # an evaluator that would run a model
        pytest.param("evaluation/io.py", "import densecap.modeling.meta_arch", "densecap.evaluation is not allowed to import densecap.modeling", marks=pytest.mark.slow),
        # data depending on the model
        pytest.param("data/tokenizer.py", "from densecap.modeling import build_model", "densecap.data is not allowed to import densecap.modeling", marks=pytest.mark.slow),
        # the engine and retrieval are independent
        pytest.param("retrieval/cluster.py", "from densecap.engine import build", "densecap.retrieval is not allowed to import densecap.engine", marks=pytest.mark.slow),
        # a leaf importing a package above it
        pytest.param("structures/boxes.py", "import densecap.data.tokenizer", "densecap.structures is not allowed to import densecap.data", marks=pytest.mark.slow),
        # the engine does not use inference (forbidden contract)
        pytest.param("engine/build.py", "from densecap.inference import predictor", "densecap.engine is not allowed to import densecap.inference", marks=pytest.mark.slow),
        # inference does not use the evaluators (forbidden contract)
        pytest.param("inference/results.py", "from densecap.evaluation import io", "densecap.inference is not allowed to import densecap.evaluation", marks=pytest.mark.slow),
        # a package importing a tools/ script
        pytest.param("utils/io.py", "import tools.infer", "densecap is not allowed to import tools", marks=pytest.mark.slow),
        # nothing imports the applications on top
        pytest.param("engine/trainer.py", "import densecap.demo", "densecap.engine is not allowed to import densecap.demo", marks=pytest.mark.slow),
    ],
)
def test_forbidden_import_breaks_a_contract(package_copy, tmp_path, module, line, message):
    shutil.copytree(package_copy / "densecap", tmp_path / "densecap")
    path = tmp_path / "densecap" / module
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n\ndef _added_for_the_test():\n    {line}  # noqa\n")
    r = lint_imports(str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    flat = " ".join(r.stdout.split())  # the report wraps long lines
    assert message in flat, r.stdout
    assert "Contracts: 5 kept" not in r.stdout


@pytest.mark.slow
def test_optional_layers_are_checked_when_they_exist(package_copy, tmp_path):
    """densecap.serve and densecap.export are on top (optional layers: the contract holds whether or
    not they exist): a lower package importing one breaks the contract."""
    shutil.copytree(package_copy / "densecap", tmp_path / "densecap")
    for top in ("serve", "export"):
        pkg = tmp_path / "densecap" / top
        if not pkg.exists():  # stand in for a layer this checkout does not have
            pkg.mkdir()
            (pkg / "__init__.py").write_text("from densecap.inference import predictor  # noqa\n")
    assert lint_imports(str(tmp_path)).returncode == 0
    for top in ("serve", "export"):
        with open(tmp_path / "densecap" / "inference" / "results.py", "a", encoding="utf-8") as f:
            f.write(f"\n\ndef _added_for_the_test_{top}():\n    import densecap.{top}  # noqa\n")
    r = lint_imports(str(tmp_path))
    assert r.returncode == 1
    out = " ".join(r.stdout.split())
    for top in ("serve", "export"):
        assert f"densecap.inference is not allowed to import densecap.{top}" in out, r.stdout

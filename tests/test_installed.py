"""bandit-router as a user installs it: from a wheel, into a virtualenv of its own, run from a
folder that is not the checkout, with no dev extras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a user's install lacks: the dev and optional extras, and the checkout's own folders.
NOT_INSTALLED = (
    "matplotlib",
    "mabwiser",
    "httpx",
    "httpx2",
    "pytest",
    "hypothesis",
    "selenium",
    "openai",
    "tests",
    "simulations",
    "benchmarks",
    "clients",
)
IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
for name in sys.argv[1:]:
    sys.modules[name] = None  # importing it raises ImportError, as where it is not installed
import bandit_router
names = [m.name for m in pkgutil.walk_packages(bandit_router.__path__, "bandit_router.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_module_imports_without_the_extras_and_runs_nothing(tmp_path: Path) -> None:
    """Every module of the package, imported in a fresh interpreter outside the checkout with
    the dev extras and the checkout's folders unimportable. ``bandit_router.cli.__main__`` ran
    the command line when imported (by pkgutil.walk_packages here): usage error, exit 2."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE, *NOT_INSTALLED],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert int(done.stdout) >= 70  # every module was found (73 files, __init__s included)

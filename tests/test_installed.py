"""bandit-router as a user installs it: from a wheel, into a virtualenv of its own, run from a
folder that is not the checkout, with no dev extras."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import _free_port, healthy, wait_until

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SLICE = ROOT / "examples" / "mmlu_pro_llama2_slice.jsonl"
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


# The wheel built and installed as README's "Install without the checkout" says, once for the
# tests below: about 25 s (build 5 s, install 15 s from a local index), more from a remote one.
INSTALL_SECTION = "## Install without the checkout"
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".*_cache",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    "data",
    "out",
    ".bench",
)
CHECKOUT_PATHS = ("simulations/", "tests/", "benchmarks/", "clients/", ".venv")


def install_block() -> list[str]:
    """The lines of the install section's first sh block, as a user types them."""
    text = README.read_text()
    section = text[text.index(INSTALL_SECTION) :]
    section = section[: section.index("\n## ", 1)]
    block = re.search(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block is not None, "no sh block in README's install section"
    return [line for line in block.group(1).splitlines() if line.strip()]


@dataclass(frozen=True)
class Installed:
    home: Path  # the user's home: the venv, the run folder
    checkout: Path  # a copy of the checkout, where the wheel was built
    venv: Path
    run: Path  # the folder the README's block ends in, where `serve` runs
    serve: list[str]  # the block's last line: the service's command
    env: dict[str, str]

    def command(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "bandit-router"), *args],
            cwd=self.run,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """README's install block run as written, from a copy of the checkout (so that the build
    leaves nothing in this one), with HOME a temporary folder and `python3` this interpreter."""
    base = tmp_path_factory.mktemp("installed")
    home, checkout, bin_dir = base / "home", base / "checkout", base / "bin"
    home.mkdir()
    bin_dir.mkdir()
    shutil.copytree(ROOT, checkout, ignore=COPY_IGNORE)
    (bin_dir / "python3").symlink_to(sys.executable)
    # An earlier build's copy of a module removed since: setuptools packs what build/lib holds.
    stale = checkout / "build" / "lib" / "bandit_router" / "removed_since.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("REMOVED = True\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BANDIT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    # pip keeps its cache where it did: the temporary HOME would download everything again.
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    *setup, serve = install_block()
    script = "set -e\n" + "\n".join(setup) + "\npwd\n"
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = Path(done.stdout.splitlines()[-1])
    words = [f"{home}{w[1:]}" if w.startswith("~/") else w for w in shlex.split(serve)]
    return Installed(home, checkout, home / "bandit-router", run, words, env)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_says_what_it_is(installed: Installed) -> None:
    """Name, version, Python, licence, entry point and README as the long description; every
    module and static file of the package in it, and nothing of the checkout besides."""
    (wheel,) = (installed.checkout / "dist").glob("*.whl")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert wheel.name == f"bandit_router-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"bandit_router-{project['version']}.dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        licence = z.read(f"{info}/licenses/LICENSE").decode()
    headers, _, description = metadata.partition("\n\n")
    fields = [tuple(line.split(": ", 1)) for line in headers.splitlines()]
    assert ("Name", "bandit-router") in fields
    assert ("Version", project["version"]) in fields
    assert ("Requires-Python", ">=3.11") in fields
    assert ("License-Expression", "Apache-2.0") in fields
    assert ("License-File", "LICENSE") in fields
    assert ("Description-Content-Type", "text/markdown") in fields
    assert licence == (ROOT / "LICENSE").read_text()
    assert description.strip() == README.read_text().strip()
    assert "bandit-router = bandit_router.cli.main:main" in entry_points
    package = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "bandit_router").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert package <= names
    assert {n for n in names if not n.startswith(info)} == package


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_install_brings_what_the_service_imports_and_no_extra(installed: Installed) -> None:
    python = str(installed.venv / "bin" / "python")
    done = subprocess.run(
        [python, "-c", IMPORT_EVERY_MODULE],
        cwd=installed.run,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 70
    where = subprocess.run(
        [
            python,
            "-c",
            "import bandit_router, importlib.util as u; print(bandit_router.__file__);"
            "print([n for n in ('matplotlib', 'mabwiser', 'pytest') if u.find_spec(n)])",
        ],
        cwd=installed.run,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    assert Path(where[0]).is_relative_to(installed.venv)  # the installed copy, not the checkout
    assert where[1] == "[]"  # no extra came with it


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_command_helps_and_names_no_file_of_the_checkout(installed: Installed) -> None:
    """`simulate --help` sent its user to simulations/README.md, which is not in the wheel."""
    done = installed.command("--help")
    assert done.returncode == 0, done.stderr
    commands = re.search(r"\{([a-z,]+)\}", done.stdout)
    assert commands is not None
    names = commands.group(1).split(",")
    assert len(names) == 11
    for name in names:
        done = installed.command(name, "--help")
        assert done.returncode == 0, (name, done.stderr)
        assert [p for p in CHECKOUT_PATHS if p in done.stdout] == [], (name, done.stdout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_simulate_without_the_extras_says_what_to_install(installed: Installed) -> None:
    replay, arms = str(SLICE), str(SLICE.with_suffix(".arms.json"))
    base = ["simulate", replay, "--arms", arms, "--limit", "50", "--no-skyline"]
    done = installed.command(*base, "--policies", "mabwiser")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "policy mabwiser needs the MABWiser package" in done.stderr
    done = installed.command(*base, "--policies", "random", "--out", "sim")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "no plots: matplotlib is missing" in done.stderr
    assert "pip install 'bandit-router[sim]'" in done.stderr
    assert (installed.run / "sim" / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_service_runs_from_its_folder_with_everything_it_serves(installed: Installed) -> None:
    """The block's `serve`: the embedded Redis in ./data of its folder, choose and reward, the
    dashboard and its files, /docs and its assets, /metrics; `status` from the same folder
    reads the same Redis."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = installed.home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*installed.serve, "--port", str(port)],
            cwd=installed.run,
            env=installed.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: healthy(base) or proc.poll() is not None, 60, "the service")
        assert proc.poll() is None, log.read_text()
        assert f"embedded Redis in {installed.run / 'data'}" in log.read_text()
        with httpx.Client(base_url=base) as http:
            d = http.post("/choose", json={"query": "merge two sorted lists"}).json()
            r = http.post("/reward", json={"event_id": d["event_id"], "accuracy": 1})
            assert r.status_code == 200, r.text
            for path in ("/dashboard", "/docs", "/metrics", "/stats", "/openapi.json"):
                assert http.get(path).status_code == 200, path
            page = http.get("/dashboard").text + http.get("/docs").text
            assets = re.findall(r'(?:src|href)="(/?(?:static|docs-assets)/[^"]+)"', page)
            assert len(assets) >= 4, page
            for asset in assets:
                got = http.get("/" + asset.lstrip("/"))
                assert got.status_code == 200 and got.content, asset
        done = installed.command("status", "--json")
        assert done.returncode == 0, done.stderr
        assert "held no data" not in done.stderr
        assert json.loads(done.stdout)["decisions"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert (installed.run / "data" / "bandit-router.rdb").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_app_type_checks_against_the_installed_package(installed: Installed) -> None:
    """README's gateway example imports bandit_router.sim.upstream.grade into the app: with no
    py.typed marker in the wheel, mypy skipped the package ("module is installed, but missing
    library stubs or py.typed marker")."""
    app = installed.home / "app.py"
    app.write_text(
        "from bandit_router.sim.upstream import grade\n\n\n"
        "def score(answer: str) -> float | None:\n"
        '    return grade(answer, "mmlu-1", "Which is it?")\n'
    )
    python = ("--python-executable", str(installed.venv / "bin" / "python"))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(app), *python],
        cwd=installed.home,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

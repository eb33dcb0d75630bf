"""The README tells the truth: its settings table lists every setting and nothing else, its
shell examples start with commands that exist, and the sample simulation runs as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from bandit_router.cli.main import build_parser
from bandit_router.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `BANDIT_([A-Z_]+)` \|", README.read_text(), re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}


ROOT = README.parent
# The venv running the suite is the one `make setup` made: the README's `.venv/bin`.
VENV_BIN = Path(sys.executable).parent


def _sh_commands() -> list[list[str]]:
    """Every command of the README's ```sh blocks, split as the shell would (comments dropped,
    continued lines joined)."""
    text = README.read_text()
    # "Install without the checkout" runs outside the checkout and its venv:
    # tests/test_installed.py runs its commands as written.
    start = text.index("## Install without the checkout")
    text = text[:start] + text[text.index("\n## ", start + 1) :]
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    commands = []
    for block in blocks:
        pending = ""  # a quoted value that goes on over several lines
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # no closing quotation yet
                continue
            pending = ""
            if words:
                commands.append(words)
        assert not pending, f"unclosed quotation in a README sh block: {pending!r}"
    return commands


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.MULTILINE))


def test_every_shell_example_starts_with_a_command_that_exists() -> None:
    """As written, from the repository's root, in a shell whose PATH has no venv on it."""
    commands = _sh_commands()
    assert len(commands) >= 8
    system_path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN
    )
    for words in commands:
        while re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]) and len(words) > 1:
            words = words[1:]  # VAR=value before a command: the shell's environment for it
        first = words[0]
        if first in ("export", "cd", ".", "source", "unset"):  # shell builtins
            continue
        if first == "make":
            targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert set(targets) <= _make_targets(), words
        elif first.startswith(".venv/bin/"):
            assert (VENV_BIN / first.removeprefix(".venv/bin/")).is_file(), words
            if first == ".venv/bin/bandit-router":
                args = words[1:-1] if words[-1] == "&" else words[1:]  # & runs it in background
                build_parser().parse_args(args)  # exits 2 on an unknown command or option
        elif "/" in first:
            assert (ROOT / first).is_file(), words
        else:
            assert not (VENV_BIN / first).exists(), f"{first} is only on PATH in the venv: {words}"
            assert shutil.which(first, path=system_path), words


def test_the_sample_simulation_runs_as_written(tmp_path: Path) -> None:
    """The README's first simulate example, on the replay file shipped in examples/."""
    (words,) = [w for w in _sh_commands() if w[1:2] == ["simulate"] and "examples/" in w[2]]
    assert (ROOT / words[2]).is_file()
    out = words.index("--out") + 1
    words[out] = str(tmp_path / "sample")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_")}
    words[0] = str(VENV_BIN / "bandit-router")
    done = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "best fixed arm" in done.stdout
    for name in ("summary.json", "steps.csv", "reward.png", "arm_share.png"):
        assert (tmp_path / "sample" / name).stat().st_size > 0, name


def test_the_architecture_names_every_module() -> None:
    """README's Architecture lists the package's modules, each in its subpackage's bullet: six
    modules (throttle, arm_level, moments, train, descriptors, offloop) went unnamed."""
    text = README.read_text()
    section = text[
        text.index("- `bandit_router/`, in layers") : text.index("- Redis keys, all under")
    ]
    bullets = {
        b.split("`", 2)[1].rstrip("/"): b for b in re.split(r"\n  - ", section)[1:] if "`" in b
    }
    package = ROOT / "bandit_router"
    unnamed = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            continue
        if len(parts) == 1:  # a core or settings module: named anywhere in the list
            named = f"`{parts[0]}`" in section
        else:
            bullet = bullets.get(parts[0], "")
            if parts[0] == "cli":  # named in the sim bullet's tail
                bullet = section[section.index("`cli/`") :]
            named = f"`{parts[-1]}`" in bullet
        if not named:
            unnamed.append("/".join(parts))
    assert unnamed == []

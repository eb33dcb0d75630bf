"""The README's settings table lists every setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from bandit_router.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `BANDIT_([A-Z_]+)` \|", README.read_text(), re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}

"""What the operators' commands read: a file or an argument they cannot use is refused in a
line naming it, with a non-zero exit, before any work and without a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bandit_router.cli.main import main
from bandit_router.offline.export import to_dsjson
from tests.test_export import ARMS, EVENT


def test_evaluate_refuses_a_fixed_arm_the_log_never_offered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt arm was estimated as the first arm of each event, under the misspelt name."""
    path = tmp_path / "log.dsjson"
    path.write_text(json.dumps(to_dsjson(EVENT, ARMS)) + "\n")
    assert main(["evaluate", str(path), "--policies", "fixed:14B"]) == 2
    assert "fixed:14B: arm '14B' is in no event of the log; valid: 4b, 14b, new" in (
        capsys.readouterr().err
    )
    assert main(["evaluate", str(path), "--policies", "fixed:14b,fixed:arm=new"]) == 0

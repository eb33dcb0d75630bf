"""Progress: a bar redrawn in place on a terminal, nothing on a pipe or a file."""

from __future__ import annotations

import io
import os
import pty

from bandit_router.progress import Progress


def test_bar_on_a_real_terminal() -> None:
    master, slave = pty.openpty()
    try:
        with (
            os.fdopen(slave, "w") as terminal,
            Progress("replaying", total=200, unit="events", stream=terminal) as bar,
        ):
            for done in range(1, 201):
                bar.update(done)
        out = _read_all(master).decode()
    finally:
        os.close(master)
    assert "\rreplaying [" in out
    assert out.rstrip().endswith("s") and "100% 200/200 events" in out


def _read_all(master: int) -> bytes:
    """Everything the closed terminal was sent: one read may return only its first write."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # Linux: EIO once the other end is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("replaying", total=10, stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


def test_render() -> None:
    bar = Progress("export", total=4, unit="events", stream=io.StringIO())
    bar.advance()
    assert bar.render(1.25) == f"export [{'#' * 8}{'-' * 22}]  25% 1/4 events 1.2s"
    count = Progress("replaying", unit="events", stream=io.StringIO())
    count.update(1200)
    assert count.render(0.5) == "replaying: 1200 events 0.5s"
    phase = Progress("estimating", stream=io.StringIO())
    assert phase.render(2.0) == "estimating: 2.0s"

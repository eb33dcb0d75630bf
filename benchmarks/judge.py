"""What a challenger judgement costs at a full window: this tree against another commit's
(``--baseline``), alternated, each in a process of its own.

Each process fills every challenger's window with ``--rows`` random rows (``Window.loads``), then
``--judgements`` times: adds ``JUDGE_EVERY`` rows to each window (``Window.add``, as
``Bench.observe`` does) and times ``Bench.judge()``, which scores every window. The adds are timed
apart, per row and challenger, and so is ``Window.loads`` (what a restore from Redis costs).

    .venv/bin/python -m benchmarks.judge [--baseline COMMIT] [--reps 3] [--judgements 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10_000, 100_000, 1_000_000)
CHALLENGERS = (1, 3)
SPECS = ("linucb", "egreedy", "softmax")  # beside the champion, squarecb


def _worker(rows: int, challengers: int, judgements: int) -> dict[str, float | str]:
    """Measure in this process with whatever ``bandit_router`` it imports."""
    import bandit_router
    from bandit_router.policies.registry import parse_policy_spec
    from bandit_router.service.challengers import JUDGE_EVERY, Bench, Window
    from bandit_router.settings import Settings

    settings = Settings(challenger_window=rows, promote_min_events=1000)
    specs = [parse_policy_spec(s) for s in SPECS[:challengers]]
    bench = Bench(parse_policy_spec("squarecb"), specs, settings, seed=0)
    rng = np.random.default_rng(0)

    def random_rows(n: int) -> npt.NDArray[np.float64]:
        t = rng.random(n) * (rng.random(n) < 0.7)  # the target often gives the arm nothing
        p = 0.05 + 0.95 * rng.random(n)
        return np.column_stack([t, p, rng.random(n), rng.random(n), rng.random(n)])

    loaded = []
    for c in bench.challengers.values():
        data = random_rows(rows).astype("<f8").tobytes()
        start = time.perf_counter()
        c.window = Window.loads(rows, data)
        loaded.append(time.perf_counter() - start)
    judged, added = [], []
    for _ in range(judgements):
        batch = [tuple(map(float, row)) for row in random_rows(JUDGE_EVERY)]
        start = time.perf_counter()
        for c in bench.challengers.values():
            for row in batch:
                c.window.add(row)  # type: ignore[arg-type]
        added.append((time.perf_counter() - start) / (len(batch) * challengers))
        start = time.perf_counter()
        bench.judge()
        judged.append(time.perf_counter() - start)
    return {
        "code": str(Path(bandit_router.__file__).parent.parent),
        "judge_ms": statistics.median(judged) * 1e3,
        "add_us": statistics.median(added) * 1e6,
        "loads_ms": statistics.median(loaded) * 1e3,
    }


def _tree(commit: str, into: Path) -> None:
    """``bandit_router`` at ``commit``, extracted under ``into``."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "bandit_router"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def _run(code: Path, rows: int, challengers: int, judgements: int) -> dict[str, float | str]:
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{ROOT}"}
    args = ["--worker", "--rows", str(rows), "--challengers", str(challengers)]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.judge", *args, "--judgements", str(judgements)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=code,  # python -m puts the working directory first on the path
    ).stdout
    result: dict[str, float | str] = json.loads(out)
    if Path(str(result["code"])).resolve() != code.resolve():
        raise RuntimeError(f"the worker imported {result['code']}, not {code}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="9f3bde1", help="the commit measured as 'before'")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--judgements", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--challengers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.rows, args.challengers, args.judgements)))
        return
    with tempfile.TemporaryDirectory() as directory:
        tree = Path(directory)
        _tree(args.baseline, tree)
        codes = {"before": tree, "after": ROOT}
        took: dict[tuple[int, int, str], list[dict[str, float | str]]] = {}
        for rep in range(args.reps):
            for rows in SIZES:
                for n in CHALLENGERS:
                    order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
                    for name in order:
                        found = _run(codes[name], rows, n, args.judgements)
                        took.setdefault((rows, n, name), []).append(found)
                        print(
                            f"rep {rep + 1}: {rows:>9,} rows, {n} challenger(s), {name:<6}: "
                            f"judge {found['judge_ms']:8.3f} ms, add {found['add_us']:.2f} us a "
                            f"row, loads {found['loads_ms']:.1f} ms a window",
                            file=sys.stderr,
                        )
    print(
        f"{args.reps} repetitions of {args.judgements} judgements; before = {args.baseline}; "
        "medians over the repetitions (min - max)\n"
    )
    print(
        "| window rows | challengers | judge before (ms) | judge after (ms) | before / after "
        "| add a row, before / after (us) | `Window.loads`, before / after (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for rows in SIZES:
        for n in CHALLENGERS:

            def value(name: str, key: str, rows: int = rows, n: int = n) -> list[float]:
                return [float(r[key]) for r in took[(rows, n, name)]]

            before, after = value("before", "judge_ms"), value("after", "judge_ms")
            ratio = statistics.median(before) / statistics.median(after)
            adds = f"{_mid(value('before', 'add_us'))} / {_mid(value('after', 'add_us'))}"
            loads = f"{_mid(value('before', 'loads_ms'))} / {_mid(value('after', 'loads_ms'))}"
            print(
                f"| {rows:,} | {n} | {_spread(before)} | {_spread(after)} | {ratio:,.1f} "
                f"| {adds} | {loads} |"
            )


def _mid(values: list[float]) -> str:
    mid = statistics.median(values)
    return f"{mid:.3g}" if mid < 100 else f"{mid:,.0f}"


def _spread(values: list[float]) -> str:
    return f"{_mid(values)} ({_mid([min(values)])} - {_mid([max(values)])})"


if __name__ == "__main__":
    main()

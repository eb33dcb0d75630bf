"""An OpenAI SDK app on the gateway: the router chooses the model, the app grades the answer.

The app is an ordinary ``openai`` client whose ``base_url`` points at bandit-router. Each answer
comes back with the event's id in the ``x-bandit-event-id`` header; the gateway has recorded
the call's latency and cost already, and the app adds the one part only it knows, whether the
answer was right, with ``POST /reward``. Here the questions are a replay file's MMLU-Pro rows
and the grader is ``bandit_router.sim.upstream.grade``, which knows the replay upstream's key.

    bandit-router upstream ../shared/data/mmlu_pro_llama2.jsonl \\
        --arms ../shared/data/mmlu_pro_llama2.arms.json --port 8081 --speed 10 &
    BANDIT_ARMS="$(python clients/openai_gateway.py --arms-for http://127.0.0.1:8081/v1 \\
        ../shared/data/mmlu_pro_llama2.arms.json)" BANDIT_LATENCY_BUDGET_MS=200 \\
        BANDIT_REWARD_WEIGHTS=accuracy=0.4,latency=0.3,cost=0.3 bandit-router serve &
    python clients/openai_gateway.py ../shared/data/mmlu_pro_llama2.jsonl --limit 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from bandit_router.sim.upstream import grade


@dataclass(frozen=True, slots=True)
class Result:
    arm: str
    accuracy: float
    reward: float | None
    streamed: bool
    latency_ms: float | None  # as the gateway measured it


async def ask(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, row: dict[str, Any], stream: bool
) -> Result:
    """One question through the gateway, graded, and the grade reported as the event's accuracy."""
    messages: Any = [{"role": "user", "content": row["query"]}]
    metadata = {k: str(v) for k, v in (row.get("context") or {}).items()}
    if stream:
        async with client.chat.completions.with_streaming_response.create(
            model="auto", messages=messages, metadata=metadata, stream=True
        ) as response:
            headers = response.headers
            text = "".join(
                [chunk.choices[0].delta.content or "" async for chunk in await response.parse()]
            )
    else:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=messages, metadata=metadata
        )
        headers = raw.headers
        text = raw.parse().choices[0].message.content or ""
    accuracy = grade(text, str(row["id"]), row["query"]) or 0.0
    reply = await http.post(
        "/reward", json={"event_id": headers["x-bandit-event-id"], "accuracy": accuracy}
    )
    reply.raise_for_status()
    done = reply.json()
    latency = done["parts"].get("latency_ms")
    return Result(headers["x-bandit-arm"], accuracy, done["reward"], stream, latency)


async def run(
    base: str, rows: Sequence[dict[str, Any]], concurrency: int = 4, api_key: str = "none"
) -> list[Result]:
    """Every row through the gateway at ``base``, ``concurrency`` at a time, every other one
    streamed; the results in the rows' order."""
    results: list[Result | None] = [None] * len(rows)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(rows)):
        queue.put_nowait(i)
    headers = {"authorization": f"Bearer {api_key}"}
    async with (
        openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0) as client,
        httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http,
    ):

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                results[i] = await ask(client, http, rows[i], stream=i % 2 == 1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


def arms_for(base_url: str, arms_file: Path) -> str:
    """BANDIT_ARMS for a replay upstream at ``base_url`` serving every arm of ``arms_file``."""
    arms = json.loads(arms_file.read_text())["arms"]
    return json.dumps(
        [
            {
                "name": a["name"],
                "usd_per_mtok": a.get("usd_per_mtok"),
                "upstream": {"base_url": base_url, "model": a["name"]},
            }
            for a in arms
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("replay", nargs="?", help="replay file whose rows are the questions")
    parser.add_argument("--url", default=os.environ.get("BANDIT_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--limit", type=int, default=1000, help="questions to ask")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--arms-for", nargs=2, metavar=("BASE_URL", "ARMS_FILE"), help="print BANDIT_ARMS"
    )
    args = parser.parse_args(argv)
    if args.arms_for:
        print(arms_for(args.arms_for[0], Path(args.arms_for[1])))
        return 0
    if not args.replay:
        parser.error("a replay file is needed")
    with open(args.replay, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(args.limit), f, strict=False)]
    key = os.environ.get("BANDIT_API_KEY", "none")
    results = asyncio.run(run(args.url, rows, args.concurrency, key))
    rewards = [r.reward for r in results if r.reward is not None]
    shares = {a: sum(r.arm == a for r in results) / len(results) for a in {r.arm for r in results}}
    accuracy = sum(r.accuracy for r in results) / len(results)
    print(
        f"{len(results)} questions: accuracy {accuracy:.3f}, "
        f"mean reward {sum(rewards) / len(rewards):.4f}, "
        f"arms {', '.join(f'{a} {s:.2f}' for a, s in sorted(shares.items()))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loaded by the soak's ``serve`` processes only (its directory is put first on their
PYTHONPATH): when SOAK_PROBE_DIR is set, a thread writes every SOAK_PROBE_S seconds, to
``objs.PID.jsonl`` there, the asyncio tasks alive (by coroutine) and the most numerous types
of objects the garbage collector tracks, so the soak can see what grows in each worker."""

from __future__ import annotations

import os

if os.environ.get("SOAK_PROBE_DIR"):
    import asyncio
    import collections
    import gc
    import json
    import threading
    import time

    def _probe() -> None:
        path = os.path.join(os.environ["SOAK_PROBE_DIR"], f"objs.{os.getpid()}.jsonl")
        every = float(os.environ.get("SOAK_PROBE_S", "60"))
        while True:
            time.sleep(every)
            types: collections.Counter[str] = collections.Counter()
            tasks: collections.Counter[str] = collections.Counter()
            for o in gc.get_objects():
                types[type(o).__qualname__] += 1
                if isinstance(o, asyncio.Task) and not o.done():
                    coro = o.get_coro()
                    tasks[getattr(coro, "__qualname__", type(coro).__name__)] += 1
            line = {
                "t": time.time(),
                "tasks": sum(tasks.values()),
                "by_coro": dict(tasks.most_common(15)),
                "types": dict(types.most_common(40)),
            }
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")

    threading.Thread(target=_probe, name="soak-probe", daemon=True).start()

"""A TCP proxy between a client and Redis that counts the client's writes: the round trips a
call makes, each a write and a wait for its replies (a pipeline is one write). With ``delay_s``,
each direction's data arrives that much later, in order: Redis across a network."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class Far:
    def __init__(self, target_url: str, delay_s: float = 0.0) -> None:
        target = urlsplit(target_url)
        self.host, self.port = target.hostname or "127.0.0.1", target.port or 6379
        self.delay_s = delay_s
        self.writes = 0  # the client's writes that reached the proxy, every connection's
        self.listen_port = 0

    def url(self, target_url: str) -> str:
        """``target_url`` through this proxy."""
        target = urlsplit(target_url)
        return target._replace(netloc=f"127.0.0.1:{self.listen_port}").geturl()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counted: bool
    ) -> None:
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await due.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(1 << 16):
                if counted:
                    self.writes += 1
                due.put_nowait((time.monotonic() + self.delay_s, data))
        finally:
            due.put_nowait((0.0, b""))
            with contextlib.suppress(OSError):
                await delivering
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Far]:
        handlers: set[asyncio.Task[object]] = set()
        writers: list[asyncio.StreamWriter] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            writers.append(writer)
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            writers.append(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, True),
                self._pipe(up_reader, writer, False),
                return_exceptions=True,
            )

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.listen_port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

"""uvicorn's httptools protocol, bringing plain ``POST /choose`` and ``/reward`` to the fast path.

uvicorn's own per-request work around an ASGI app cost more CPU than a /choose handler's Redis
write: a scope dict, a ``RequestResponseCycle`` with its event, the ASGI receive and send
messages, and a response written in two pieces (status and headers, then body), which is two
socket sends here and two wake-ups for the client. On a raw ASGI app that answers fixed bytes,
uvicorn spent 53-58 us a request, a protocol that answers them itself 14-15 us.

``HttpProtocol`` is uvicorn's ``HttpToolsProtocol`` (httptools' parser, keep-alive, pipelining,
timeouts, graceful shutdown) with one change: a request that ``FastPath.route`` takes once its
headers are in (an HTTP/1.1 ``POST`` to exactly ``/choose`` or ``/reward`` with a JSON content
type, a declared length within the limit and, when keys are set, a valid key), on a connection
with no other request in progress, is answered by ``FastPath.answer`` in one write. Whatever
``answer`` declines (bad JSON, a body it is unsure of) runs through the ASGI app as uvicorn would
have run it, body included, so FastAPI answers its errors; so does every other request.

It leans on ``HttpToolsProtocol``'s attributes (the parser, ``cycle``, ``pipeline``, ``flow``),
which have been stable across uvicorn's releases but are not its public API:
``tests/test_protocol.py`` checks this class against the uvicorn installed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr

from bandit_router.fastpath import FastPath

if TYPE_CHECKING:
    from bandit_router.fastpath import Route

_JSON = b"content-type: application/json\r\n"
_CLOSE = b"connection: close\r\n"


class _Set:
    """What uvicorn's connection_lost sets on the request in progress: nothing waits on it."""

    def set(self) -> None:
        pass


class _Answering:
    """A fast request in progress. It stands where uvicorn keeps its ``RequestResponseCycle``,
    so a pipelined request behind it waits in uvicorn's queue until this one has answered."""

    message_event = _Set()

    def __init__(self, route: Route, url: bytes, scope: Any, keep_alive: bool) -> None:
        self.route = route
        self.url = url
        self.scope = scope
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.disconnected = False
        self.response_complete = False


def _fast_path(app: Any) -> FastPath | None:
    """The app's ``FastPath``, found through the middleware uvicorn wraps around the app."""
    for _ in range(8):
        found = getattr(app, "fast_path", None)
        if isinstance(found, FastPath):
            return found
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class HttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol``, answering the requests ``FastPath`` takes in a single write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_path = _fast_path(self.app)
        self.answering: _Answering | None = None  # the fast request being read

    def on_headers_complete(self) -> None:
        route = self._route()
        if route is None:
            self.answering = None
            super().on_headers_complete()
            return
        self.answering = _Answering(route, self.url, self.scope, self.parser.should_keep_alive())
        self.cycle = self.answering  # type: ignore[assignment]

    def _route(self) -> Route | None:
        if self.fast_path is None or (self.cycle is not None and not self.cycle.response_complete):
            return None  # another request is in progress: uvicorn queues this one behind it
        parser = self.parser
        if (
            parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or self.expect_100_continue
            or self.root_path
            or self.limit_concurrency is not None
        ):
            return None
        return self.fast_path.route(self.url, self.headers)

    def on_body(self, body: bytes) -> None:
        if self.answering is None:
            super().on_body(body)
        else:
            self.answering.body.append(body)

    def on_message_complete(self) -> None:
        if self.answering is None:
            super().on_message_complete()
            return
        answering, self.answering = self.answering, None
        task = self.loop.create_task(self._answer(answering))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, answering: _Answering) -> None:
        try:
            await self._respond(answering)
        except Exception:  # FastPath.answer answers its own errors; this is a bug of ours
            self.logger.exception("the fast path failed on POST %s", answering.url.decode())
            self.transport.close()  # the client sees the connection end, as uvicorn does

    async def _respond(self, answering: _Answering) -> None:
        assert self.fast_path is not None
        body = b"".join(answering.body)
        answer = await self.fast_path.answer(answering.route, body)
        if answer is None:
            await self._run_app(answering, body)
            return
        status, payload = answer
        if not answering.disconnected and not self.transport.is_closing():
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [_JSON, b"content-length: %d\r\n" % len(payload)]
            if not answering.keep_alive:
                head.append(_CLOSE)
            head += [b"\r\n", payload]
            self.transport.write(b"".join(head))
            if self.access_log:
                client = get_client_addr(answering.scope)
                path = answering.url.decode("ascii")  # exactly /choose or /reward: no query
                # uvicorn's own call: its AccessFormatter unpacks these five arguments
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d', client, "POST", path, "1.1", status
                )
            if not answering.keep_alive:
                self.transport.close()
        self._complete(answering)

    def _complete(self, answering: _Answering) -> None:
        answering.response_complete = True
        self.on_response_complete()  # the next pipelined request, or the keep-alive timer

    async def _run_app(self, answering: _Answering, body: bytes) -> None:
        """Hand the request to the ASGI app, with the body read already, as uvicorn would."""
        scope = answering.scope
        scope.update(method="POST", path=answering.url.decode("ascii"), raw_path=answering.url)
        scope["query_string"] = b""
        cycle = RequestResponseCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=answering.keep_alive,
            on_response=lambda: self._complete(answering),
        )
        cycle.body = bytearray(body)
        cycle.more_body = False
        cycle.disconnected = answering.disconnected
        cycle.message_event.set()
        await cycle.run_asgi(self.app)

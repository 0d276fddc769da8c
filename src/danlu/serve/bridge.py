"""The engine requests of one HTTP request, their token events carried from the engine thread to asyncio.

The engine calls back from its own thread; each callback is handed to the event loop with
call_soon_threadsafe into one queue, tagged with the choice it belongs to (a request's prompts times its
n). Whoever stops listening early (a client gone, a timeout, shutdown) cancels the engine requests, so
their slots free at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from danlu.errors import ConfigError, EngineFull
from danlu.serve.metrics import Metrics
from danlu.serve.protocol import APIError, EngineRequest

log = logging.getLogger(__name__)

# How often a non-streaming request checks whether its client is still there.
DISCONNECT_POLL_S = 0.5


class ClientGone(Exception):
    """The client closed its connection; its engine requests have been cancelled."""


@dataclass
class Choice:
    index: int
    prompt: EngineRequest
    handle: Any
    submitted: float
    first_token: float | None = None
    n_tokens: int = 0
    finished: bool = False


@dataclass(eq=False)  # hashed by identity: the server keeps a set of the live ones
class Generations:
    """Submits the choices of one HTTP request to the engine and streams their events."""

    engine: Any
    metrics: Metrics
    timeout_s: float
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    choices: list[Choice] = field(default_factory=list)
    cancel_reason: str | None = None

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._deadline = time.monotonic() + self.timeout_s

    def submit(self, requests: list[EngineRequest]) -> None:
        """Every choice of every prompt, or none: a full queue is a 429, a prompt that cannot fit a 400."""
        try:
            for req in requests:
                for params in req.params:
                    index = len(self.choices)
                    handle = self.engine.submit(
                        req.prompt_ids, params, on_event=lambda ev, i=index: self._on_event(i, ev)
                    )
                    self.choices.append(Choice(index, req, handle, time.monotonic()))
        except EngineFull as e:
            self.cancel("queue full")
            raise APIError(429, f"{e}", type="rate_limit_error", code="queue_full") from None
        except ConfigError as e:
            self.cancel("rejected")
            raise APIError(400, str(e), param=str(e).split(":", 1)[0], code="invalid_value") from None
        self.metrics.prompt(sum(len(c.prompt.prompt_ids) for c in self.choices))

    def _on_event(self, index: int, event: Any) -> None:
        """Engine thread: count the token, then hand the event to the loop."""
        if event.token_id is not None:
            self.metrics.tokens(1)
        # a RuntimeError: the loop has closed (the server stopped), nobody is listening
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._queue.put_nowait, (index, event))

    def cancel(self, reason: str) -> None:
        """Cancel every unfinished choice (idempotent); the engine frees their slots."""
        if self.cancel_reason is None and any(not c.finished for c in self.choices):
            self.cancel_reason = reason
            self.metrics.cancel()
            log.info("cancelling %d engine request(s): %s", sum(not c.finished for c in self.choices), reason)
        for c in self.choices:
            if not c.finished:
                c.handle.cancel()

    async def events(
        self, is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[tuple[Choice, Any]]:
        """(choice, TokenEvent) until every choice has finished. Raises APIError on timeout or shutdown
        and ClientGone when is_disconnected (polled while waiting) says the client left."""
        while not all(c.finished for c in self.choices):
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self.cancel("timeout")
                raise APIError(
                    504,
                    f"the request ran past the server's timeout of {self.timeout_s:g} s",
                    type="timeout_error",
                    code="timeout",
                )
            wait = min(remaining, DISCONNECT_POLL_S) if is_disconnected else remaining
            try:
                index, event = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                if is_disconnected is not None and await is_disconnected():
                    self.cancel("client disconnected")
                    raise ClientGone() from None
                continue
            choice = self.choices[index]
            if event.token_id is not None:
                if choice.first_token is None:
                    choice.first_token = time.monotonic()
                    self.metrics.ttft(choice.first_token - choice.submitted)
                choice.n_tokens += 1
            if event.finished:
                choice.finished = True
                if event.finish_reason == "error":  # the engine logged why
                    self.cancel("engine error")
                    raise APIError(500, "the engine failed on this request", type="server_error")
                if event.finish_reason == "cancelled" and self.cancel_reason == "shutdown":
                    self.cancel("shutdown")
                    raise APIError(
                        503,
                        "the server is shutting down; retry on another replica or later",
                        type="server_error",
                        code="shutting_down",
                    )
            yield choice, event

    async def results(self, is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> list[Any]:
        """Every choice's Completion, once all have finished."""
        async for _ in self.events(is_disconnected):
            pass
        return await asyncio.to_thread(lambda: [c.handle.result(timeout=30) for c in self.choices])

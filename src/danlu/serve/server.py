"""Running the server: the engine on a model dir, uvicorn on a socket, graceful shutdown.

On SIGTERM or SIGINT the listening socket closes, /health and new requests answer 503, in-flight
requests get `grace_s` seconds to finish, and whatever is still running then is cancelled: a stream ends
with an error event and `data: [DONE]`, a plain request with a 503. Then the engine thread stops and
the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from danlu.errors import ConfigError
from danlu.infer.chat import is_chat_model
from danlu.infer.engine import Engine
from danlu.serve.app import ServerState, create_app
from danlu.serve.config import ServeConfig

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on a signal: new requests 503, in-flight ones cancelled after grace_s,
    and the signal not re-raised afterwards (the shutdown was the graceful one it asked for)."""

    def __init__(self, config: uvicorn.Config, state: ServerState, grace_s: float):
        super().__init__(config)
        self.state, self.grace_s = state, grace_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.state.draining:
            log.info(
                "%s: finishing %d in-flight request(s) within %g s",
                signal.Signals(sig).name,
                len(self.state.live),
                self.grace_s,
            )
            self.state.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self.grace_s, self.state.cancel_all, "shutdown")
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def serve(model_dir: str | Path, cfg: ServeConfig) -> None:
    """Serve the model dir until SIGTERM/SIGINT (blocking)."""
    sock = bind(cfg.host, cfg.port)
    try:
        engine = Engine.from_dir(
            model_dir, device=cfg.device, max_batch=cfg.max_batch, max_queue=cfg.max_queue
        )
    except BaseException:
        sock.close()
        raise
    name = cfg.served_model_name or engine.model_name
    state = ServerState(engine, name, cfg.api_key, cfg.timeout_s, transcript=not is_chat_model(model_dir))
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        lifespan="off",
        # uvicorn's own limit is only the backstop: the drain cancels what runs past grace_s first
        timeout_graceful_shutdown=int(cfg.grace_s) + 5,
    )
    engine.start()
    try:
        host, port = sock.getsockname()[:2]
        log.info(
            "serving %s (context %d tokens, max_batch %d, max_queue %d)%s",
            name,
            engine.max_len,
            cfg.max_batch,
            cfg.max_queue,
            ", API key required" if cfg.api_key else "",
        )
        log.info("listening on http://%s:%d", host, port)  # the real port when --port 0
        DrainingServer(config, state, cfg.grace_s).run(sockets=[sock])
    finally:
        sock.close()
        engine.shutdown(cancel=True, timeout=30)
        log.info("stopped")

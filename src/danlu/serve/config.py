"""danlu serve's settings (the CLI flags) and the check for its extra; importable without it."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import MissingExtra, check


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    # 0 picks a free port (the log line "listening on http://HOST:PORT" names it)
    port: int = 8000
    # clients must send "Authorization: Bearer API_KEY" to /v1/*; None: no key needed
    api_key: str | None = None
    # requests generated for together (KV-cache slots) and requests waiting beyond them (then 429)
    max_batch: int = 8
    max_queue: int = 64
    # seconds one request may take, queueing included (then 504, or an error event in a stream)
    timeout_s: float = 600.0
    # seconds in-flight requests get to finish after SIGTERM/SIGINT before they are cancelled
    grace_s: float = 10.0
    # the model's name in /v1/models and responses; None: the model dir's name
    served_model_name: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "port", "must be in [0, 65535] (0 picks a free port)")
        check(self.max_batch >= 1, "max_batch", "must be >= 1")
        check(self.max_queue >= 1, "max_queue", "must be >= 1")
        check(self.timeout_s > 0, "timeout", "must be > 0 seconds")
        check(self.grace_s >= 0, "grace", "must be >= 0 seconds")
        check(self.api_key is None or bool(self.api_key.strip()), "api_key", "must not be empty")
        check(self.served_model_name is None or bool(self.served_model_name), "served_model_name", "empty")


def require_extra() -> None:
    """MissingExtra naming the extra when fastapi or uvicorn is not installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingExtra("danlu serve needs fastapi and uvicorn: pip install 'danlu[serve]'") from None

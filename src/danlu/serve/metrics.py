"""The server's Prometheus metrics, rendered in the text exposition format (no client library needed).

Counters and the time-to-first-token histogram are kept here; queue depth and running requests are read
from the engine at scrape time. Tokens/s is the rate over the last WINDOW_S seconds (Prometheus users can
also take rate() of danlu_generation_tokens_total).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from typing import Any

WINDOW_S = 10.0
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Thread-safe: the event loop and the engine thread both record into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cancelled = 0
        self._ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self._ttft_sum = 0.0
        self._recent: deque[tuple[float, int]] = deque()

    def request_done(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def prompt(self, n_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += n_tokens

    def tokens(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.generation_tokens += n
            self._recent.append((now, n))
            self._trim(now)

    def ttft(self, seconds: float) -> None:
        with self._lock:
            self._ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
            self._ttft_sum += seconds

    def cancel(self) -> None:
        with self._lock:
            self.cancelled += 1

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / WINDOW_S

    def render(self, engine_stats: dict[str, Any]) -> str:
        """The /metrics page."""
        tps = self.tokens_per_second()
        with self._lock:
            lines = [
                *_metric("danlu_queue_depth", "gauge", "requests waiting for a slot in the engine"),
                f"danlu_queue_depth {engine_stats.get('queued', 0)}",
                *_metric("danlu_running_requests", "gauge", "requests the engine is generating for"),
                f"danlu_running_requests {engine_stats.get('running', 0)}",
                *_metric("danlu_prompt_tokens_total", "counter", "prompt tokens of accepted requests"),
                f"danlu_prompt_tokens_total {self.prompt_tokens}",
                *_metric("danlu_generation_tokens_total", "counter", "tokens generated"),
                f"danlu_generation_tokens_total {self.generation_tokens}",
                *_metric(
                    "danlu_tokens_per_second", "gauge", f"tokens generated per second, last {WINDOW_S:g} s"
                ),
                f"danlu_tokens_per_second {tps:.3f}",
                *_metric(
                    "danlu_cancelled_requests_total", "counter", "requests cancelled (disconnect, timeout)"
                ),
                f"danlu_cancelled_requests_total {self.cancelled}",
                *_metric("danlu_time_to_first_token_seconds", "histogram", "submit to first token"),
            ]
            cumulative = 0
            for bound, count in zip((*TTFT_BUCKETS, float("inf")), self._ttft_counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'danlu_time_to_first_token_seconds_bucket{{le="{le}"}} {cumulative}')
            lines.append(f"danlu_time_to_first_token_seconds_sum {self._ttft_sum:.6f}")
            lines.append(f"danlu_time_to_first_token_seconds_count {cumulative}")
            lines += _metric("danlu_requests_total", "counter", "HTTP requests by endpoint and status")
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'danlu_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
        return "\n".join(lines) + "\n"


def _metric(name: str, kind: str, help: str) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]

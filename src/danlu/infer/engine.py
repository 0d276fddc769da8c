"""The inference engine: continuous batching over a slot KV cache, with prefix caching and streaming.

Each request owns one row (slot) of a `KVCache` while it runs. A step admits queued requests into free
slots (prefill: one forward over the prompt tokens the slot does not already hold), then decodes one
token for every running request in a single forward over the slot range, each row at its own position.
Requests join and leave between steps; each stops on its own (stop ids, stop strings, max_tokens, the
context, a constraint, cancellation) and streams TokenEvents as it goes.

Prefix caching: a slot remembers the token ids its cache holds after its request ends. A new request
takes the free slot whose ids share the longest prefix with its prompt (a chat's next turn lands where
its earlier turns are), or copies a longer shared prefix (a common system prompt) from any slot, and
prefills only the rest.

Quantized or otherwise transformed weights plug in through `Engine.from_dir(..., transform=...)` (the
model directory's transform hook): the engine only calls the model's forward. `from_dir` also puts the
Linear weights it loaded in the decode layout (danlu.infer.layout); an engine on a caller's model leaves
its layout to the caller.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from danlu.errors import ConfigError, EngineFull
from danlu.infer.params import SamplingParams
from danlu.infer.processors import RowSampler, TokenChoice, greedy_plain
from danlu.infer.stops import TextStream
from danlu.model.kv_cache import KVCache

log = logging.getLogger(__name__)
_ids = itertools.count()


@dataclass
class TokenEvent:
    """One streamed step of one request: a new token (and the text it released), or the end."""

    request_id: str
    token_id: int | None
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended a "stop"


@dataclass
class Completion:
    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    # the first prompt token has no logprob (None); only when params.prompt_logprobs is set
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    cached_prompt_tokens: int = 0
    ttft_s: float = 0.0


@dataclass
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[TokenEvent], None] | None
    sampler: RowSampler
    text: TextStream | None  # None without a tokenizer: token ids only
    stop_ids: set[int]
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    slot: int = -1
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    prompt_top: list[list[tuple[int, float]] | None] | None = None
    cached: int = 0
    pending: int | None = None  # the chosen token not yet fed to the cache
    cancelled: bool = False
    completion: Completion | None = None
    done: threading.Event = field(default_factory=threading.Event)
    events: queue.SimpleQueue[TokenEvent] = field(default_factory=queue.SimpleQueue)


class RequestHandle:
    """What submit returns: cancel, wait for the result, or iterate the request's events."""

    def __init__(self, request: _Request):
        self._r = request
        self.id = request.id

    def cancel(self) -> None:
        self._r.cancelled = True

    def done(self) -> bool:
        return self._r.done.is_set()

    def result(self, timeout: float | None = None) -> Completion:
        if not self._r.done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        assert self._r.completion is not None
        return self._r.completion

    def stream(self, timeout: float | None = None) -> Iterator[TokenEvent]:
        """The request's events as they happen, through the final one (needs the engine's thread)."""
        while True:
            event = self._r.events.get(timeout=timeout)
            yield event
            if event.finished:
                return


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _stop_ids(tokenizer: Any) -> set[int]:
    if hasattr(tokenizer, "chat_stop_ids"):
        return set(tokenizer.chat_stop_ids())
    return {tokenizer.eos_id}


class Engine:
    """Continuous batching over `max_batch` cache slots of `max_len` positions each.

    max_len defaults to the model's context, lowered so that the preallocated slots fit in cache_gb.
    A step prefills new requests until max_prefill_tokens prompt tokens have run (at least one
    request), so a burst of arrivals does not stall the streams already running."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch: int = 8,
        max_queue: int = 256,
        max_len: int | None = None,
        prefix_cache: bool = True,
        model_name: str = "danlu",
        cache_gb: float = 4.0,
        max_prefill_tokens: int = 512,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ConfigError(f"need max_batch >= 1 and max_queue >= 1, got {max_batch}, {max_queue}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_batch, self.max_queue, self.prefix_cache = max_batch, max_queue, prefix_cache
        self.max_prefill_tokens = max_prefill_tokens
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        cfg = model.cfg
        per_token = (
            2 * cfg.n_layer * model.n_kv_head * (cfg.n_embd // cfg.n_head) * model.embed.weight.element_size()
        )
        fits = int(cache_gb * 2**30 / (per_token * max_batch))
        if max_len is None and fits < self.max_len:  # the slots are preallocated: keep them in budget
            log.info(
                "KV cache: %d positions per slot fit in %.1f GB (context %d)", fits, cache_gb, self.max_len
            )
            self.max_len = fits
        if self.max_len < 2:
            raise ConfigError(f"{cache_gb} GB holds no useful KV cache for {max_batch} slots; raise cache_gb")
        self.vocab_size = model.cfg.vocab_size
        self.device = model.embed.weight.device
        self.cache = KVCache.for_model(model, batch=max_batch, max_len=self.max_len)
        self.slot_ids: list[list[int]] = [[] for _ in range(max_batch)]  # what each slot's cache holds
        self.running: dict[int, _Request] = {}  # slot -> request
        self._queue: deque[_Request] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.counters = {"tokens_generated": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0, "steps": 0}
        self.finished: dict[str, int] = {}

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        device: str | torch.device | None = None,
        transform: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Engine:
        """An engine on a model dir; `transform` (e.g. a quantizer) is applied to the model on load, and
        its Linear weights take the decode layout (danlu.infer.layout: the model is the engine's own)."""
        from danlu.infer.layout import decode_layout
        from danlu.model_dir import load_model

        model, tokenizer, _ = load_model(model_dir, device or "cpu", transform=transform)
        decode_layout(model.requires_grad_(False))
        kwargs.setdefault("model_name", Path(model_dir).resolve().name)
        return cls(model, tokenizer, **kwargs)

    # --- requests ------------------------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        on_event: Callable[[TokenEvent], None] | None = None,
        request_id: str | None = None,
    ) -> RequestHandle:
        """Queue a request (thread-safe). Raises ConfigError for a prompt that cannot run and
        EngineFull when max_queue requests are already waiting."""
        params = params or SamplingParams()
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise ConfigError("the prompt is empty; give at least one token (e.g. encode with bos=True)")
        if any(not 0 <= i < self.vocab_size for i in prompt):
            raise ConfigError(f"prompt token ids must be in [0, {self.vocab_size})")
        if len(prompt) + params.max_tokens > self.max_len:
            raise ConfigError(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) exceeds the "
                f"context of {self.max_len} tokens; shorten the prompt or lower max_tokens"
            )
        stop = set(params.stop_token_ids)
        if not params.ignore_eos and self.tokenizer is not None:
            stop |= _stop_ids(self.tokenizer)
        if params.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer; give the engine one or use stop_token_ids")
        request = _Request(
            id=request_id or f"req-{next(_ids)}",
            prompt=prompt,
            params=params,
            on_event=on_event,
            sampler=RowSampler(params, prompt, self.vocab_size, self.tokenizer),
            text=TextStream(self.tokenizer, params.stop, params.skip_special_tokens)
            if self.tokenizer
            else None,
            stop_ids=stop,
        )
        with self._lock:
            if len(self._queue) >= self.max_queue:
                raise EngineFull(f"{len(self._queue)} requests are waiting (max_queue); try again later")
            self._queue.append(request)
            self._lock.notify()
        return RequestHandle(request)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Run prompts to completion (batched) and return their completions in order."""
        each = params if isinstance(params, Sequence) else [params or SamplingParams()] * len(prompts)
        handles = [self.submit(p, q) for p, q in zip(prompts, each, strict=True)]
        if self._thread is None:
            while not all(h.done() for h in handles):
                self.step()
        return [h.result() for h in handles]

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Iterator[TokenEvent]:
        """One request's events as they happen; without the background thread the caller's iteration
        drives the steps. Closing the iterator early cancels the request."""
        handle = self.submit(prompt_ids, params)
        events = handle._r.events
        try:
            while True:
                if self._thread is None and events.empty():
                    self.step()
                    continue
                event = events.get()
                yield event
                if event.finished:
                    return
        finally:
            if not handle.done():
                handle.cancel()
                while self._thread is None and not handle.done():
                    self.step()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
        return {
            "queued": queued,
            "running": len(self.running),
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            **self.counters,
            "finished": dict(self.finished),
        }

    # --- the background loop ---------------------------------------------------------------------------

    def start(self) -> Engine:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="danlu-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop the loop: finish what is queued and running first, or cancel it all (cancel=True)."""
        with self._lock:
            if cancel:
                for r in [*self._queue, *self.running.values()]:
                    r.cancelled = True
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self.running and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._queue and not self.running:
                    return
            try:
                self.step()
            except Exception as e:  # one bad step must not kill the server: fail what was running
                log.exception("engine step failed")
                for slot in list(self.running):
                    self._finish(self.running[slot], "error", f"{type(e).__name__}: {e}")

    # --- one step --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests into free slots (prefill), then decode one token for all running."""
        self.counters["steps"] += 1
        for slot in [s for s, r in self.running.items() if r.cancelled]:
            self._finish(self.running[slot], "cancelled")
        with self._lock:
            gone = [r for r in self._queue if r.cancelled]
            for r in gone:
                self._queue.remove(r)
        for r in gone:
            self._finish(r, "cancelled")
        self._admit()
        decoding = {s: r for s, r in self.running.items() if r.pending is not None}
        if decoding:
            self._decode(decoding)

    def _admit(self) -> None:
        budget = self.max_prefill_tokens
        while len(self.running) < self.max_batch and budget > 0:
            with self._lock:
                if not self._queue:
                    return
                request = self._queue.popleft()
            if request.cancelled:
                self._finish(request, "cancelled")
                continue
            slot = self._choose_slot(request)
            budget -= len(request.prompt) - len(self.slot_ids[slot])
            self._prefill(request, slot)

    def _choose_slot(self, request: _Request) -> int:
        free = [s for s in range(self.max_batch) if s not in self.running]
        if not self.prefix_cache or request.params.prompt_logprobs is not None:
            slot = free[0]
            self.cache.truncate(0, slice(slot, slot + 1))
            self.slot_ids[slot] = []
            return slot
        # the free slot with the longest shared prefix (the lowest index on ties keeps the range short)
        slot = max(free, key=lambda s: (_common_prefix(self.slot_ids[s], request.prompt), -s))
        keep = _common_prefix(self.slot_ids[slot], request.prompt)
        donor = max(range(self.max_batch), key=lambda s: _common_prefix(self.slot_ids[s], request.prompt))
        shared = _common_prefix(self.slot_ids[donor], request.prompt)
        if shared > keep:  # a longer prefix sits in another slot (a common system prompt): copy it
            keep = min(shared, len(request.prompt) - 1)
            self.cache.copy_prefix(donor, slot, keep)
        keep = min(keep, len(request.prompt) - 1)  # the last prompt token is always run, for its logits
        self.cache.truncate(keep, slice(slot, slot + 1))
        self.slot_ids[slot] = request.prompt[:keep]
        return slot

    def _prefill(self, request: _Request, slot: int) -> None:
        request.slot = slot
        self.running[slot] = request
        keep = len(self.slot_ids[slot])
        request.cached = keep
        rest = request.prompt[keep:]
        self.counters["prompt_tokens"] += len(request.prompt)
        self.counters["cached_prompt_tokens"] += keep
        ids = torch.tensor([rest], dtype=torch.long, device=self.device)
        logits = self.model(ids, self.cache, rows=slice(slot, slot + 1))[0]  # [T, V]
        self.slot_ids[slot] = list(request.prompt)
        if request.params.prompt_logprobs is not None:
            self._score_prompt(request, logits)
        if request.params.max_tokens == 0:
            self._finish(request, "length")
            return
        self._take(request, request.sampler.choose(logits[-1]))

    def _score_prompt(self, request: _Request, logits: torch.Tensor) -> None:
        """Log-probabilities of prompt tokens 1.. given those before them (the whole prompt was run)."""
        k = request.params.prompt_logprobs or 0
        logp = torch.log_softmax(logits[:-1].float(), dim=-1)
        target = torch.tensor(request.prompt[1:], device=logp.device)
        chosen = logp.gather(1, target[:, None])[:, 0].tolist()
        request.prompt_logprobs = [None, *chosen]
        tops: list[list[tuple[int, float]] | None] = [None]
        if k:
            values, ids = logp.topk(k, dim=-1)
            tops += [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        else:
            tops += [[] for _ in chosen]
        request.prompt_top = tops

    def _decode(self, decoding: dict[int, _Request]) -> None:
        hi = max(decoding) + 1
        tokens = torch.zeros(hi, 1, dtype=torch.long)
        idle = [s for s in range(hi) if s not in decoding]
        for s, r in decoding.items():
            tokens[s, 0] = r.pending
            self.slot_ids[s].append(r.pending)  # type: ignore[arg-type]
        # idle rows in the range run too; their write lands just past what their slot holds and is
        # forgotten right after (the cache never attends past a row's length)
        for s in idle:
            self.cache.truncate(min(len(self.slot_ids[s]), self.max_len - 1), slice(s, s + 1))
        logits = self.model(tokens.to(self.device), self.cache, rows=slice(0, hi))[:, -1]
        for s in idle:
            self.cache.truncate(len(self.slot_ids[s]), slice(s, s + 1))
        # plain greedy rows without logprobs are one argmax for all of them (no per-row state to keep)
        plain = [s for s, r in decoding.items() if greedy_plain(r.params) and r.params.logprobs is None]
        fast = dict(zip(plain, logits[plain].argmax(-1).tolist(), strict=True)) if plain else {}
        for s, r in decoding.items():
            self._take(r, TokenChoice(fast[s], 0.0, None) if s in fast else r.sampler.choose(logits[s]))

    def _take(self, request: _Request, choice: TokenChoice) -> None:
        """Handle the token chosen for a request: stop, or emit it and queue it for the next step."""
        if request.first_token is None:
            request.first_token = time.perf_counter()
        request.pending = None
        token = choice.token
        if token in request.stop_ids:
            self._finish(request, "stop", stop_reason=token)
            return
        request.out.append(token)
        self.counters["tokens_generated"] += 1
        if request.params.logprobs is not None:
            request.logprobs.append(choice.logprob)
            request.top.append(choice.top or [])
        text, stopped = request.text.push(token) if request.text is not None else ("", False)
        logprob = choice.logprob if request.params.logprobs is not None else None
        self._emit(request, TokenEvent(request.id, token, text, logprob, choice.top))
        if stopped:
            assert request.text is not None
            self._finish(request, "stop", stop_reason=request.text.stop_hit)
        elif request.sampler.finished_by_constraint:
            self._finish(request, "stop")
        elif len(request.out) >= request.params.max_tokens:
            self._finish(request, "length")
        elif len(request.prompt) + len(request.out) >= self.max_len:
            self._finish(request, "length")  # no room to feed the token back
        else:
            request.pending = token

    def _finish(
        self, request: _Request, reason: str, error: str | None = None, stop_reason: int | str | None = None
    ) -> None:
        if request.slot >= 0:
            self.running.pop(request.slot, None)
            # the slot's cache holds what was fed: the prompt and every output token but the last
            held = self.slot_ids[request.slot][: self.max_len - 1]
            self.slot_ids[request.slot] = held
            self.cache.truncate(len(held), slice(request.slot, request.slot + 1))
        shown = request.text.text if request.text is not None else ""
        tail = "" if reason == "stop" or request.text is None else request.text.finish()
        p = request.params
        request.completion = Completion(
            request_id=request.id,
            prompt_ids=request.prompt,
            token_ids=list(request.out),
            text=shown + tail,
            finish_reason=reason,
            logprobs=list(request.logprobs) if p.logprobs is not None else None,
            top_logprobs=list(request.top) if p.logprobs is not None else None,
            prompt_logprobs=request.prompt_logprobs,
            prompt_top_logprobs=request.prompt_top,
            cached_prompt_tokens=request.cached,
            ttft_s=(request.first_token or time.perf_counter()) - request.submitted,
        )
        self.finished[reason] = self.finished.get(reason, 0) + 1
        if error:
            log.warning("request %s failed: %s", request.id, error)
        end = TokenEvent(request.id, None, tail, finished=True, finish_reason=reason, stop_reason=stop_reason)
        self._emit(request, end)
        request.done.set()

    def _emit(self, request: _Request, event: TokenEvent) -> None:
        request.events.put(event)
        if request.on_event is None:
            return
        try:
            request.on_event(event)
        except Exception:  # a broken consumer (a closed connection) cancels its own request only
            log.exception("on_event of %s failed; cancelling it", request.id)
            request.cancelled = True

"""Paraphrase (back-translation's one-language form) through a chat model, as a pipeline block.

The block asks a model, under its chat template, to restate each picked document (`fraction` of them,
picked by a generator seeded by (seed, document id)), and rewrites the document or, with
keep_original, adds the paraphrase beside it (danlu.data.augment.Augmenter). data loads no models:
the run layer passes a `model_generator` factory, model_generator(model_dir, device, max_batch) ->
generate, with generate(user_messages, seeds, max_new_tokens, temperature) -> one Reply per message
(danlu data and danlu run pass danlu.run_paraphrase.model_dir_generator, on danlu's inference
engine). The factory is called on the first picked document, so validating a recipe loads nothing,
and once per worker process.

Each request samples with its own seed, drawn from the document's generator, so a document's
paraphrase does not depend on the others. With batch_size > 1, DocBlock.run hands the block that many
documents at a time (`prefetch`) and their requests run as one batch: faster on a GPU, but a reply may
then differ in rounding with the documents batched beside it; batch_size 1 (the default) gives the
same output whatever the shard layout.

A reply is not used (the document is left as it was, and counted) when it is empty, when the model
stopped at max_new_tokens rather than ending its turn (documents_cut_reply; drop_cut: false keeps
those), or when its length is outside length_ratio times the document's (documents_length_rejected:
a small model that talks about the task instead of doing it writes a reply of another length).
Documents over `max_input_chars` are left as they are (documents_too_long); with `time_limit_s`,
documents reached after that many seconds of this block's generation in a process are left as they
are (documents_past_time_limit), so the output then depends on speed: leave it unset for
reproducible output. meta["augmented"] holds the model directory's name, the seed and the number of
characters sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from danlu.data.augment import Augmenter, doc_rng
from danlu.data.sources import Document
from danlu.errors import ConfigError


class Reply(NamedTuple):
    text: str
    ended: bool  # the model ended its turn (not cut at max_new_tokens)


# generate(user_messages, seeds, max_new_tokens, temperature) -> one Reply per message
TextGenerator = Callable[[Sequence[str], Sequence[int], int, float], list[Reply]]
# model_generator(model_dir, device, max_batch) -> generate; module-level, so worker processes can
# receive it
ModelGenerator = Callable[[str, str, int], TextGenerator]

DEFAULT_PROMPT = (
    "Paraphrase the following text. Keep its meaning and its facts, use different words, and reply "
    "with the paraphrase only.\n\nText:\n{text}"
)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"paraphrase: {message}")


class ParaphraseAugmenter(Augmenter):
    """Pipeline block `paraphrase`: each picked document restated by a chat model."""

    name = "paraphrase"

    def __init__(
        self,
        model: str,
        fraction: float = 1.0,
        keep_original: bool = True,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        seed: int = 0,
        prompt: str = DEFAULT_PROMPT,
        max_input_chars: int = 2000,
        length_ratio: list[float] | None = None,
        drop_cut: bool = True,
        batch_size: int = 1,
        time_limit_s: float | None = None,
        device: str = "cpu",
        model_generator: ModelGenerator | None = None,
    ) -> None:
        super().__init__(fraction, keep_original, seed)
        _check(
            isinstance(model, str) and Path(model).expanduser().is_dir(),
            f"model {model!r} is not a model directory (e.g. runs/NAME/model)",
        )
        _check(
            isinstance(max_new_tokens, int) and max_new_tokens >= 1,
            f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}",
        )
        _check(
            isinstance(temperature, int | float) and temperature >= 0,
            f"temperature must be >= 0 (0 is greedy), got {temperature!r}",
        )
        _check(
            isinstance(prompt, str) and "{text}" in prompt,
            "prompt must contain {text}, where the document goes",
        )
        _check(
            isinstance(max_input_chars, int) and max_input_chars >= 1,
            f"max_input_chars must be an integer >= 1, got {max_input_chars!r}",
        )
        ratio = [0.5, 2.0] if length_ratio is None else length_ratio
        _check(
            isinstance(ratio, list) and len(ratio) == 2 and 0 <= ratio[0] <= ratio[1],
            f"length_ratio must be [low, high] with 0 <= low <= high, got {length_ratio!r}",
        )
        _check(isinstance(drop_cut, bool), f"drop_cut must be true or false, got {drop_cut!r}")
        _check(
            isinstance(batch_size, int) and batch_size >= 1,
            f"batch_size must be an integer >= 1, got {batch_size!r}",
        )
        _check(
            time_limit_s is None or (isinstance(time_limit_s, int | float) and time_limit_s > 0),
            f"time_limit_s must be > 0 seconds, got {time_limit_s!r}",
        )
        _check(
            model_generator is not None,
            "no text generator was given; danlu data and danlu run pass one, and from Python call "
            "run_data(cfg, out, model_generator=danlu.run_paraphrase.model_dir_generator)",
        )
        assert model_generator is not None
        self.model, self.device, self.model_generator = str(Path(model).expanduser()), device, model_generator
        self.max_new_tokens, self.temperature, self.prompt = max_new_tokens, float(temperature), prompt
        self.max_input_chars, self.length_ratio, self.drop_cut = (
            max_input_chars,
            (ratio[0], ratio[1]),
            drop_cut,
        )
        self.batch_size, self.time_limit_s = batch_size, time_limit_s
        self._generate: TextGenerator | None = None
        self._ready: dict[tuple[str, int], Reply] = {}  # replies generated ahead, by (text, seed)
        self._spent = 0.0  # seconds of generation in this process

    def _run(self, texts: Sequence[str], seeds: Sequence[int]) -> list[Reply]:
        if self._generate is None:
            self._generate = self.model_generator(self.model, self.device, self.batch_size)
        start = time.perf_counter()
        replies = self._generate(
            [self.prompt.format(text=t) for t in texts], seeds, self.max_new_tokens, self.temperature
        )
        self._spent += time.perf_counter() - start
        return replies

    def _can_run(self, text: str) -> bool:
        fits = len(text) <= self.max_input_chars
        return fits and (self.time_limit_s is None or self._spent < self.time_limit_s)

    def prefetch(self, docs: Sequence[Document]) -> None:
        """Generate the replies of the picked documents among `docs` in one batch (DocBlock.run calls
        this before the documents go through `filter` one by one); draws as `_augmented` does."""
        todo: list[tuple[str, int]] = []
        for doc in docs:
            rng = doc_rng(self.seed, str(doc["id"]))
            if rng.random() < self.fraction and self._can_run(doc["text"]):
                todo.append((doc["text"], rng.randrange(2**31)))
        if todo:
            replies = self._run([t for t, _ in todo], [s for _, s in todo])
            self._ready.update(zip(todo, replies, strict=True))

    def rewrite(self, text: str, rng: random.Random) -> tuple[str, dict[str, Any]] | None:
        if len(text) > self.max_input_chars:
            self.counts["documents_too_long"] += 1
            return None
        seed = rng.randrange(2**31)
        reply = self._ready.pop((text, seed), None)
        if reply is None:
            if not self._can_run(text):
                self.counts["documents_past_time_limit"] += 1
                return None
            reply = self._run([text], [seed])[0]
        paraphrase = reply.text.strip()
        if not paraphrase:
            self.counts["documents_empty_reply"] += 1
            return None
        if self.drop_cut and not reply.ended:
            self.counts["documents_cut_reply"] += 1
            return None
        low, high = self.length_ratio
        if not low * len(text) <= len(paraphrase) <= high * len(text):
            self.counts["documents_length_rejected"] += 1
            return None
        return paraphrase, {"model": Path(self.model).name, "seed": seed, "chars_in": len(text)}

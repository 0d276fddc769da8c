"""Paraphrase (back-translation's one-language form) through a chat model, as a pipeline block.

The block asks a model, under its chat template, to restate each picked document (`fraction` of them,
picked by a generator seeded by (seed, document id)), and rewrites the document or, with
keep_original, adds the paraphrase beside it (danlu.data.augment.Augmenter). data loads no models:
the run layer passes a `model_generator` factory, model_generator(model_dir, device) -> generate, with
generate(user_messages, seeds, max_new_tokens, temperature) -> one reply per message (danlu data and
danlu run pass danlu.run_paraphrase.model_dir_generator, on danlu's inference engine). The factory is
called on the first picked document, so validating a recipe loads nothing, and once per worker process.
Each request samples with its own seed, drawn from the document's generator: a document's paraphrase
does not depend on the others. meta["augmented"] holds the model directory's name, the seed and the
number of characters sent. Documents over `max_input_chars` are left as they are (counted as
documents_too_long); with `time_limit_s`, documents reached after that many seconds of this block's
generation in a process are left as they are (documents_past_time_limit), so the output then depends
on speed: leave it unset for reproducible output.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from danlu.data.augment import Augmenter
from danlu.errors import ConfigError

# generate(user_messages, seeds, max_new_tokens, temperature) -> one reply per message
TextGenerator = Callable[[Sequence[str], Sequence[int], int, float], list[str]]
# model_generator(model_dir, device) -> generate; module-level, so worker processes can receive it
ModelGenerator = Callable[[str, str], TextGenerator]

DEFAULT_PROMPT = (
    "Paraphrase the following text. Keep its meaning and its facts, use different words, and reply "
    "with the paraphrase only.\n\nText:\n{text}"
)


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
        time_limit_s: float | None = None,
        device: str = "cpu",
        model_generator: ModelGenerator | None = None,
    ) -> None:
        super().__init__(fraction, keep_original, seed)
        if not isinstance(model, str) or not Path(model).expanduser().is_dir():
            raise ConfigError(f"paraphrase: model {model!r} is not a model directory (e.g. runs/NAME/model)")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"paraphrase: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not isinstance(temperature, int | float) or temperature < 0:
            raise ConfigError(f"paraphrase: temperature must be >= 0 (0 is greedy), got {temperature!r}")
        if not isinstance(prompt, str) or "{text}" not in prompt:
            raise ConfigError("paraphrase: prompt must contain {text}, where the document goes")
        if not isinstance(max_input_chars, int) or max_input_chars < 1:
            raise ConfigError(f"paraphrase: max_input_chars must be an integer >= 1, got {max_input_chars!r}")
        if time_limit_s is not None and not (isinstance(time_limit_s, int | float) and time_limit_s > 0):
            raise ConfigError(f"paraphrase: time_limit_s must be > 0 seconds, got {time_limit_s!r}")
        if model_generator is None:
            raise ConfigError(
                "paraphrase: no text generator was given; danlu data and danlu run pass one, and from "
                "Python call run_data(cfg, out, model_generator=danlu.run_paraphrase.model_dir_generator)"
            )
        self.model, self.device, self.model_generator = str(Path(model).expanduser()), device, model_generator
        self.max_new_tokens, self.temperature, self.prompt = max_new_tokens, float(temperature), prompt
        self.max_input_chars, self.time_limit_s = max_input_chars, time_limit_s
        self._generate: TextGenerator | None = None
        self._spent = 0.0  # seconds of generation in this process

    def rewrite(self, text: str, rng: random.Random) -> tuple[str, dict[str, Any]] | None:
        if len(text) > self.max_input_chars:
            self.counts["documents_too_long"] += 1
            return None
        if self.time_limit_s is not None and self._spent >= self.time_limit_s:
            self.counts["documents_past_time_limit"] += 1
            return None
        if self._generate is None:
            self._generate = self.model_generator(self.model, self.device)
        seed = rng.randrange(2**31)
        start = time.perf_counter()
        reply = self._generate([self.prompt.format(text=text)], [seed], self.max_new_tokens, self.temperature)
        self._spent += time.perf_counter() - start
        paraphrase = reply[0].strip()
        if not paraphrase:
            self.counts["documents_empty_reply"] += 1
            return None
        return paraphrase, {"model": Path(self.model).name, "seed": seed, "chars_in": len(text)}

"""The text generator the run layer gives the data stage's `paraphrase` block: a danlu model dir (a
danlu chat model, or an imported one such as runs/smollm2) on danlu's inference engine.

data loads no models (its import contract); this factory is a module-level function, so the local
executor's worker processes and Ray tasks receive it by name and each builds its own engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from danlu.data.paraphrase import Reply, TextGenerator
from danlu.errors import ConfigError

# a slot this long holds a 2,000-character document, the instruction and the reply, and keeps the
# preallocated KV cache small (max_batch slots)
MAX_LEN = 2048


def model_dir_generator(path: str | Path, device: str = "cpu", max_batch: int = 1) -> TextGenerator:
    """generate(user_messages, seeds, max_new_tokens, temperature) -> the model's Reply to each message,
    rendered under the model's chat template (danlu.finetune.templates "auto") and sampled with its seed
    (top-p 0.95; temperature 0 is greedy), up to max_batch of them at once."""
    import multiprocessing

    import torch

    from danlu.finetune import templates
    from danlu.infer.engine import Engine
    from danlu.infer.params import SamplingParams

    if multiprocessing.parent_process() is not None:
        # a pool worker, one per core: a forked copy of a parent's torch thread pool hangs on first use
        torch.set_num_threads(1)
    # no prefix cache: a reply then never depends on which document ran before it (a cached prefix is
    # computed in another shape of matmul, which may round differently)
    engine = Engine.from_dir(path, device=device, max_batch=max_batch, max_len=MAX_LEN, prefix_cache=False)
    template = templates.resolve("auto", engine.tokenizer)

    def generate(
        messages: Sequence[str], seeds: Sequence[int], max_new_tokens: int, temperature: float
    ) -> list[str]:
        if len(messages) != len(seeds):
            raise ConfigError(f"paraphrase: {len(messages)} messages but {len(seeds)} seeds")
        prompts = [
            templates.prompt_ids(engine.tokenizer, [{"role": "user", "content": m}], template)
            for m in messages
        ]
        params = [
            SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=0.95, seed=s)
            for s in seeds
        ]
        return [Reply(c.text, c.finish_reason == "stop") for c in engine.generate(prompts, params)]

    return generate

"""The default recipe's model before and after SFT (recipes/tiny-cpu-sft.yaml, the real data): under the
chat template the pretrained base model never ends its turn, the SFT model mostly does. About 5 minutes
on 2 cores (the whole recipe runs), so it is marked slow: `pytest -m slow tests/test_sft_recipe.py`."""

from __future__ import annotations

import pytest

from danlu.cli import main
from danlu.infer.engine import Engine
from danlu.infer.params import SamplingParams

QUESTIONS = [
    "What do you like to do on weekends?",
    "Do you like music?",
    "Where are you from?",
    "What is your favourite food?",
    "How was your day?",
    "Do you have a dog?",
    "What book are you reading?",
    "Tell me about your family.",
]


def turns_ended(model_dir) -> int:
    """How many of the replies (fixed seed, at most 60 tokens) end with the model's end of turn."""
    engine = Engine.from_dir(model_dir, max_batch=len(QUESTIONS))
    tok = engine.tokenizer
    prompts = [
        tok.encode(
            tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True),
            allowed_special="all",
        )
        for q in QUESTIONS
    ]
    params = SamplingParams(max_tokens=60, temperature=0.8, top_k=50, top_p=0.95, seed=0)
    return sum(c.finish_reason == "stop" for c in engine.generate(prompts, params))


@pytest.mark.slow
def test_the_default_recipe_after_sft_ends_its_turns_where_the_base_model_rambles(tmp_path):
    assert main(["run", "recipes/tiny-cpu-sft.yaml", f"--run_dir={tmp_path / 'run'}"]) == 0
    assert turns_ended(tmp_path / "run" / "model") == 0  # the base model writes both speakers on and on
    assert turns_ended(tmp_path / "run" / "sft" / "model") >= len(QUESTIONS) // 2

"""danlu chat: the template, the engine's prefix cache across turns, the slash commands, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from danlu.cli import main
from danlu.errors import OutputExistsError
from danlu.infer.chat import ChatSession
from danlu.model import build_model
from danlu.model.config import ModelConfig
from danlu.model_dir import save_model_dir
from danlu.tokenizer.bpe import Tokenizer


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tok = Tokenizer.train(["hello there, how are you today? fine thanks. " * 5] * 40, 300, min_frequency=1)
    tok.save(root / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=tok.vocab_size, max_seq_len=160)
    return save_model_dir(root / "model", build_model(cfg), cfg, root / "tok", {"chat": True})


def test_turns_go_through_the_template_and_reuse_the_cache(chat_dir):
    session = ChatSession.from_dir(chat_dir, temperature=0, max_new_tokens=8, system="be brief")
    assert session.mode == "chat"
    first = "".join(session.reply("hello"))
    assert session.last_cached_tokens == 0
    prompt = session.tokenizer.decode(session.prompt_ids())
    assert prompt.startswith("<|bos|><|system|>be brief<|end|><|user|>hello<|end|><|assistant|>")
    second = "".join(session.reply("how are you"))
    # the second turn's prompt starts with the first turn's tokens: those are not computed again
    assert session.last_cached_tokens >= len(session.tokenizer.encode("be brief hello")) + 4
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[1]["content"] == first.strip() and session.history[3]["content"] == second.strip()


def test_long_conversations_drop_the_oldest_turns(chat_dir):
    session = ChatSession.from_dir(chat_dir, temperature=0, max_new_tokens=40)
    for _ in range(8):
        "".join(session.reply("hello there how are you today " * 3))
    assert len(session._fitting_prompt()) + 40 <= 160
    assert session.history[-1]["role"] == "assistant"


def test_chat_verb_commands_and_bad_input(chat_dir, tmp_path, monkeypatch, capsys):
    save_to = tmp_path / "conv.json"
    lines = iter(["hello", "/system be kind", "hi", f"/save {save_to}", f"/save {save_to}", "/nope", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(chat_dir), "--temperature", "0", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "(system prompt set; conversation cleared)" in out
    assert f"(saved to {save_to})" in out
    assert "exists; /save to a new file name" in out  # a second /save never replaces the file
    assert "unknown command /nope" in out
    saved = json.loads(save_to.read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert saved[0]["content"] == "be kind" and saved[1]["content"] == "hi"
    with pytest.raises(OutputExistsError):
        ChatSession.from_dir(chat_dir).save(save_to)
    assert main(["chat", str(tmp_path / "missing")]) == 2
    assert "Traceback" not in capsys.readouterr().err

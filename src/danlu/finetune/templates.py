"""Chat templates rendered to token ids and an assistant-only loss mask.

`encode(tok, messages, template)` returns (ids, mask): mask is 1 on every token of each assistant
message and of the marker that ends its turn, 0 on everything else (system, user, role markup). The
model learns to answer and to end its turn, never to write the user's part.

    danlu    danlu's own tokenizer template (role tokens, <|end|>): the tokenizer's encode_chat, the
             same rendering `danlu chat` prompts with
    model    an imported model's own Jinja template (SmolLM2's ChatML, ...), rendered as transformers
             renders it; the mask covers what follows each assistant generation prompt
    chatml   <|im_start|>role\\n...<|im_end|>\\n
    llama2   <s>[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\nuser [/INST] answer </s>
    alpaca   preamble, ### Instruction:, ### Response:, answer + eos
    vicuna   preamble, USER: ... ASSISTANT: answer + eos
    auto     danlu for a danlu tokenizer, model for an imported one with a template, else chatml

The text templates are rendered as segments encoded one by one (markup with the tokenizer's special
tokens parsed, message text without: a user typing "<|end|>" types text), so a segment boundary is a
token boundary and the mask is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from danlu.errors import ConfigError, TokenizerError

TEMPLATES = ("auto", "danlu", "model", "chatml", "llama2", "alpaca", "vicuna")
ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
VICUNA_PREAMBLE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Seg:
    text: str
    learn: bool = False
    markup: bool = True  # parsed with special tokens; message text is not


def _is_pretrained(tok: Any) -> bool:
    from danlu.tokenizer.pretrained import PretrainedTokenizer

    return isinstance(tok, PretrainedTokenizer)


def resolve(template: str, tok: Any) -> str:
    if template not in TEMPLATES:
        raise ConfigError(
            f"sft.data.template: unknown template {template!r}; choose from {', '.join(TEMPLATES)}"
        )
    if template == "auto":
        if not _is_pretrained(tok):
            return "danlu"
        return "model" if tok.chat_template else "chatml"
    if template == "danlu" and _is_pretrained(tok):
        raise ConfigError("template 'danlu' needs danlu's own tokenizer; an imported model uses 'model'")
    if template == "model" and not (_is_pretrained(tok) and tok.chat_template):
        raise ConfigError("template 'model' needs an imported model whose tokenizer has a chat template")
    return template


def _token_text(tok: Any, i: int) -> str:
    text = tok.id_to_token(i)
    if text is None:
        raise TokenizerError(f"token id {i} has no text in this tokenizer")
    return text


def segments(tok: Any, messages: Sequence[dict[str, str]], template: str, gen_prompt: bool) -> list[Seg]:
    """The segments of a text template; with gen_prompt, ending in the assistant's opening markup."""
    eos = _token_text(tok, tok.eos_id)
    bos = _token_text(tok, tok.bos_id)
    msgs = list(messages)
    system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
    out: list[Seg] = []
    if template == "chatml":
        if system is not None:
            msgs.insert(0, {"role": "system", "content": system})
        for m in msgs:
            learn = m["role"] == "assistant"
            out += [Seg(f"<|im_start|>{m['role']}\n"), Seg(m["content"], learn, False)]
            out += [Seg("<|im_end|>", learn), Seg("\n")]
        return out + ([Seg("<|im_start|>assistant\n")] if gen_prompt else [])
    if template == "llama2":
        for i, m in enumerate(msgs):
            if m["role"] == "user":
                sys = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system is not None and i == 0 else ""
                out += [Seg(f"{bos}[INST] {sys}"), Seg(m["content"], markup=False), Seg(" [/INST]")]
            else:
                out += [Seg(" "), Seg(m["content"], True, False), Seg(f" {eos}", True)]
        return out
    if template == "alpaca":
        out.append(Seg(f"{bos}{ALPACA_PREAMBLE if system is None else system}\n\n"))
        for m in msgs:
            if m["role"] == "user":
                out += [
                    Seg("### Instruction:\n"),
                    Seg(m["content"], markup=False),
                    Seg("\n\n### Response:\n"),
                ]
            else:
                out += [Seg(m["content"], True, False), Seg(eos, True), Seg("\n\n")]
        return out
    if template == "vicuna":
        out.append(Seg(f"{bos}{VICUNA_PREAMBLE if system is None else system} "))
        for m in msgs:
            if m["role"] == "user":
                out += [Seg("USER: "), Seg(m["content"], markup=False), Seg(" ASSISTANT:")]
            else:
                out += [Seg(" "), Seg(m["content"], True, False), Seg(eos, True)]
        return out
    raise AssertionError(template)


def _encode_segments(tok: Any, segs: list[Seg]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    mask: list[int] = []
    for s in segs:
        piece = tok.encode(s.text, allowed_special="all") if s.markup else tok.encode(s.text)
        ids += piece
        mask += [int(s.learn)] * len(piece)
    return ids, mask


def encode(
    tok: Any, messages: Sequence[dict[str, str]], template: str, max_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a conversation under a resolved template (see the module docstring).

    max_tokens lets an imported model's template stop rendering once the ids are past it (the
    result is then only the first tokens, more than max_tokens): enough to tell what fits."""
    if template == "model":
        return tok.encode_chat(messages, max_tokens=max_tokens)
    if template == "danlu":
        return tok.encode_chat(messages)
    return _encode_segments(tok, segments(tok, messages, template, gen_prompt=False))


def prompt_ids(tok: Any, messages: Sequence[dict[str, str]], template: str) -> list[int]:
    """Ids of a conversation so far plus the assistant's opening: what generation continues."""
    if template in ("danlu", "model"):
        text = tok.apply_chat_template(messages, add_generation_prompt=True)
        return tok.encode(text, allowed_special="all")
    segs = segments(tok, messages, template, gen_prompt=True)
    if template in ("llama2", "vicuna"):
        segs.append(Seg(" "))
    return _encode_segments(tok, segs)[0]

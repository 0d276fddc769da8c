"""Chat data for SFT (issue 21, part 1): record layouts, bad conversations counted, every template's
assistant-only loss mask (hypothesis), packing that never lets one conversation see another.

Pinned: for every template the masked tokens decode to exactly each assistant message followed by
its end-of-turn marker, in one span per assistant message, and nothing of the system or user turns;
a packed row computes each conversation as it would alone (RoPE is relative, 1e-5) and perturbing
one conversation leaves the others' logits unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from danlu.errors import DataError
from danlu.finetune import templates
from danlu.finetune.chat_data import BadConversation, Screen, check, read_jsonl, screen, to_messages
from danlu.finetune.packing import SFTBatches, collate, fit_to_context, pack_rows, xy
from danlu.train.losses import IGNORE_INDEX

# SmolLM2-135M-Instruct's chat template (ChatML with a default system prompt)
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok(word_lines):
    from danlu.tokenizer import Tokenizer

    return Tokenizer.train(word_lines(300, seed=1), 320)


@pytest.fixture(scope="module")
def pretrained_tok(word_lines):
    """An imported-model tokenizer with ChatML special tokens and SmolLM2's Jinja template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from danlu.tokenizer.pretrained import PretrainedTokenizer

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    hf.train_from_iterator(word_lines(300, seed=2), trainer)
    meta = {
        "kind": "pretrained",
        "special_tokens": {t: hf.token_to_id(t) for t in specials},
        "bos_id": hf.token_to_id("<|im_start|>"),
        "eos_id": hf.token_to_id("<|im_end|>"),
        "pad_id": hf.token_to_id("<|endoftext|>"),
        "chat_template": SMOL_TEMPLATE,
        "chat_stop": [],
    }
    return PretrainedTokenizer(hf, meta)


# the marker each template puts after an assistant message, inside the mask
END_OF_TURN = {
    "danlu": "<|end|>",
    "chatml": "<|im_end|>",
    "llama2": " <|eos|>",
    "alpaca": "<|eos|>",
    "vicuna": "<|eos|>",
}

# pieces of message text, a special token's spelling among them (typed by a user, it is text)
piece = st.sampled_from([*"abcdekq XYZ.,?!'\n", "é", "語", "<|end|>", "<|im_end|>"])
text = st.lists(piece, min_size=1, max_size=20).map("".join).filter(lambda s: s.strip() != "")


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 4))
    msgs = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    for _ in range(n):
        msgs.append({"role": "user", "content": draw(text)})
        msgs.append({"role": "assistant", "content": draw(text)})
    if draw(st.booleans()):
        msgs.append({"role": "user", "content": draw(text)})  # a trailing user turn is not learned
    return msgs


def _spans(mask: list[int]) -> int:
    return sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))


def _masked_text(tk, ids, mask) -> str:
    return tk.decode([i for i, m in zip(ids, mask, strict=True) if m])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(), template=st.sampled_from(sorted(END_OF_TURN)))
def test_every_template_masks_exactly_the_assistant_turns(tok, msgs, template):
    ids, mask = templates.encode(tok, msgs, template)
    assert len(ids) == len(mask)
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert _masked_text(tok, ids, mask) == "".join(a + END_OF_TURN[template] for a in answers)
    assert _spans(mask) == len(answers)
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    for m in msgs:
        if m["role"] != "assistant":
            assert m["content"] in unmasked


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations())
def test_an_imported_models_jinja_template_masks_the_assistant_turns(pretrained_tok, msgs):
    template = templates.resolve("auto", pretrained_tok)
    assert template == "model"
    ids, mask = templates.encode(pretrained_tok, msgs, template)
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert _masked_text(pretrained_tok, ids, mask) == "".join(a + "<|im_end|>\n" for a in answers)
    assert pretrained_tok.decode(ids) == pretrained_tok.apply_chat_template(msgs)
    assert _spans(mask) == len(answers)


def test_the_generation_prompt_is_what_training_saw_before_the_answer(tok, pretrained_tok):
    msgs = [{"role": "user", "content": "the king?"}, {"role": "assistant", "content": "the queen."}]
    for tk, names in ((tok, ["danlu", "chatml", "alpaca"]), (pretrained_tok, ["model"])):
        for name in names:
            ids, mask = templates.encode(tk, msgs, name)
            prompt = templates.prompt_ids(tk, msgs[:1], name)
            assert ids[: len(prompt)] == prompt and mask.index(1) == len(prompt), name


def test_record_layouts_and_bad_conversations_are_counted(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"instruction": "Add", "input": "2+2", "output": "4", "system": "math"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
        {"text": "no conversation here"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    sc = Screen()
    kept = list(screen(read_jsonl(path), sc))
    assert [m for _, m in kept][1] == [
        {"role": "system", "content": "math"},
        {"role": "user", "content": "Add\n\n2+2"},
        {"role": "assistant", "content": "4"},
    ]
    assert sc.kept == 3
    assert dict(sc.skipped) == {
        "unknown_role": 1, "empty_turn": 1, "no_assistant_turn": 1, "system_not_first": 1, "unreadable": 2,
    }  # fmt: skip
    assert sc.examples["unknown_role"] == ["c.jsonl:4: message 0 has role 'wizard'"]
    with pytest.raises(DataError, match=r"c\.jsonl:4: unknown_role"):
        list(screen(read_jsonl(path), Screen(on_bad="refuse")))
    with pytest.raises(BadConversation):
        check(to_messages({"messages": []}))


def test_truncation_policy_counts_and_keeps_only_learnable_examples():
    long = (list(range(20)), [0] * 10 + [1] * 10)
    early = (list(range(20)), [0, 1] + [0] * 18)
    fine = (list(range(5)), [0, 0, 1, 1, 1])
    skipped = fit_to_context([long, early, fine], 8, "skip")
    assert skipped.too_long == 2 and skipped.examples == [fine]
    assert skipped.too_long_examples == ["example 0: 20 tokens", "example 1: 20 tokens"]
    cut = fit_to_context([long, early, fine], 8, "truncate", names=["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"])
    assert cut.too_long == 2 and cut.no_target == 1 and cut.examples == [early_cut(early), fine]
    assert cut.no_target_examples == ["a.jsonl:1: no assistant token within 8 + 1 tokens"]
    with pytest.raises(DataError, match=r"a\.jsonl:1: 20 tokens, longer than the context of 8"):
        fit_to_context([long, fine], 8, "refuse", names=["a.jsonl:1", "a.jsonl:3"])
    assert fit_to_context([fine], 8, "refuse").examples == [fine]


def early_cut(ex):
    return ex[0][:9], ex[1][:9]


def test_targets_are_the_next_tokens_under_the_mask():
    x, y = xy(([5, 6, 7, 8], [0, 0, 1, 1]))
    assert x == [5, 6, 7] and y == [IGNORE_INDEX, 7, 8]


@pytest.fixture(scope="module")
def tiny_model(tok):
    from danlu.model.config import ModelConfig
    from danlu.model.transformer import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, max_seq_len=64, vocab_size=tok.vocab_size)
    return build_model(cfg).eval()


def test_packed_conversations_compute_as_alone_and_never_see_each_other(tok, tiny_model):
    convs = [
        [{"role": "user", "content": "the king"}, {"role": "assistant", "content": "the queen speaks"}],
        [{"role": "user", "content": "night day"}, {"role": "assistant", "content": "love"}],
        [{"role": "user", "content": "sword"}, {"role": "assistant", "content": "crown and river"}],
    ]
    exs = [templates.encode(tok, c, "danlu") for c in convs]
    x, y, mask = collate(exs, [[0, 1, 2]], tok.pad_id, packed=True, seq_len=64)
    assert mask.shape == (1, 1, 64, 64)
    with torch.no_grad():
        packed = tiny_model(x, attn_mask=mask)
        starts = [0]
        for ids, _ in exs:
            starts.append(starts[-1] + len(ids) - 1)
        for k, ex in enumerate(exs):
            alone = tiny_model(torch.tensor([xy(ex)[0]]))
            assert torch.allclose(packed[0, starts[k] : starts[k + 1]], alone[0], atol=1e-5)
        # perturb the middle conversation: the first and last are untouched
        x2 = x.clone()
        x2[0, starts[1] : starts[2]] = (x2[0, starts[1] : starts[2]] + 7) % tok.vocab_size
        changed = tiny_model(x2, attn_mask=mask)
    for k in (0, 2):
        assert torch.equal(changed[0, starts[k] : starts[k + 1]], packed[0, starts[k] : starts[k + 1]])
    assert not torch.allclose(changed[0, starts[1] : starts[2]], packed[0, starts[1] : starts[2]])
    assert (y[0, starts[3] :] == IGNORE_INDEX).all()


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(2, 17), min_size=1, max_size=30), seed=st.integers(0, 5))
def test_packing_places_every_example_once_within_the_row(lengths, seed):
    rows = pack_rows(lengths, 16, seed)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] - 1 for i in r) <= 16 for r in rows)


def test_the_batch_stream_resumes_where_it_stopped(tok):
    exs = [([1, 2, 3, 4 + i % 5], [0, 0, 1, 1]) for i in range(10)]
    a = SFTBatches(exs, 3, 8, tok.pad_id, seed=1, packed=False)
    it = iter(a)
    first = [next(it) for _ in range(4)]  # crosses an epoch (3 batches of 3 per epoch)
    state = a.state_dict()
    rest = [next(it) for _ in range(3)]
    b = SFTBatches(exs, 3, 8, tok.pad_id, seed=1, packed=False)
    b.load_state_dict(state)
    it_b = iter(b)
    again = [next(it_b) for _ in range(3)]
    assert len(first) == 4
    for u, v in zip(rest, again, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(u, v, strict=True))


def _encode_chat_prefix_by_prefix(tk, messages):
    """The reference: every prefix rendered and encoded whole."""
    ids, mask = [], []
    for i, m in enumerate(messages):
        before = tk.encode(tk.apply_chat_template(messages[:i]), allowed_special="all") if i else []
        upto = tk.encode(tk.apply_chat_template(messages[: i + 1]), allowed_special="all")
        assert upto[: len(before)] == before
        head = 0
        if m["role"] == "assistant":
            head = len(tk.encode(tk.apply_chat_template(messages[:i], True), allowed_special="all")) - len(
                before
            )
        ids += upto[len(before) :]
        mask += [0] * head + [int(m["role"] == "assistant")] * (len(upto) - len(before) - head)
    return ids, mask


# a template whose turns do not start with a special token: the encoder cannot split there
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
straddling = st.sampled_from([*"ab <|>_\n", "<|im_", "start|>", "end|>", "<|im_end|>", "<|im_start|>"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    msgs=conversations(),
    extra=st.lists(straddling, min_size=1, max_size=6).map("".join).filter(str.strip),
    plain=st.booleans(),
)
def test_encode_chat_equals_encoding_every_prefix_whole(pretrained_tok, msgs, extra, plain):
    """encode_chat encodes only each turn's new text where the tokenizer splits anyway (at a special
    token); the ids and mask are those of rendering and encoding every prefix whole."""
    import copy

    tk = copy.copy(pretrained_tok)
    tk.chat_template = PLAIN_TEMPLATE if plain else SMOL_TEMPLATE
    msgs = [*msgs[:-1], {**msgs[-1], "content": msgs[-1]["content"] + extra}]
    assert tk.encode_chat(msgs) == _encode_chat_prefix_by_prefix(tk, msgs)


def test_encode_chat_with_a_token_cap_gives_the_first_tokens(pretrained_tok):
    msgs = []
    for k in range(40):
        msgs += [{"role": "user", "content": f"day {k} night"}, {"role": "assistant", "content": "the king"}]
    full = templates.encode(pretrained_tok, msgs, "model")
    capped = templates.encode(pretrained_tok, msgs, "model", max_tokens=50)
    assert 50 < len(capped[0]) < len(full[0])
    assert capped == (full[0][: len(capped[0])], full[1][: len(capped[1])])
    assert templates.encode(pretrained_tok, msgs, "model", max_tokens=10**6) == full

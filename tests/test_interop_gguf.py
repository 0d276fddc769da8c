"""SmolLM2-135M-Instruct from its GGUF: weights, tokenizer and chat template, checked against
transformers (the HF export; and, in the slow tests, transformers' own GGUF loader), plus bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from danlu.errors import CheckpointError
from danlu.interop.gguf import import_gguf, load_gguf, registry_gguf
from danlu.interop.hf_llama import export_hf, from_hf_config, import_hf
from danlu.model_dir import load_model

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.needs_data

TEXTS = [
    "Hello world! The year 2024 had 366 days.",
    "  indented\tcode: def f(x): return x**2  # ünïcödé, 中文, emoji 🙂",
    "<|im_start|>user\nHi<|im_end|>",
]


@pytest.fixture(scope="module")
def gguf_path():
    return registry_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smol_dir(gguf_path, tmp_path_factory):
    return import_gguf(gguf_path, tmp_path_factory.mktemp("smol") / "model")


@pytest.fixture(scope="module")
def smol(smol_dir):
    return load_model(smol_dir)


@pytest.fixture(scope="module")
def hf_export(smol_dir, tmp_path_factory):
    return export_hf(smol_dir, tmp_path_factory.mktemp("hf") / "smollm2")


def test_config_is_smollm2_shape(smol):
    model, tok, cfg = smol
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.ffn_hidden) == (30, 576, 9, 3, 1536)
    assert cfg.rope_theta == 100000.0 and cfg.tie_embeddings and cfg.vocab_size == 49152
    assert model.num_params() == 134_515_008
    assert tok.vocab_size == 49152 and tok.eos_id == tok.token_to_id("<|im_end|>")


def test_hf_export_loads_in_transformers_with_equal_logits(smol, hf_export):
    model, tok, _ = smol
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_export, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(TEXTS[0] + " " + TEXTS[1])])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_export)
    for text in TEXTS[:2]:
        assert hf_tok(text, add_special_tokens=False).input_ids == tok.encode(text)
    messages = [{"role": "user", "content": "Hi there"}]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        tok.apply_chat_template(messages, add_generation_prompt=True)
    )


def test_hf_import_round_trip(smol, hf_export, tmp_path):
    model, tok, cfg = smol
    back, back_tok, back_cfg = load_model(import_hf(hf_export, tmp_path / "back"))
    assert back_cfg == cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert back_tok.encode(TEXTS[1]) == tok.encode(TEXTS[1])


def test_chat_answers_a_factual_question(smol_dir):
    from danlu.infer.chat import ChatSession

    session = ChatSession.from_dir(smol_dir, temperature=0.0, max_new_tokens=40)
    assert session.mode == "chat"
    answer = "".join(session.reply("What is the capital of France?"))
    assert "Paris" in answer
    assert "4" in "".join(session.reply("What is 2 + 2? Answer with a number."))


def test_tokenizer_round_trips_and_counts_bytes(smol):
    _, tok, _ = smol
    for text in TEXTS[:2]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    specials = tok.encode(TEXTS[2], allowed_special="all")
    assert specials[0] == tok.token_to_id("<|im_start|>") and specials[-1] == tok.token_to_id("<|im_end|>")
    assert tok.token_to_id("<|im_start|>") not in tok.encode(TEXTS[2])  # typed text stays text


# ---- bad input ----


def test_truncated_gguf_is_refused(gguf_path, tmp_path):
    bad = tmp_path / "cut.gguf"
    with open(gguf_path, "rb") as f:
        bad.write_bytes(f.read(3_000_000))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_gguf(bad)
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_gguf(tmp_path / "not.gguf")


def _write_gguf(path, arch: str, n_layer_meta: int, n_layer_tensors: int) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    d, ffn, vocab = 8, 16, 300
    w.add_block_count(n_layer_meta)
    w.add_context_length(32)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ffn)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chr(0x100 + i) for i in range(vocab)])
    w.add_token_merges([])
    w.add_eos_token_id(0)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, d), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    for i in range(n_layer_tensors):
        for kind, shape in (("attn_norm", (d,)), ("ffn_norm", (d,)), ("attn_q", (d, d)), ("attn_k", (d, d)),
                            ("attn_v", (d, d)), ("attn_output", (d, d)), ("ffn_gate", (ffn, d)),
                            ("ffn_up", (ffn, d)), ("ffn_down", (d, ffn))):  # fmt: skip
            w.add_tensor(f"blk.{i}.{kind}.weight", rng.standard_normal(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_small_gguf_loads_and_bad_ones_are_refused(tmp_path):
    good = tmp_path / "good.gguf"
    _write_gguf(good, "llama", 2, 2)
    model, tok, cfg = load_gguf(good)
    assert cfg.n_layer == 2 and tok.vocab_size == 300
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 300)
    _write_gguf(tmp_path / "gpt2.gguf", "gpt2", 2, 2)
    with pytest.raises(CheckpointError, match="architecture 'gpt2' is not supported"):
        load_gguf(tmp_path / "gpt2.gguf")
    _write_gguf(tmp_path / "short.gguf", "llama", 3, 2)  # metadata says 3 layers, tensors hold 2
    with pytest.raises(CheckpointError, match="do not fit this config"):
        load_gguf(tmp_path / "short.gguf")


def test_bad_hf_directories_are_refused(hf_export, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(hf_export, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        import_hf(cut, tmp_path / "out")
    hf = json.loads((hf_export / "config.json").read_text())
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        from_hf_config(hf | {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    wrong = tmp_path / "wrong"
    shutil.copytree(hf_export, wrong)
    (wrong / "config.json").write_text(json.dumps(hf | {"intermediate_size": 1024}))
    with pytest.raises(CheckpointError, match="does not match the checkpoint"):
        import_hf(wrong, tmp_path / "out2")


# ---- against transformers' own GGUF reader (each load dequantizes the file again: slow) ----


@pytest.mark.slow
def test_gguf_weights_and_tokenizer_equal_transformers_gguf_loader(gguf_path, smol):
    pytest.importorskip("accelerate")
    model, tok, _ = smol
    hf_tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for text in TEXTS[:2]:
        assert hf_tok(text, add_special_tokens=False).input_ids == tok.encode(text)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_import_and_export_verbs(tmp_path, capsys):
    from danlu.cli import main

    _write_gguf(tmp_path / "m.gguf", "llama", 2, 2)
    assert main(["import", str(tmp_path / "m.gguf"), str(tmp_path / "model")]) == 0
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "hf")]) == 0
    model, _, _ = load_model(tmp_path / "model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4
    assert main(["import", str(tmp_path / "nothing-here"), str(tmp_path / "x")]) == 2
    assert "neither a registry model" in capsys.readouterr().err

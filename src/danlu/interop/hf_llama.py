"""Mapping between danlu's Transformer and Hugging Face `LlamaForCausalLM` (config and weights).

danlu fuses q/k/v into `qkv` and gate/up into `gate_up` (rows stacked in that order); HF keeps them
separate. Both use the same rotate_half RoPE layout, so q and k rows need no permutation.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import CheckpointError, ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import default_ffn_hidden

HF_QAT_KEY = "danlu_qat"  # config.json key of a QAT model's fake-quantization settings


def _dims(cfg: ModelConfig) -> tuple[int, int, int, int]:
    n_kv = cfg.n_kv_head or cfg.n_head
    hd = cfg.n_embd // cfg.n_head
    return cfg.n_head * hd, n_kv * hd, hd, cfg.ffn_hidden or default_ffn_hidden(cfg.n_embd)


# ModelConfig fields that Llama fixes, with the value Llama has; RoPE scaling is mapped separately
_LLAMA_FIXED: dict[str, Any] = {
    "norm": "rmsnorm",
    "norm_position": "pre",
    "mlp": "swiglu",
    "pos": "rope",
    "sliding_window": 0,
    "qk_norm": False,
    "logit_softcap": 0.0,
    "bias": False,
    "n_unique_layers": 0,
}


def check_llama_compatible(cfg: ModelConfig) -> None:
    """Refuse configs whose architecture HF `LlamaForCausalLM` cannot express."""
    wrong = {k: getattr(cfg, k) for k, v in _LLAMA_FIXED.items() if getattr(cfg, k) != v}
    if cfg.rope_scaling == "ntk":  # HF's "dynamic" NTK rescales with the length: not the same model
        wrong["rope_scaling"] = "ntk"
    if wrong:
        found = ", ".join(f"model.{k}={v!r}" for k, v in wrong.items())
        raise ConfigError(
            f"this model cannot be exported as a Hugging Face Llama: {found}; the Llama format needs "
            + ", ".join(f"{k}={v!r}" for k, v in _LLAMA_FIXED.items() if k in wrong)
            + (" and rope_scaling none, linear or yarn" if "rope_scaling" in wrong else "")
        )


def _hf_rope_scaling(cfg: ModelConfig) -> dict[str, Any] | None:
    if cfg.rope_scaling == "none" or cfg.rope_factor == 1.0:
        return None
    scaling: dict[str, Any] = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor}
    if cfg.rope_scaling == "yarn":
        scaling["original_max_position_embeddings"] = cfg.rope_original_max_len or int(
            cfg.max_seq_len / cfg.rope_factor
        )
    return scaling


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of `transformers.LlamaConfig` for a resolved danlu config."""
    check_llama_compatible(cfg)
    _, _, hd, ffn = _dims(cfg)
    return {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": ffn,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head or cfg.n_head,
        "head_dim": hd,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": cfg.init_std,
        "rope_scaling": _hf_rope_scaling(cfg),
    }


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF Llama weights (fresh, contiguous tensors); `lm_head.weight` only when not tied."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    check_llama_compatible(cfg)
    q_rows, kv_rows, _, ffn = _dims(cfg)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = sd[src + "attn.qkv.weight"].split((q_rows, kv_rows, kv_rows))
        gate, up = sd[src + "mlp.gate_up.weight"].split((ffn, ffn))
        out |= {
            dst + "input_layernorm.weight": sd[src + "attn_norm.weight"],
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": sd[src + "attn.proj.weight"],
            dst + "post_attention_layernorm.weight": sd[src + "mlp_norm.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": sd[src + "mlp.down.weight"],
        }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    # clone: split views share storage, which safetensors refuses and callers may mutate
    return {k: v.clone().contiguous() for k, v in out.items()}


def _expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    q_rows, kv_rows, _, ffn = _dims(cfg)
    d = cfg.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg.vocab_size, d),
        "model.norm.weight": (d,),
    }
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q_rows, d),
            p + "self_attn.k_proj.weight": (kv_rows, d),
            p + "self_attn.v_proj.weight": (kv_rows, d),
            p + "self_attn.o_proj.weight": (d, q_rows),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (ffn, d),
            p + "mlp.up_proj.weight": (ffn, d),
            p + "mlp.down_proj.weight": (d, ffn),
        }
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def _check_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    expected = _expected_hf_shapes(cfg)
    missing = [k for k in expected if k not in sd]
    # a tied HF model still lists lm_head.weight; old checkpoints stored RoPE frequencies
    allowed = {"lm_head.weight"} | {
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(cfg.n_layer)
    }
    unexpected = [k for k in sd if k not in expected and k not in allowed]
    if missing or unexpected:
        raise CheckpointError(
            f"the HF Llama weights do not fit this config: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "check n_layer, tie_embeddings and that the checkpoint is a LlamaForCausalLM"
        )
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(
                f"HF weight {k} has shape {tuple(sd[k].shape)}, the config needs {shape}; "
                "the config (n_embd, n_head, n_kv_head, ffn_hidden, vocab_size) does not match the checkpoint"
            )
    if cfg.tie_embeddings and "lm_head.weight" in sd:
        head, embed = sd["lm_head.weight"], sd["model.embed_tokens.weight"]
        if head.shape != embed.shape or not torch.equal(head, embed):
            raise CheckpointError(
                "the checkpoint has a separate lm_head.weight but model.tie_embeddings is true; "
                "set model.tie_embeddings to false to load it"
            )


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """danlu state dict (for `Transformer.load_state_dict`) from HF Llama weights and a resolved config."""
    _check_hf_state_dict(sd, cfg)
    embed = sd["model.embed_tokens.weight"]
    out = {"embed.weight": embed, "norm.weight": sd["model.norm.weight"]}
    out["lm_head.weight"] = embed if cfg.tie_embeddings else sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        attn, mlp = src + "self_attn.", src + "mlp."
        out |= {
            dst + "attn_norm.weight": sd[src + "input_layernorm.weight"],
            dst + "attn.qkv.weight": torch.cat(
                [sd[attn + "q_proj.weight"], sd[attn + "k_proj.weight"], sd[attn + "v_proj.weight"]]
            ),
            dst + "attn.proj.weight": sd[attn + "o_proj.weight"],
            dst + "mlp_norm.weight": sd[src + "post_attention_layernorm.weight"],
            dst + "mlp.gate_up.weight": torch.cat([sd[mlp + "gate_proj.weight"], sd[mlp + "up_proj.weight"]]),
            dst + "mlp.down.weight": sd[mlp + "down_proj.weight"],
        }
    return out


# --- whole directories: what `transformers.AutoModelForCausalLM.from_pretrained` reads and writes ---


def export_hf(model_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """A Hugging Face Llama directory (config.json, model.safetensors, tokenizer files) from a danlu
    model dir; `transformers.AutoModelForCausalLM.from_pretrained(out)` loads it. An existing model
    dir at `out` is replaced only with `force`; a file or a directory of other files, never."""
    from safetensors.torch import save_file

    from danlu.finetune.lora import unwrap
    from danlu.io import atomic_dir, check_replaceable_output
    from danlu.model_dir import TOKENIZER_DIR, load_model, read_metadata

    check_replaceable_output(out, force)
    model, tok, cfg = load_model(model_dir)
    model = unwrap(model)  # a finetune saved as base + adapters/ exports merged
    hf_config = to_hf_config(cfg) | {"model_type": "llama", "torch_dtype": "float32"}
    hf_config |= {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    # fake-quantization settings ride along (transformers ignores the key; import_hf restores them)
    hf_config |= {HF_QAT_KEY: qat} if (qat := read_metadata(model_dir).get("qat")) else {}
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_file(to_hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(Path(model_dir) / TOKENIZER_DIR / "tokenizer.json", tmp / "tokenizer.json")
        names = {i: t for t, i in tok.special_tokens.items()}
        tok_config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": names.get(tok.bos_id),
            "eos_token": names.get(tok.eos_id),
            "pad_token": names.get(tok.pad_id),
            "model_max_length": cfg.max_seq_len,
        }
        template = getattr(tok, "chat_template", None)
        if template:
            tok_config["chat_template"] = template
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    return Path(out)


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """The danlu config of a Hugging Face Llama config.json (refusing what danlu cannot represent)."""
    arch = hf.get("architectures") or [hf.get("model_type")]
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise CheckpointError(
            f"unsupported architecture {arch}; danlu imports Llama models (model_type 'llama')"
        )
    if hf.get("attention_bias") or hf.get("mlp_bias") or hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError("Llama variants with biases or a non-SiLU activation are not supported")
    # transformers >= 5 writes rope_theta and the scaling into one rope_parameters dict
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or rope
    kind = scaling.get("rope_type", scaling.get("type", "none"))
    if kind not in ("none", "default", "linear", "yarn"):
        raise CheckpointError(f"RoPE scaling {kind!r} is not supported (linear and yarn are)")
    n_head = hf["num_attention_heads"]
    if hf.get("head_dim", hf["hidden_size"] // n_head) != hf["hidden_size"] // n_head:
        raise CheckpointError("a head_dim other than hidden_size / num_attention_heads is not supported")
    cfg = ModelConfig(
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads", n_head),
        ffn_hidden=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_scaling="none" if kind == "default" else kind,
        rope_factor=float(scaling.get("factor", 1.0)),
        rope_original_max_len=int(scaling.get("original_max_position_embeddings") or 0),
    )
    from danlu.model import resolve_model_config

    return resolve_model_config(cfg, cfg.vocab_size)


def import_hf(hf_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """A danlu model dir from a Hugging Face Llama directory (config.json, *.safetensors, tokenizer);
    `out` is guarded as in export_hf."""
    from safetensors.torch import load_file

    from danlu.io import check_replaceable_output
    from danlu.model import build_model
    from danlu.model_dir import save_model_dir

    check_replaceable_output(out, force)
    hf_dir = Path(hf_dir)
    try:
        hf = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{hf_dir}/config.json is missing or unreadable ({e})") from None
    cfg = from_hf_config(hf)
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{hf_dir} has no *.safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            sd |= {k: v.float() for k, v in load_file(str(f)).items()}
        except Exception as e:  # safetensors raises its own error type on a truncated header or data
            raise CheckpointError(f"{f} is truncated or corrupt ({e})") from None
    model = build_model(cfg, "cpu")
    model.load_state_dict(from_hf_state_dict(sd, cfg))
    tok = _hf_tokenizer(hf_dir)
    extra = {"chat": bool(tok.chat_template), "source": str(hf_dir)}
    extra |= {"qat": hf[HF_QAT_KEY]} if hf.get(HF_QAT_KEY) else {}  # a danlu export of a QAT model
    with tempfile.TemporaryDirectory(prefix="danlu-tok-") as tmp:
        tok_dir = tok.save(Path(tmp) / "tokenizer")
        save_model_dir(Path(out), model, cfg, tok_dir, extra=extra)
    return Path(out)


def _hf_tokenizer(hf_dir: Path) -> Any:
    from tokenizers import Tokenizer as HFTokenizer

    from danlu.tokenizer.pretrained import PretrainedTokenizer

    if not (hf_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{hf_dir} has no tokenizer.json (a fast tokenizer is needed)")
    hf = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tc_path = hf_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.is_file() else {}

    def name(value: Any) -> str | None:
        return value.get("content") if isinstance(value, dict) else value

    special = {t.content: i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    eos = name(tc.get("eos_token")) or next(iter(special), None)
    if eos is None or hf.token_to_id(eos) is None:
        raise CheckpointError(
            f"{hf_dir}: cannot tell the end-of-sequence token; set eos_token in tokenizer_config.json"
        )
    bos = name(tc.get("bos_token")) or eos
    pad = name(tc.get("pad_token")) or eos
    stop = [t for t in ("<|im_end|>", "<|eot_id|>", "<|end|>") if t in special and t != eos]
    meta = {
        "kind": "pretrained",
        "special_tokens": special,
        "bos_id": hf.token_to_id(bos),
        "eos_id": hf.token_to_id(eos),
        "pad_id": hf.token_to_id(pad),
        "chat_template": tc.get("chat_template"),
        "chat_stop": [hf.token_to_id(t) for t in stop],
    }
    return PretrainedTokenizer(hf, meta)

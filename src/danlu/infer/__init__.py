"""Inference: sampling and streaming generation with the KV cache (danlu.infer.sampling), chat sessions."""

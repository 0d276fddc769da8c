"""Conversions to and from other ecosystems' formats (Hugging Face Llama, ...)."""

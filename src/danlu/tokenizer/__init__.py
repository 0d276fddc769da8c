"""Byte-level BPE tokenizer: training, special tokens, chat template, fast exact encoding."""

from danlu.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer
from danlu.tokenizer.tools import encode_text, tokenizer_stats, train_tokenizer

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "encode_text", "tokenizer_stats", "train_tokenizer"]

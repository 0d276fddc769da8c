"""Packing: the token stream decodes back to the documents, with counts the index can be trusted for."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from danlu.data.config import DataConfig
from danlu.data.documents import document_texts, read_documents, run_data
from danlu.data.loader import TokenDataset
from danlu.data.pack import run_pack, token_dtype
from danlu.errors import DataError
from danlu.tokenizer import train_tokenizer
from danlu.tokenizer.config import TokenizerConfig

TEXTS = [
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "A: hi, how was your weekend?\nB: great, we went hiking in the hills!",
    "Ünïcödé façade — naïve café, 東京 and emoji 🎭 survive the round trip.",
] * 20


@pytest.fixture(scope="module")
def docs_and_tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{i}. {t}"}) + "\n" for i, t in enumerate(TEXTS)))
    run_data(DataConfig(sources=[str(corpus)], val_fraction=0.1), root / "docs")
    tok = train_tokenizer(document_texts(root / "docs"), TokenizerConfig(vocab_size=350), root / "tok")
    return root, tok


def test_stream_decodes_to_documents_between_bos_and_eos(docs_and_tok):
    root, tok = docs_and_tok
    index = run_pack(root / "docs", tok, root / "tokens")
    for split in ("train", "val"):
        docs = [d["text"] for d in read_documents(root / "docs", split)]
        stream = np.fromfile(root / "tokens" / f"{split}.bin", dtype=np.uint16)
        starts = np.load(root / "tokens" / f"{split}.docs.npy")
        info = index["splits"][split]
        assert info["tokens"] == len(stream) == len(TokenDataset(root / "tokens", split))
        assert info["documents"] == len(docs) == len(starts)
        assert info["bytes"] == sum(len(t.encode()) for t in docs)
        ends = [*starts[1:], len(stream)]
        for text, a, b in zip(docs, starts, ends, strict=True):
            assert stream[a] == tok.bos_id and stream[b - 1] == tok.eos_id
            assert tok.decode(stream[a + 1 : b - 1].tolist()) == text
    assert index["vocab_size"] == tok.vocab_size and index["fingerprint"] == tok.fingerprint()
    assert json.loads((root / "tokens" / "index.json").read_text()) == index


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_pack_without_documents_fails_and_writes_nothing(docs_and_tok, tmp_path):
    _, tok = docs_and_tok
    with pytest.raises(DataError, match="run the data stage"):
        run_pack(tmp_path / "no-docs", tok, tmp_path / "tokens")
    assert not (tmp_path / "tokens").exists()


def test_default_pack_is_corpus_order_byte_for_byte(docs_and_tok, tmp_path):
    """mix=None is today's output: bos + tokens + eos per document in corpus order, no "mix" entry."""
    root, tok = docs_and_tok
    index = run_pack(root / "docs", tok, tmp_path / "default")
    explicit = run_pack(root / "docs", tok, tmp_path / "none", mix=None)
    for split in ("train", "val"):
        rows = [
            [tok.bos_id, *tok.encode(d["text"]), tok.eos_id] for d in read_documents(root / "docs", split)
        ]
        expected = np.concatenate(rows).astype(np.uint16).tobytes()
        assert (tmp_path / "default" / f"{split}.bin").read_bytes() == expected
        assert index["splits"][split]["sha256"] == hashlib.sha256(expected).hexdigest()
        assert "mix" not in index["splits"][split]
    assert explicit == index
    for name in ("index.json", "train.bin", "train.docs.npy", "val.bin", "val.docs.npy"):
        assert (tmp_path / "none" / name).read_bytes() == (tmp_path / "default" / name).read_bytes()

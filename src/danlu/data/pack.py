"""The pack stage: documents -> one flat token stream per split, <|bos|> doc <|eos|> after another.

Output directory (one atomic rename):
  <split>.bin        the stream, uint16 when the vocab fits in 16 bits, else uint32 (native little-endian)
  <split>.docs.npy   int64 start offset of every document in the stream
  index.json         dtype, vocab size and tokenizer fingerprint, and per split the token, document and
                     UTF-8 byte counts and the sha256 of the .bin file
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from danlu.data.documents import SPLITS, read_documents
from danlu.errors import DataError
from danlu.io import atomic_dir, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
_BATCH_DOCS = 256


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _pack_split(docs_dir: Path, split: str, tok: Any, out: Path, dtype: np.dtype) -> dict[str, Any]:
    n_tokens = n_docs = n_bytes = 0
    starts: list[int] = []
    bin_path = out / f"{split}.bin"

    def flush(texts: list[str], f: Any) -> None:
        nonlocal n_tokens, n_docs, n_bytes
        for ids in tok.encode_batch(texts):
            row = np.asarray([tok.bos_id, *ids, tok.eos_id], dtype=dtype)
            starts.append(n_tokens)
            row.tofile(f)
            n_tokens += len(row)
            n_docs += 1
        n_bytes += sum(len(t.encode("utf-8")) for t in texts)

    with open(bin_path, "wb") as f:
        texts: list[str] = []
        for doc in tqdm(
            read_documents(docs_dir, split), desc=f"pack {split}", unit="doc", mininterval=1.0, leave=False
        ):
            texts.append(doc["text"])
            if len(texts) == _BATCH_DOCS:
                flush(texts, f)
                texts = []
        if texts:
            flush(texts, f)
    if n_docs == 0:
        raise DataError(f"the {split} split of {docs_dir} holds no documents; re-run the data stage")
    np.save(out / f"{split}.docs.npy", np.asarray(starts, dtype=np.int64))
    return {
        "file": bin_path.name,
        "tokens": n_tokens,
        "documents": n_docs,
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / n_tokens,
        "sha256": sha256_file(bin_path),
    }


def run_pack(docs_dir: str | Path, tok: Any, out_dir: str | Path) -> dict[str, Any]:
    """Tokenize every split of a documents directory; return the index."""
    dtype = token_dtype(tok.vocab_size)
    index: dict[str, Any] = {
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "fingerprint": tok.fingerprint(),
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            index["splits"][split] = _pack_split(Path(docs_dir), split, tok, tmp, dtype)
            log.info("packed %s: %s", split, index["splits"][split])
        atomic_write_json(tmp / INDEX_FILE, index)
    return index

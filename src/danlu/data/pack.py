"""The pack stage: documents -> one flat token stream per split, <|bos|> doc <|eos|> after another.

Without a data mix each split keeps corpus order. With one (`data.mix`, see danlu.data.mixing) the
train split is laid out in mix order: it is tokenized once in corpus order (to learn the tokens per
document and per source, the sizes the weights apply to), then the documents `sample_mix` picks for
each phase, repeats included, are copied out phase after phase, shuffled within their phase (or, with
the mix's `order`, sorted by a score: a curriculum, danlu.data.curriculum). The validation split is
never mixed, so validation losses stay comparable across mixes.

Output directory (one atomic rename):
  <split>.bin        the stream, uint16 when the vocab fits in 16 bits, else uint32 (native little-endian)
  <split>.docs.npy   int64 start offset of every document in the stream
  index.json         dtype, vocab size and tokenizer fingerprint, and per split the token, document and
                     UTF-8 byte counts and the sha256 of the .bin file; with a mix, the train split's
                     "mix" holds the realized mix per phase and source (documents, tokens, share,
                     epochs) and each phase's token range [start, end), which the training loader
                     reads phase by phase
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from danlu.data.curriculum import meta_value, order_phase
from danlu.data.documents import SPLITS, read_documents
from danlu.data.mixing import MixSpec, plan_mix, sample_mix
from danlu.errors import DataError
from danlu.io import atomic_dir, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
_BATCH_DOCS = 256


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass
class _Stream:
    """A split tokenized in corpus order: each document's start, UTF-8 size and source."""

    starts: np.ndarray  # int64
    n_tokens: int
    doc_bytes: np.ndarray  # int64
    doc_source: np.ndarray  # int32, an index into `sources`
    sources: list[str]
    doc_score: np.ndarray | None = None  # float64, the curriculum's meta score (NaN where missing)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts, append=self.n_tokens)


def _tokenize_split(
    docs_dir: Path, split: str, tok: Any, bin_path: Path, dtype: np.dtype, score_key: str | None = None
) -> _Stream:
    starts: list[int] = []
    scores: list[float] = []
    doc_bytes: list[int] = []
    doc_source: list[int] = []
    codes: dict[str, int] = {}
    n_tokens = 0

    def flush(docs: list[dict[str, Any]], f: Any) -> None:
        nonlocal n_tokens
        for doc, ids in zip(docs, tok.encode_batch([d["text"] for d in docs]), strict=True):
            row = np.asarray([tok.bos_id, *ids, tok.eos_id], dtype=dtype)
            starts.append(n_tokens)
            row.tofile(f)
            n_tokens += len(row)
            doc_bytes.append(len(doc["text"].encode("utf-8")))
            doc_source.append(codes.setdefault(doc["source"], len(codes)))
            if score_key is not None:
                scores.append(meta_value(doc.get("meta") or {}, score_key))

    with open(bin_path, "wb") as f:
        docs: list[dict[str, Any]] = []
        for doc in tqdm(
            read_documents(docs_dir, split), desc=f"pack {split}", unit="doc", mininterval=1.0, leave=False
        ):
            docs.append(doc)
            if len(docs) == _BATCH_DOCS:
                flush(docs, f)
                docs = []
        if docs:
            flush(docs, f)
    if not starts:
        raise DataError(
            f"the {split} split of {docs_dir} holds no documents: the validation split holds out whole "
            "documents of a source, so some source needs at least 2. Add documents, or lower "
            "data.min_chars or loosen data.pipeline's filters, and run the data stage again"
        )
    return _Stream(
        np.asarray(starts, dtype=np.int64),
        n_tokens,
        np.asarray(doc_bytes, dtype=np.int64),
        np.asarray(doc_source, dtype=np.int32),
        list(codes),
        np.asarray(scores, dtype=np.float64) if score_key is not None else None,
    )


def _split_info(bin_path: Path, n_tokens: int, n_docs: int, n_bytes: int) -> dict[str, Any]:
    return {
        "file": bin_path.name,
        "tokens": n_tokens,
        "documents": n_docs,
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / n_tokens,
        "sha256": sha256_file(bin_path),
    }


def _pack_split(docs_dir: Path, split: str, tok: Any, out: Path, dtype: np.dtype) -> dict[str, Any]:
    """The split in corpus order."""
    bin_path = out / f"{split}.bin"
    stream = _tokenize_split(docs_dir, split, tok, bin_path, dtype)
    np.save(out / f"{split}.docs.npy", stream.starts)
    return _split_info(bin_path, stream.n_tokens, len(stream.starts), int(stream.doc_bytes.sum()))


def _choose(stream: _Stream, mix: MixSpec, total: int) -> list[np.ndarray]:
    """Per phase, the documents (indices into the corpus-order stream) to train on, in order."""
    lengths = stream.lengths
    members = {name: np.flatnonzero(stream.doc_source == code) for code, name in enumerate(stream.sources)}
    doc_sizes = {name: lengths[ids] for name, ids in members.items()}
    sizes = {name: float(v.sum()) for name, v in doc_sizes.items()}
    plan = plan_mix(sizes, total, mix.weights, mix.alpha, mix.max_epochs, mix.phases or None)
    planned = sum(sum(p.values()) for p in plan)
    if planned < total * (1 - 1e-9):
        log.warning(
            "data.mix.max_epochs=%g caps the mix at %d of the %d tokens asked for",
            mix.max_epochs,
            planned,
            total,
        )
    phases = [
        np.asarray([members[src][i] for src, i in phase], dtype=np.int64)
        for phase in sample_mix(doc_sizes, plan, mix.seed)
    ]
    if mix.order is None:
        return phases
    keys = stream.doc_score if mix.order.from_meta() else lengths
    assert keys is not None  # _pack_mixed_train reads the scores when the order needs them
    missing = int(np.isnan(keys).sum())
    if missing:
        log.warning(
            "data.mix.order: %d of %d train documents have no meta %r; they go last in their phase",
            missing,
            len(keys),
            mix.order.by,
        )
    return [order_phase(ids, keys, mix.order.descending) for ids in phases]


def _copy_documents(natural: np.ndarray, stream: _Stream, order: np.ndarray, bin_path: Path) -> None:
    ends = stream.starts + stream.lengths
    with open(bin_path, "wb") as f:
        for doc in order:
            f.write(natural[stream.starts[doc] : ends[doc]])


def _realized_mix(stream: _Stream, phases: list[np.ndarray], mix: MixSpec, total: int) -> dict[str, Any]:
    """What the train split holds, per phase and source, and each phase's token range."""
    lengths = stream.lengths
    available = {
        name: int(lengths[stream.doc_source == code].sum()) for code, name in enumerate(stream.sources)
    }
    taken = dict.fromkeys(stream.sources, 0)
    untils = [p.end for p in mix.phases] or [1.0]
    out_phases, start = [], 0
    for until, ids in zip(untils, phases, strict=True):
        n = int(lengths[ids].sum())
        per_source = {}
        for code, name in enumerate(stream.sources):
            mine = ids[stream.doc_source[ids] == code]
            tokens = int(lengths[mine].sum())
            taken[name] += tokens
            per_source[name] = {
                "documents": len(mine),
                "tokens": tokens,
                "share": round(tokens / n, 6) if n else 0.0,
                "epochs": round(tokens / available[name], 6),
            }
        out_phases.append(
            {"until": until, "start": start, "end": start + n, "documents": len(ids), "sources": per_source}
        )
        start += n
    return {
        "seed": mix.seed,
        "tokens_asked": total,
        "weights": mix.weights,
        "alpha": None if mix.weights is not None else mix.alpha,
        "max_epochs": None if math.isinf(mix.max_epochs) else mix.max_epochs,
        "order": None if mix.order is None else {"by": mix.order.by, "descending": mix.order.descending},
        "sources": {
            name: {
                "available_tokens": available[name],
                "tokens": taken[name],
                "epochs": round(taken[name] / available[name], 6),
            }
            for name in stream.sources
        },
        "phases": out_phases,
    }


def _pack_mixed_train(docs_dir: Path, tok: Any, out: Path, dtype: np.dtype, mix: MixSpec) -> dict[str, Any]:
    """The train split in mix order; the corpus-order stream is a temporary file inside `out`."""
    natural_path = out / "train.natural.bin"
    score_key = mix.order.by if mix.order is not None and mix.order.from_meta() else None
    stream = _tokenize_split(docs_dir, "train", tok, natural_path, dtype, score_key)
    total = mix.tokens if mix.tokens is not None else stream.n_tokens
    phases = _choose(stream, mix, total)
    order = np.concatenate(phases)
    if len(order) == 0:
        raise DataError(f"data.mix picked no documents from {docs_dir}; raise data.mix.tokens")
    bin_path = out / "train.bin"
    _copy_documents(np.memmap(natural_path, dtype=dtype, mode="r"), stream, order, bin_path)
    natural_path.unlink()
    lengths = stream.lengths[order]
    np.save(out / "train.docs.npy", np.cumsum(lengths) - lengths)
    info = _split_info(bin_path, int(lengths.sum()), len(order), int(stream.doc_bytes[order].sum()))
    info["mix"] = _realized_mix(stream, phases, mix, total)
    return info


def run_pack(
    docs_dir: str | Path, tok: Any, out_dir: str | Path, mix: MixSpec | None = None
) -> dict[str, Any]:
    """Tokenize every split of a documents directory (the train split in `mix` order, if given);
    return the index."""
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
            if split == "train" and mix is not None:
                info = _pack_mixed_train(Path(docs_dir), tok, tmp, dtype, mix)
            else:
                info = _pack_split(Path(docs_dir), split, tok, tmp, dtype)
            index["splits"][split] = info
            log.info("packed %s: %s", split, {k: v for k, v in info.items() if k != "mix"})
        atomic_write_json(tmp / INDEX_FILE, index)
    return index

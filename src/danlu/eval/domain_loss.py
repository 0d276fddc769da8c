"""Mean token loss per source (domain) of a documents split: the proxy and reference losses that DoReMi
reweights the data mix by (danlu.data.doremi), for a model dir or each checkpoint of a run.

Every document of a source counts by its tokens (the loss is nats per token over all of the source's
tokens in the split), scored in rolling windows of the model's context as perplexity does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from danlu.errors import ConfigError
from danlu.eval.perplexity import text_token_logprobs
from danlu.eval.scoring import Scorer


def domain_losses(
    scorer: Scorer, docs: Sequence[dict], max_docs_per_source: int | None = None
) -> dict[str, float]:
    """{source: mean token loss} over documents {text, source}; at most `max_docs_per_source` each."""
    nats: defaultdict[str, float] = defaultdict(float)
    tokens: defaultdict[str, int] = defaultdict(int)
    seen: defaultdict[str, int] = defaultdict(int)
    for doc in docs:
        src = doc["source"]
        if max_docs_per_source is not None and seen[src] >= max_docs_per_source:
            continue
        seen[src] += 1
        lp = text_token_logprobs(scorer, doc["text"])
        nats[src] -= float(np.sum(lp))
        tokens[src] += len(lp)
    if not tokens:
        raise ConfigError("domain losses need at least one document with tokens")
    return {src: nats[src] / tokens[src] for src in sorted(tokens) if tokens[src]}


def model_domain_losses(
    model_dir: str | Path,
    docs_dir: str | Path,
    split: str = "val",
    device: str = "cpu",
    max_docs_per_source: int | None = None,
) -> dict[str, float]:
    """Per-source losses of a model dir (or step checkpoint) on a split of a documents directory."""
    from danlu.data.documents import read_documents
    from danlu.model_dir import load_model

    model, tok, _ = load_model(model_dir, device)
    scorer = Scorer(model, tok, device=device)
    return domain_losses(scorer, list(read_documents(docs_dir, split)), max_docs_per_source)

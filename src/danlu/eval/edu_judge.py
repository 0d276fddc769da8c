"""Educational-value annotation by a judge model, as FineWeb-Edu annotates its classifier's training set.

The judge (any danlu chat model dir; the imported SmolLM2-135M-Instruct is the worked example) reads
FineWeb-Edu's additive 0-5 rubric prompt with a document in it. Instead of generating a justification
and parsing "Educational score: N", the reply is prefilled with "Educational score:" and the score is
read off the judge's next-token distribution over " 0" .. " 5": the expected score (probabilities
renormalized over the six digits) is a continuous label, steadier than a sampled one, and the argmax
is the integer label. Documents are truncated to `max_doc_tokens` so an annotation costs one bounded
forward; the rubric before the document is the same for every document, so its keys and values are
computed once and kept in a KV cache that each document continues.

Annotations are JSONL rows {id, source, text, score, label, probs}; danlu.data.edu trains the fast
classifier from them (data never loads a model: the judge lives here).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import ConfigError
from danlu.io import atomic_path

log = logging.getLogger(__name__)

# FineWeb-Edu's annotation prompt (HuggingFaceFW/fineweb-edu-classifier, utils/prompt.txt), verbatim
EDU_PROMPT = """Below is an extract from a web page. Evaluate whether the page has a high educational value \
and could be useful in an educational setting for teaching from primary school to grade school levels using \
the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of \
each criterion:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it \
includes some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align \
closely with educational standards. It might mix educational content with non-educational material, \
offering a superficial overview of potentially useful topics, or presenting information in a disorganized \
manner and incoherent writing style.
- Award a third point if the extract is appropriate for educational use and introduces key concepts \
relevant to school curricula. It is coherent though it may not be comprehensive or could include some \
extraneous information. It may resemble an introductory section of a textbook or a basic tutorial that is \
suitable for learning but has notable limitations like treating concepts that are too complex for grade \
school students.\x20
- Grant a fourth point if the extract highly relevant and beneficial for educational purposes for a level \
not higher than grade school, exhibiting a clear and consistent writing style. It could be similar to a \
chapter from a textbook or a tutorial, offering substantial educational content, including exercises and \
solutions, with minimal irrelevant information, and the concepts aren't too advanced for grade school \
students. The content is coherent, focused, and valuable for structured learning.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for \
teaching either at primary school or grade school. It follows detailed reasoning, the writing style is easy \
to follow and offers profound and thorough insights into the subject matter, devoid of any non-educational \
or complex content.

The extract:
{document}.

After examining the extract:\x20
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score:  <total points>"
"""
# The same additive 0-5 rubric in a few lines, for judges too small to follow the long one
SHORT_PROMPT = """Read the text below and rate its educational value for teaching in primary or grade school, \
using an additive 0-5 scale: 0 points for no educational value (casual chat, fiction, gibberish); add a \
point for each of: (1) basic information on an educational topic, (2) clear and coherent writing, (3) key \
concepts of a school subject, (4) textbook-like explanation, (5) outstanding lesson quality.

Text:
{document}

Give the total score."""
PROMPTS = {"fineweb": EDU_PROMPT, "short": SHORT_PROMPT}
PREFILL = "Educational score:"
SCORES = tuple(range(6))
_MARK = "\x00DOCUMENT\x00"


@dataclass(frozen=True)
class EduLabel:
    score: float  # expected score under the judge's distribution over 0..5
    label: int  # the most likely score
    probs: tuple[float, ...]  # P(0..5), renormalized over the six digits


def prompt_parts(tok: Any, prompt: str = EDU_PROMPT, prefill: str = PREFILL) -> tuple[str, str]:
    """The judge's whole input as (text before the document, text after it): the rubric in the chat
    template's user turn, then the assistant turn prefilled up to the score."""
    if "{document}" not in prompt:
        raise ConfigError("the edu rubric prompt needs a {document} field")
    messages = [{"role": "user", "content": prompt.replace("{document}", _MARK)}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True) + prefill
    before, after = rendered.split(_MARK)
    return before, after


def score_token_ids(tok: Any, prefill: str = PREFILL) -> list[int]:
    """The token of " 0" .. " 5" after the prefill (each must be one token, as in Llama-style vocabs)."""
    base = tok.encode(prefill)
    ids = []
    for s in SCORES:
        whole = tok.encode(f"{prefill} {s}")
        extra = whole[len(base) :]
        if whole[: len(base)] != base or len(extra) != 1:
            # "score:" + " 3" may tokenize as "score" ": 3"; then read the digit without its space
            extra = tok.encode(str(s))
            if len(extra) != 1:
                raise ConfigError(f"the judge's tokenizer splits the score {s} into {len(extra)} tokens")
        ids.append(extra[0])
    return ids


class EduJudge:
    """Scores documents with the rubric prompt; the shared prompt prefix is computed once."""

    def __init__(self, model: Any, tok: Any, max_doc_tokens: int = 256, prompt: str = EDU_PROMPT) -> None:
        if max_doc_tokens < 1:
            raise ConfigError(f"max_doc_tokens must be >= 1, got {max_doc_tokens}")
        from danlu.model.kv_cache import KVCache

        self.model, self.tok, self.max_doc_tokens = model, tok, max_doc_tokens
        before, after = prompt_parts(tok, prompt)
        self.prefix = tok.encode(before, allowed_special="all")
        self.suffix = tok.encode(after, allowed_special="all")
        self.score_ids = torch.tensor(score_token_ids(tok))
        total = len(self.prefix) + max_doc_tokens + len(self.suffix)
        if total > model.cfg.max_seq_len:
            raise ConfigError(
                f"the rubric ({len(self.prefix) + len(self.suffix)} tokens) and {max_doc_tokens} document "
                f"tokens exceed the judge's context of {model.cfg.max_seq_len}; lower max_doc_tokens"
            )
        self.cache = KVCache.for_model(model, batch=1, max_len=total)
        with torch.no_grad():
            model(torch.tensor([self.prefix], device=self.cache.k.device), cache=self.cache)

    @classmethod
    def from_dir(
        cls, path: str | Path, device: str = "cpu", max_doc_tokens: int = 256, prompt: str = "fineweb"
    ) -> EduJudge:
        """A judge from a chat model dir; `prompt` names one of PROMPTS."""
        from danlu.model_dir import load_model

        if prompt not in PROMPTS:
            raise ConfigError(f"edu judge prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        model, tok, _ = load_model(path, device)
        return cls(model, tok, max_doc_tokens, PROMPTS[prompt])

    def document_ids(self, text: str) -> list[int]:
        return self.tok.encode(text)[: self.max_doc_tokens]

    def seen_text(self, text: str) -> str:
        """The part of `text` the judge reads (its first max_doc_tokens tokens)."""
        return self.tok.decode(self.document_ids(text))

    def label(self, text: str) -> EduLabel:
        ids = self.document_ids(text) + self.suffix
        self.cache.lengths[:] = len(self.prefix)  # later keys are stale and never attended
        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.cache.k.device), cache=self.cache)
        logp = torch.log_softmax(logits[0, -1].float(), -1)[self.score_ids.to(logits.device)]
        p = torch.softmax(logp, -1).cpu().double().numpy()
        return EduLabel(float(np.dot(p, SCORES)), int(np.argmax(p)), tuple(float(x) for x in p))


# The rubric's two ends as plain-text descriptions the document continues (the "contrast" protocol)
EDU_DESCRIPTION = (
    "The following is an extract from a school textbook or tutorial with high educational value: it "
    "explains key concepts of a school subject clearly, like a lesson for primary or grade school students.\n\n"
)
NON_EDU_DESCRIPTION = (
    "The following is an extract with no educational value: casual conversation, entertainment or "
    "advertising, with nothing useful for teaching.\n\n"
)


class EduContrastJudge:
    """Scores a document by how much better the rubric's top description predicts it than its bottom one.

    A judge too small to follow the rubric prompt (SmolLM2-135M answers "1" to nearly everything) still
    models text: the margin is the mean per-token log-likelihood ratio of the document after the
    educational description versus after the non-educational one (a length-normalized log Bayes
    factor). The 0-5 score is 5 * sigmoid(margin / temperature); the temperature (nats per token) only
    sets how the margins spread over the scale, ranks do not depend on it. Both descriptions are
    computed once into the two rows of a KV cache that every document continues.
    """

    def __init__(
        self,
        model: Any,
        tok: Any,
        max_doc_tokens: int = 128,
        descriptions: tuple[str, str] = (EDU_DESCRIPTION, NON_EDU_DESCRIPTION),
        temperature: float = 0.05,
    ) -> None:
        if max_doc_tokens < 1 or temperature <= 0:
            raise ConfigError(
                f"need max_doc_tokens >= 1 and temperature > 0; got {max_doc_tokens}, {temperature}"
            )
        from danlu.model.kv_cache import KVCache

        self.model, self.tok, self.max_doc_tokens, self.temperature = model, tok, max_doc_tokens, temperature
        self.prefixes = [tok.encode(d) for d in descriptions]
        lens = [len(p) for p in self.prefixes]
        if max(lens) + max_doc_tokens > model.cfg.max_seq_len:
            raise ConfigError(f"descriptions and {max_doc_tokens} document tokens exceed the judge's context")
        self.prefix_lens = torch.tensor(lens)
        self.cache = KVCache.for_model(model, batch=2, max_len=max(lens) + max_doc_tokens)
        self.first_logp = []  # each description's next-token distribution: predicts the first doc token
        with torch.no_grad():
            for row, ids in enumerate(self.prefixes):
                logits = model(
                    torch.tensor([ids], device=self.cache.k.device),
                    cache=self.cache,
                    rows=slice(row, row + 1),
                )
                self.first_logp.append(torch.log_softmax(logits[0, -1].float(), -1))

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        device: str = "cpu",
        max_doc_tokens: int = 128,
        descriptions: tuple[str, str] = (EDU_DESCRIPTION, NON_EDU_DESCRIPTION),
    ) -> EduContrastJudge:
        from danlu.model_dir import load_model

        model, tok, _ = load_model(path, device)
        return cls(model, tok, max_doc_tokens, descriptions)

    def document_ids(self, text: str) -> list[int]:
        return self.tok.encode(text)[: self.max_doc_tokens]

    def seen_text(self, text: str) -> str:
        return self.tok.decode(self.document_ids(text))

    def token_margins(self, text: str) -> np.ndarray:
        """Per document token, log P(token | educational, before) - log P(token | not educational,
        before), in nats; `margin` is their mean. Parts of it (the first and second half) give the
        judge's split-half reliability."""
        ids = self.document_ids(text)
        if not ids:
            return np.zeros(0)
        self.cache.lengths[:] = self.prefix_lens  # later keys are stale and never attended
        x = torch.tensor([ids, ids], device=self.cache.k.device)
        with torch.no_grad():
            logp = torch.log_softmax(self.model(x, cache=self.cache).float(), -1)
        target = x[0]
        per_row = []
        for row in range(2):
            first = self.first_logp[row][target[0]].reshape(1)
            rest = logp[row, :-1].gather(-1, target[1:, None]).squeeze(-1)
            per_row.append(torch.cat([first, rest]))
        return (per_row[0] - per_row[1]).cpu().double().numpy()

    def margin(self, text: str) -> float:
        """Mean per-token log P(doc | educational) - log P(doc | not educational), in nats."""
        m = self.token_margins(text)
        return float(m.mean()) if len(m) else 0.0

    def label(self, text: str) -> EduLabel:
        m = self.margin(text)
        p_edu = 1.0 / (1.0 + float(np.exp(-m / self.temperature)))
        score = 5.0 * p_edu
        return EduLabel(score, round(score), (1.0 - p_edu, p_edu))


def annotate(
    judge: EduJudge | EduContrastJudge, docs: Iterable[dict[str, Any]], time_limit_s: float | None = None
) -> Iterator[dict[str, Any]]:
    """Annotation rows for documents {id, text, source}; stops early after `time_limit_s` seconds."""
    start = time.monotonic()
    for n, doc in enumerate(docs):
        if time_limit_s is not None and time.monotonic() - start > time_limit_s:
            log.warning("edu annotation stopped after %d documents (time limit %.0f s)", n, time_limit_s)
            return
        got = judge.label(doc["text"])
        yield {
            "id": doc.get("id", str(n)),
            "source": doc.get("source", ""),
            "text": judge.seen_text(doc["text"]),
            "score": got.score,
            "label": got.label,
            "probs": list(got.probs),
        }


def write_annotations(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Annotation rows as JSONL, written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path

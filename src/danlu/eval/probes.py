"""Linear probes on hidden states: how linearly a layer encodes part of speech (Brown corpus tags).

Each word of a tagged Brown sentence ("The/at jury/nn said/vbd ./.") is represented, at every layer, by
the residual stream at its last token (the words are encoded one by one, " word" after the first, which
is how a byte-level BPE with space-prefixed pre-tokens splits the sentence). The Brown tags are folded
into 12 coarse classes (nouns, proper nouns, verbs, auxiliaries, adjectives, ...). Sentences are split
into train / validation / test; a multinomial logistic regression per layer is fit on train, the layer
with the best validation accuracy is chosen, and its held-out test accuracy is reported beside two
baselines: the majority class, and each word's most frequent training tag (unknown words: the majority),
which a probe must beat to show that the states carry more than word identity.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu.errors import ConfigError, DataError
from danlu.eval.introspect import trace

# prefix of a (suffix-stripped) Brown tag -> coarse class; the first match wins
_COARSE = (
    ("np", "PROPN"), ("nn", "NOUN"), ("nr", "NOUN"), ("vb", "VERB"),
    ("be", "AUX"), ("hv", "AUX"), ("do", "AUX"), ("md", "AUX"),
    ("jj", "ADJ"), ("wrb", "ADV"), ("rb", "ADV"), ("ql", "ADV"), ("rp", "PRT"), ("to", "PRT"),
    ("in", "ADP"), ("at", "DET"), ("ap", "DET"), ("abn", "DET"), ("abx", "DET"), ("dt", "DET"), ("wdt", "DET"),
    ("cc", "CONJ"), ("cs", "CONJ"), ("cd", "NUM"), ("od", "NUM"), ("pp", "PRON"), ("wp", "PRON"), ("ex", "PRON"),
)  # fmt: skip
_PUNCT_TAGS = {".", ",", ":", "(", ")", "``", "''", "--", "'", "*"}


def coarse_tag(tag: str) -> str:
    """A Brown tag folded into a coarse class: "nn-tl" NOUN, "vbd" VERB, "ppss+ber" PRON, "." PUNCT."""
    tag = tag.lower()
    if tag in _PUNCT_TAGS:
        return "PUNCT"
    tag = tag.removeprefix("fw-").split("+")[0]
    tag = re.sub(r"(-tl|-hl|-nc)+$", "", tag).rstrip("*$")
    for prefix, name in _COARSE:
        if tag.startswith(prefix):
            return name
    return "X"


def parse_tagged(line: str) -> list[tuple[str, str]]:
    """(word, coarse tag) of a tagged sentence; the tag follows the last '/' of each token."""
    out = []
    for token in line.split():
        word, sep, tag = token.rpartition("/")
        if sep and word:
            out.append((word, coarse_tag(tag)))
    return out


def brown_sentences(root: Path, n: int, seed: int) -> list[list[tuple[str, str]]]:
    """n tagged sentences of 4 to 40 words drawn with seed from the Brown files under root."""
    files = sorted(root.rglob("c[a-r][0-9][0-9]"))
    if not files:
        raise DataError(f"no Brown corpus files under {root}; delete the folder to refetch it")
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(lines)
    out = []
    for line in lines:
        sent = parse_tagged(line)
        if 4 <= len(sent) <= 40:
            out.append(sent)
            if len(out) == n:
                break
    return out


def word_states(model: Any, tok: Any, sentence: Sequence[tuple[str, str]]) -> torch.Tensor:
    """[n_layer + 1, words, d]: each word's residual stream at its last token, at every layer."""
    ids: list[int] = []
    ends: list[int] = []
    for i, (word, _) in enumerate(sentence):
        ids += tok.encode(word if i == 0 else " " + word)
        ends.append(len(ids) - 1)
    ids, ends = ids[: model.cfg.max_seq_len], [e for e in ends if e < model.cfg.max_seq_len]
    hidden = trace(model, ids, attention=False).hidden
    return torch.stack(hidden)[:, ends]


def fit_softmax(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-3, steps: int = 100) -> Any:
    """Multinomial logistic regression on standardized x by L-BFGS; returns predict(x) -> labels."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(x.size(1), classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_, b_ = w.detach(), b.detach()
    return lambda xs: (((xs - mean) / std) @ w_ + b_).argmax(1)


@dataclass(frozen=True)
class ProbeResult:
    layer_acc: list[float]  # test accuracy of each layer's probe (0: the embeddings)
    val_acc: list[float]
    best_layer: int  # chosen by validation accuracy
    correct: list[float]  # per test word, 1.0 when the chosen layer's probe is right
    majority_acc: float
    word_baseline_acc: float
    n_train: int
    classes: list[str]


def pos_probe(
    model: Any, tok: Any, n_sentences: int = 400, seed: int = 1234, root: Path | None = None
) -> ProbeResult:
    """Probe every layer for coarse part of speech on n_sentences Brown sentences (60/20/20 split)."""
    if n_sentences < 10:
        raise ConfigError(f"the part-of-speech probe needs at least 10 sentences, got {n_sentences}")
    if root is None:
        from danlu.data.corpora import fetch_corpus

        root = fetch_corpus("brown")
    sents = brown_sentences(root, n_sentences, seed)
    cut1, cut2 = int(0.6 * len(sents)), int(0.8 * len(sents))
    parts = {"train": sents[:cut1], "val": sents[cut1:cut2], "test": sents[cut2:]}
    feats: dict[str, torch.Tensor] = {}
    words: dict[str, list[str]] = {}
    tags: dict[str, list[str]] = {}
    for name, part in parts.items():
        states = [word_states(model, tok, s) for s in part]
        feats[name] = torch.cat(states, dim=1)  # [L + 1, words, d]
        kept = [s[: st.size(1)] for s, st in zip(part, states, strict=True)]
        words[name] = [w.lower() for s in kept for w, _ in s]
        tags[name] = [t for s in kept for _, t in s]
    classes = sorted(set(tags["train"]))
    index = {c: i for i, c in enumerate(classes)}
    y = {k: torch.tensor([index.get(t, -1) for t in v]) for k, v in tags.items()}
    majority = Counter(tags["train"]).most_common(1)[0][0]
    by_word: dict[str, Counter[str]] = defaultdict(Counter)
    for w, t in zip(words["train"], tags["train"], strict=True):
        by_word[w][t] += 1
    word_guess = [by_word[w].most_common(1)[0][0] if w in by_word else majority for w in words["test"]]
    layer_acc, val_acc, predictions = [], [], []
    for layer in range(feats["train"].size(0)):
        predict = fit_softmax(feats["train"][layer], y["train"], len(classes))
        val_acc.append(float((predict(feats["val"][layer]) == y["val"]).float().mean()))
        pred = predict(feats["test"][layer])
        predictions.append(pred)
        layer_acc.append(float((pred == y["test"]).float().mean()))
    best = max(range(len(val_acc)), key=lambda i: (val_acc[i], -i))
    return ProbeResult(
        layer_acc=layer_acc,
        val_acc=val_acc,
        best_layer=best,
        correct=(predictions[best] == y["test"]).float().tolist(),
        majority_acc=sum(t == majority for t in tags["test"]) / len(tags["test"]),
        word_baseline_acc=sum(g == t for g, t in zip(word_guess, tags["test"], strict=True))
        / len(tags["test"]),
        n_train=len(tags["train"]),
        classes=classes,
    )

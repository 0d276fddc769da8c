"""Pretraining objectives: each turns a packed batch (x, y = x shifted by one) into the model's inputs,
its targets (IGNORE_INDEX where no loss is taken) and an attention mask (None: causal).

  causal     next-token prediction (label smoothing and z-loss are options of the loss)
  mlm        BERT's masked LM (Devlin et al. 2019): mlm_rate of the non-special tokens are chosen; of
             those 80% become <|mask|>, 10% a random token, 10% stay; the loss is on the chosen tokens,
             predicted at their own positions; attention is bidirectional
  prefix_lm  a random prefix per row (Raffel et al. 2020 / UniLM): bidirectional attention inside the
             prefix, causal after it, loss only on the tokens after the prefix
  fim        fill-in-the-middle (Bavarian et al. 2022), per document of the window with probability
             fim_rate: PSM  <|fim_prefix|> pre <|fim_suffix|> suf <|fim_middle|> mid
             or, with probability fim_spm_rate, SPM  <|fim_prefix|><|fim_suffix|> suf <|fim_middle|> pre mid;
             then causal LM on the rearranged window (the window's end is cut to keep its length)
  span       T5 span corruption (Raffel et al. 2020) for a decoder-only model: the corrupted text (each
             noise span replaced by a sentinel) is a bidirectional prefix, followed by the targets
             (each sentinel, then its span); loss on the targets; noise density span_noise, mean span
             length span_mean, at most N_SENTINELS spans per row

Randomness comes from a generator seeded by (seed, step, micro-batch), so a resumed run draws exactly
what an uninterrupted one does without storing any state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from danlu.errors import TokenizerError
from danlu.train.config import OBJECTIVES
from danlu.train.losses import IGNORE_INDEX


@dataclass
class ObjectiveBatch:
    inputs: torch.Tensor  # [B, T] token ids
    targets: torch.Tensor  # [B, T] token ids or IGNORE_INDEX
    attn_mask: torch.Tensor | None  # bool, True = may attend: [B, 1, T, T] or [T, T]; None = causal


def _token(tok: object, name: str) -> int:
    ids: dict[str, int] = tok.special_tokens  # type: ignore[attr-defined]
    if name not in ids:
        raise TokenizerError(
            f"the tokenizer has no {name} token, which this objective needs; retrain the tokenizer "
            "(danlu tokenizer train) so that it has the objective tokens"
        )
    return ids[name]


class Objective:
    def __init__(self, kind: str, tokenizer: object, seed: int = 0, **options: float):
        if kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {kind!r}")
        self.kind, self.seed = kind, seed
        self.mlm_rate = float(options.get("mlm_rate", 0.15))
        self.fim_rate = float(options.get("fim_rate", 0.5))
        self.fim_spm_rate = float(options.get("fim_spm_rate", 0.5))
        self.span_noise = float(options.get("span_noise", 0.15))
        self.span_mean = float(options.get("span_mean", 3.0))
        specials = sorted(tokenizer.special_tokens.values())  # type: ignore[attr-defined]
        self.vocab_size: int = tokenizer.vocab_size  # type: ignore[attr-defined]
        self.first_text_id = specials[-1] + 1  # danlu's special tokens come first, text tokens after
        self.bos, self.eos = tokenizer.bos_id, tokenizer.eos_id  # type: ignore[attr-defined]
        self.pad = tokenizer.pad_id  # type: ignore[attr-defined]
        if kind == "mlm":
            self.mask = _token(tokenizer, "<|mask|>")
        if kind == "fim":
            self.fim = [_token(tokenizer, f"<|fim_{p}|>") for p in ("prefix", "suffix", "middle")]
        if kind == "span":
            names = [n for n in tokenizer.special_tokens if n.startswith("<|sentinel_")]  # type: ignore[attr-defined]
            if not names:
                _token(tokenizer, "<|sentinel_0|>")
            self.sentinels = [_token(tokenizer, f"<|sentinel_{i}|>") for i in range(len(names))]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int, micro: int = 0) -> ObjectiveBatch:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step * 1_009 + micro) % 2**63)
        if self.kind == "causal":
            return ObjectiveBatch(x, y, None)
        if self.kind == "mlm":
            return self._mlm(x, g)
        if self.kind == "prefix_lm":
            return self._prefix_lm(x, y, g)
        window = torch.cat([x, y[:, -1:]], dim=1)  # the T + 1 tokens the batch was cut from
        if self.kind == "fim":
            return _shifted(torch.stack([self._fim_row(row, g) for row in window]), None, 0)
        return self._span(window, g)

    # --- the objectives --------------------------------------------------------------------------

    def _mlm(self, x: torch.Tensor, g: torch.Generator) -> ObjectiveBatch:
        chosen = (torch.rand(x.shape, generator=g) < self.mlm_rate) & (x >= self.first_text_id)
        how = torch.rand(x.shape, generator=g)
        inputs = x.clone()
        inputs[chosen & (how < 0.8)] = self.mask
        swap = chosen & (how >= 0.8) & (how < 0.9)
        inputs[swap] = torch.randint(self.first_text_id, self.vocab_size, (int(swap.sum()),), generator=g)
        targets = torch.where(chosen, x, torch.full_like(x, IGNORE_INDEX))
        T = x.size(1)
        return ObjectiveBatch(inputs, targets, torch.ones(T, T, dtype=torch.bool))

    def _prefix_lm(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> ObjectiveBatch:
        B, T = x.shape
        prefix = torch.randint(1, T, (B,), generator=g)  # input positions 0..prefix-1 see each other
        targets = y.clone()
        # position t predicts token t + 1, which lies inside the prefix for t < prefix - 1
        targets[torch.arange(T)[None, :] < (prefix[:, None] - 1)] = IGNORE_INDEX
        return ObjectiveBatch(x, targets, prefix_mask(prefix, T))

    def _fim_row(self, row: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        pieces = []
        ends = (row == self.eos).nonzero().flatten().tolist()
        starts = [0] + [e + 1 for e in ends]
        for a, b in zip(starts, [*ends, len(row) - 1], strict=True):
            doc = row[a : b + 1]
            if len(doc) == 0:
                continue
            head = doc[:1] if doc[0] == self.bos else doc[:0]
            tail = doc[-1:] if doc[-1] == self.eos else doc[:0]
            body = doc[len(head) : len(doc) - len(tail)]
            if len(body) < 2 or torch.rand((), generator=g) >= self.fim_rate:
                pieces.append(doc)
                continue
            i, j = sorted(torch.randint(0, len(body) + 1, (2,), generator=g).tolist())
            pre, mid, suf = body[:i], body[i:j], body[j:]
            fp, fs, fm = (torch.tensor([t]) for t in self.fim)
            if torch.rand((), generator=g) < self.fim_spm_rate:
                parts = [head, fp, fs, suf, fm, pre, mid, tail]
            else:
                parts = [head, fp, pre, fs, suf, fm, mid, tail]
            pieces.append(torch.cat(parts))
        return torch.cat(pieces)[: len(row)]

    def _span(self, window: torch.Tensor, g: torch.Generator) -> ObjectiveBatch:
        B, n_total = window.shape
        n, n_noise, n_spans = self._span_sizes(n_total)
        rows = []
        for row in window[:, :n]:
            noise = _random_segments(n_noise, n_spans, g)
            keep = _random_segments(n - n_noise, n_spans, g)
            corrupted, target, pos = [], [], 0
            for k in range(n_spans):
                corrupted.append(row[pos : pos + keep[k]])
                pos += keep[k]
                sentinel = torch.tensor([self.sentinels[k]])
                corrupted.append(sentinel)
                target += [sentinel, row[pos : pos + noise[k]]]
                pos += noise[k]
            seq = torch.cat(corrupted + target)
            rows.append(torch.cat([seq, torch.full((n_total - len(seq),), self.pad, dtype=seq.dtype)]))
        prefix = n - n_noise + n_spans  # the corrupted text's length, the same in every row
        batch = _shifted(torch.stack(rows), prefix_mask(torch.full((B,), prefix), n_total - 1), prefix - 1)
        batch.targets[:, n + 2 * n_spans - 1 :] = IGNORE_INDEX  # padding
        return batch

    def _span_sizes(self, n_total: int) -> tuple[int, int, int]:
        """(tokens used, noise tokens, spans): the most tokens whose corrupted text plus targets fit."""
        for n in range(n_total, 1, -1):
            n_noise = max(1, min(round(n * self.span_noise), n - 1))
            n_spans = max(1, min(round(n_noise / self.span_mean), len(self.sentinels), n_noise, n - n_noise))
            if n + 2 * n_spans <= n_total:
                return n, n_noise, n_spans
        raise ValueError(f"a window of {n_total} tokens is too short for span corruption")


def _shifted(seq: torch.Tensor, attn_mask: torch.Tensor | None, first_target: int) -> ObjectiveBatch:
    """Inputs seq[:, :-1] and next-token targets seq[:, 1:], no loss before position first_target."""
    inputs, targets = seq[:, :-1].contiguous(), seq[:, 1:].clone()
    targets[:, :first_target] = IGNORE_INDEX
    return ObjectiveBatch(inputs, targets, attn_mask)


def prefix_mask(prefix: torch.Tensor, T: int) -> torch.Tensor:
    """[B, 1, T, T] bool: query i sees key j when j <= i (causal) or j < prefix (the bidirectional part)."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return ((j <= i)[None] | (j[None] < prefix[:, None, None]))[:, None]


def _random_segments(total: int, n: int, g: torch.Generator) -> list[int]:
    """total split into n positive lengths uniformly at random (T5's random_spans_noise_mask)."""
    if n == 1:
        return [total]
    cuts = (torch.randperm(total - 1, generator=g)[: n - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, total]
    return [bounds[k + 1] - bounds[k] for k in range(n)]

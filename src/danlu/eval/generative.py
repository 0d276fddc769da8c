"""Generative tasks: greedy decoding until a stop string, answer extraction and lm-eval's exact match.

GSM8K follows lm-eval's gsm8k.yaml filters: "strict" takes the number after "#### " (for the chain-of-
thought prompt, after "The answer is"), "flexible" takes the last number in the output; both are
compared after removing lm-eval's regexes_to_ignore. TriviaQA and NQ-Open compare the output (first
line, stripped) against every alias with case and punctuation ignored, and report SQuAD token F1.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from danlu.eval.metrics import token_f1
from danlu.infer.sampling import generate

GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_COT_STRICT = re.compile(r"[Tt]he answer is (\-?[0-9\.\,]+)")
FLEXIBLE_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
NQ_IGNORE = ("\\b(?:The |the |An |A |The |a |an )",)
_PUNCT = str.maketrans("", "", string.punctuation)


def greedy_until(
    model: Any, tok: Any, prompt: str, until: Sequence[str], max_new_tokens: int
) -> tuple[str, int]:
    """Greedy continuation of prompt, cut before the first stop string; (text, tokens generated)."""
    return sample_until(model, tok, prompt, until, max_new_tokens)


def sample_until(
    model: Any,
    tok: Any,
    prompt: str,
    until: Sequence[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
) -> tuple[str, int]:
    """A continuation of prompt (greedy at temperature 0, else sampled with `seed`), cut before the first
    stop string; (text, tokens generated)."""
    ids = tok.encode(prompt)
    out: list[int] = []
    stops = set(until)
    eos = getattr(tok, "eos_id", None)
    text = ""
    for token in generate(
        model,
        ids,
        max_new_tokens,
        temperature=temperature,
        stop_ids=(eos,) if eos is not None else (),
        seed=seed,
    ):
        if token == eos:
            break
        out.append(token)
        text = tok.decode(out)
        if any(s in text for s in stops):
            break
    for s in stops:
        text = text.split(s)[0]
    return text, len(out)


def extract_number(text: str, strict: re.Pattern[str] | None) -> str:
    """lm-eval's regex filter: the strict pattern's first match, or (strict=None) the last number."""
    if strict is not None:
        m = strict.search(text)
        return m.group(1) if m else "[invalid]"
    matches = FLEXIBLE_NUMBER.findall(text)
    if not matches:
        return "[invalid]"
    last = matches[-1]
    return next(g for g in last if g) if isinstance(last, tuple) else last


def lm_eval_exact_match(
    prediction: str,
    reference: str,
    ignore: Sequence[str] = (),
    ignore_case: bool = True,
    ignore_punctuation: bool = False,
) -> float:
    """lm-eval's exact_match metric (HF evaluate's): regexes removed, then case and punctuation."""
    p, r = prediction, reference
    for pattern in ignore:
        p, r = re.sub(pattern, "", p), re.sub(pattern, "", r)
    if ignore_case:
        p, r = p.lower(), r.lower()
    if ignore_punctuation:
        p, r = p.translate(_PUNCT), r.translate(_PUNCT)
    return float(p == r)


def score_generation(task: str, output: str, answers: Sequence[str]) -> dict[str, float]:
    """Per-item metrics of a generative task's output."""
    if task in ("gsm8k", "gsm8k_cot"):
        strict = GSM8K_STRICT if task == "gsm8k" else GSM8K_COT_STRICT
        ref = answers[0]
        return {
            "exact_match_strict": lm_eval_exact_match(extract_number(output, strict), ref, GSM8K_IGNORE),
            "exact_match": lm_eval_exact_match(extract_number(output, None), ref, GSM8K_IGNORE),
        }
    answer = output.strip()  # lm-eval's remove_whitespace + take_first filters
    ignore = NQ_IGNORE if task == "nq_open" else ()
    em = max((lm_eval_exact_match(answer, a, ignore, True, True) for a in answers), default=0.0)
    return {"exact_match": em, "f1": token_f1(answer, list(answers)) if answers else 0.0}


def batched_greedy_until(
    model: Any, tok: Any, prompts: Sequence[str], until: Sequence[str], max_new_tokens: int, max_batch: int
) -> list[tuple[str, int]]:
    """greedy_until for every prompt at once, through the continuous-batching engine: each prompt is
    cropped as `generate` crops it (its last max_seq_len - min(max_new, max_seq_len // 2) tokens) and
    decodes until its stop strings, eos, max_new_tokens or the end of the context."""
    from danlu.infer.engine import Engine
    from danlu.infer.params import SamplingParams

    context = model.cfg.max_seq_len
    room = min(max_new_tokens, context // 2)
    eos = getattr(tok, "eos_id", None)
    if not prompts:
        return []
    ids, params = [], []
    for prompt in prompts:
        p = tok.encode(prompt)[-max(1, context - room) :]
        ids.append(p)
        params.append(
            SamplingParams(
                max_tokens=min(max_new_tokens, context - len(p)),
                temperature=0.0,
                stop=list(until),
                stop_token_ids=[eos] if eos is not None else [],
                ignore_eos=True,  # only eos ends the text, as in greedy_until (not a chat end-of-turn)
            )
        )
    # slots as long as the longest request needs (a 2k-8k context per slot would waste the cache)
    needed = min(context, max(len(p) + q.max_tokens for p, q in zip(ids, params, strict=True)))
    # every prompt is queued at once, so the queue holds them all (a full-size task has ~1k-4k)
    engine = Engine(
        model, tok, max_batch=max(1, min(max_batch, len(prompts))), max_len=needed, max_queue=len(prompts)
    )
    out = []
    for c in engine.generate(ids, params):
        tokens = [t for t in c.token_ids if t != eos]
        text = tok.decode(tokens)
        for s in until:
            text = text.split(s)[0]
        out.append((text, len(tokens)))
    return out

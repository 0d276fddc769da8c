"""One entry for every decoding method of `danlu generate`: its flags, and the text it streams.

Sampling and greedy (with penalties, bias, n-gram bans, stop strings and constraints) run on the
engine; beam search, contrastive and speculative decoding run their own loops on their own caches.
Stop strings and the tokenizer's end ids end every method the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError, DataError
from danlu.infer.layout import decode_layout
from danlu.infer.params import SamplingParams
from danlu.infer.processors import sampling_only
from danlu.infer.stops import TextStream

log = logging.getLogger(__name__)


def add_decoding_flags(p: argparse.ArgumentParser) -> None:
    """The decoding flags of `danlu generate` (beside the model, temperature, top-k/p, seed)."""
    g = p.add_argument_group("sampling")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p * the top probability")
    g.add_argument("--typical-p", type=float, default=1.0, help="locally typical sampling mass (1 disables)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL's penalty (1 disables)")
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--no-repeat-ngram", type=int, default=0, help="ban repeating any n-gram of this size")
    g.add_argument("--logit-bias", action="append", default=[], metavar="ID=VALUE", help="repeatable")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    c = p.add_argument_group("constrained output (one of)")
    c.add_argument("--regex", default=None, help="the output matches this regex in full")
    c.add_argument(
        "--choice", action="append", default=None, metavar="TEXT", help="one of these (repeatable)"
    )
    c.add_argument("--json-schema", default=None, metavar="FILE", help="JSON that matches the schema in FILE")
    c.add_argument("--json", action="store_true", help="any JSON object")
    m = p.add_argument_group("decoding method (default: sampling; temperature 0 is greedy)")
    m.add_argument("--beams", type=int, default=1, help="beam search with this many beams")
    m.add_argument("--length-penalty", type=float, default=1.0, help="beam score = logprob / len**this")
    m.add_argument("--early-stopping", choices=["true", "false", "never"], default="false")
    m.add_argument("--num-return", type=int, default=1, help="beam search: print this many best beams")
    m.add_argument("--draft", default=None, metavar="MODEL_DIR", help="speculative decoding with this draft")
    m.add_argument("--draft-k", type=int, default=4, help="draft tokens per speculative round")
    m.add_argument("--amateur", default=None, metavar="MODEL_DIR", help="contrastive decoding against it")
    m.add_argument("--alpha", type=float, default=0.1, help="contrastive plausibility cutoff")


def constraint_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    given = [
        name
        for name, on in (
            ("--regex", args.regex is not None),
            ("--choice", args.choice is not None),
            ("--json-schema", args.json_schema is not None),
            ("--json", args.json),
        )
        if on
    ]
    if len(given) > 1:
        raise ConfigError(f"give one constraint, not {' and '.join(given)}")
    if args.regex is not None:
        return {"type": "regex", "pattern": args.regex}
    if args.choice is not None:
        return {"type": "choice", "choices": args.choice}
    if args.json_schema is not None:
        try:
            schema = json.loads(Path(args.json_schema).read_text(encoding="utf-8"))
        except OSError as e:
            raise DataError(f"cannot read the JSON schema {args.json_schema}: {e.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{args.json_schema} is not valid JSON: {e}") from None
        return {"type": "json_schema", "schema": schema}
    return {"type": "json"} if args.json else None


def _logit_bias(items: list[str]) -> dict[int, float]:
    out = {}
    for item in items:
        key, sep, value = item.replace(":", "=", 1).partition("=")
        try:
            out[int(key)] = float(value)
        except ValueError:
            raise ConfigError(f"--logit-bias takes TOKEN_ID=VALUE (e.g. 42=-100), got {item!r}") from None
        if not sep:
            raise ConfigError(f"--logit-bias takes TOKEN_ID=VALUE (e.g. 42=-100), got {item!r}")
    return out


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    """SamplingParams from the generate flags (validated there, with the method's flags)."""
    _method(args)
    return SamplingParams(
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        typical_p=args.typical_p,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram,
        logit_bias=_logit_bias(args.logit_bias),
        stop=list(args.stop),
        seed=args.seed,
        constraint=constraint_from_args(args),
    )


def end_ids(tokenizer: Any, params: SamplingParams) -> set[int]:
    """The ids that end generation: the request's own, and the tokenizer's unless ignore_eos."""
    ids = set(params.stop_token_ids)
    if not params.ignore_eos:
        ids.add(tokenizer.eos_id)
        if hasattr(tokenizer, "chat_stop_ids"):
            ids |= set(tokenizer.chat_stop_ids())
    return ids


def stream_text(
    tokenizer: Any, tokens: Iterable[int], params: SamplingParams, ends: set[int]
) -> Iterator[str]:
    """The text of a token stream up to an end id or a stop string."""
    text = TextStream(tokenizer, params.stop, params.skip_special_tokens)
    for token in tokens:
        if token in ends:
            break
        piece, stopped = text.push(token)
        if piece:
            yield piece
        if stopped:
            return
    tail = text.finish()
    if tail:
        yield tail


def fit_context(prompt: list[int], params: SamplingParams, context: int) -> tuple[list[int], SamplingParams]:
    """Crop a prompt that leaves too little room (from the left, keeping room for all new tokens or at
    least half the context) and cap max_tokens at the room left, saying so."""
    if len(prompt) + params.max_tokens <= context:
        return prompt, params
    room = max(1, min(params.max_tokens, context // 2))
    if len(prompt) > context - room:
        log.warning(
            "the prompt (%d tokens) is cropped to its last %d to leave room", len(prompt), context - room
        )
        prompt = prompt[-(context - room) :]
    if len(prompt) + params.max_tokens > context:
        log.warning(
            "max_new_tokens is capped at %d by the model's context of %d", context - len(prompt), context
        )
    return prompt, replace(params, max_tokens=min(params.max_tokens, context - len(prompt)))


def _method(args: argparse.Namespace) -> str:
    chosen = [
        name
        for name, on in (("beam", args.beams > 1), ("speculative", args.draft), ("contrastive", args.amateur))
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"choose one decoding method, not {' and '.join(chosen)}")
    if args.beams < 1 or args.num_return < 1 or args.draft_k < 1:
        raise ConfigError("--beams, --num-return and --draft-k must be >= 1")
    if not 0 < args.alpha <= 1:
        raise ConfigError(f"--alpha must be in (0, 1], got {args.alpha}")
    return chosen[0] if chosen else "sample"


def run_generate(args: argparse.Namespace, model: Any, tokenizer: Any) -> Iterator[str]:
    """Stream the text `danlu generate` prints after the prompt (beams: one block per beam)."""
    from danlu.model_dir import load_model

    params = params_from_args(args)
    method = _method(args)
    if method != "sample" and not sampling_only(params):
        raise ConfigError(
            f"{method} decoding takes no penalties, --logit-bias, --no-repeat-ngram or constraints; "
            "use plain sampling for those"
        )
    prompt, params = fit_context(tokenizer.encode(args.prompt, bos=True), params, model.cfg.max_seq_len)
    ends = end_ids(tokenizer, params)
    if method == "sample":
        from danlu.infer.engine import Engine

        engine = Engine(model, tokenizer, max_batch=1, prefix_cache=False)
        for event in engine.stream(prompt, params):
            if event.text:
                yield event.text
        return
    if method == "beam":
        from danlu.infer.beam import beam_search

        early = {"true": True, "false": False, "never": "never"}[args.early_stopping]
        hyps = beam_search(
            model, prompt, args.beams, params.max_tokens, ends, args.length_penalty, early, args.num_return
        )
        for i, h in enumerate(hyps):
            if len(hyps) > 1:
                yield f"\n--- beam {i + 1}: score {h.score:.4f} ---\n"
            yield from stream_text(tokenizer, h.tokens, params, ends)
        return
    other_dir = args.draft or args.amateur
    other, other_tok, _ = load_model(other_dir, model.embed.weight.device)
    decode_layout(other.requires_grad_(False))
    if other_tok.fingerprint() != tokenizer.fingerprint():
        raise ConfigError(f"{other_dir} has a different tokenizer than the model; both need the same one")
    if method == "contrastive":
        from danlu.infer.contrastive import contrastive_generate

        tokens = contrastive_generate(model, other, prompt, params.max_tokens, args.alpha, end_ids=ends)
        yield from stream_text(tokenizer, tokens, params, ends)
        return
    from danlu.infer.speculative import SpeculativeStats, speculative_generate

    stats = SpeculativeStats()
    yield from stream_text(
        tokenizer, speculative_generate(model, other, prompt, params, args.draft_k, ends, stats), params, ends
    )
    log.info(
        "speculative decoding: %d of %d drafted tokens accepted (%.0f%%) in %d rounds",
        stats.accepted,
        stats.drafted,
        100 * stats.acceptance_rate,
        stats.rounds,
    )

"""`danlu prefs ACTION`: preference and SFT data from a model's own outputs and from AI feedback.

    danlu prefs samples    MODEL --prompts olmo --out pairs.jsonl          reference over own sample
    danlu prefs rlaif      --judge runs/smollm2 --policy MODEL --prompts chitchat --out pairs.jsonl
    danlu prefs rlaif      --judge MODEL --candidates cands.jsonl --out pairs.jsonl
    danlu prefs constitute MODEL --prompts chatterbot --sft-out sft.jsonl --pairs-out pairs.jsonl

--prompts takes any SFT source (olmo[:task], chatterbot, chitchat, a .jsonl of messages, Alpaca,
ShareGPT or {prompt} records). Pairs files are what `danlu align` reads (align.data.sources), SFT
files what `danlu sft` reads (sft.data.sources). Each action prints its counts and writes them to
OUT.report.json; an existing output is kept unless --force.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from danlu.errors import OutputExistsError


def _generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompts", help="SFT source of the prompts: olmo[:task], chatterbot, chitchat or a .jsonl"
    )
    p.add_argument("--limit", type=int, default=64, help="prompts drawn from the source (0: all)")
    p.add_argument("--max-tokens", type=int, default=96, help="longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--batch", type=int, default=8, help="replies generated together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="replace existing output files")


def add_prefs_parser(sub: Any) -> argparse.ArgumentParser:
    """The `prefs` verb and its actions, on the CLI's sub-parsers."""
    prefs = sub.add_parser("prefs", help="preference / SFT data from own samples, RLAIF, constitutional AI")
    prefs.set_defaults(fn=cmd_prefs)
    actions = prefs.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("samples", help="pairs: the reference answer over MODEL's own sample")
    p.add_argument("model", help="model dir that samples")
    _generation_args(p)
    p.add_argument("--out", required=True, help="pairs .jsonl to write")

    p = actions.add_parser("rlaif", help="pairs labelled by a judge model, both answer orders")
    p.add_argument("--judge", required=True, help="judge model dir (e.g. runs/smollm2)")
    p.add_argument("--policy", help="model dir whose samples are judged (with --prompts)")
    p.add_argument("--candidates", help="a .jsonl of {prompt, responses: [...]} instead of --policy")
    p.add_argument("--n", type=int, default=2, help="samples per prompt from --policy")
    p.add_argument("--rubric", help="rubric text file with {question}, {answer_a}, {answer_b}")
    p.add_argument("--verdict", choices=("choice", "free"), default="choice",
                   help="choice: the reply is constrained to [[A]]/[[B]]/[[C]]; free: parsed from text")  # fmt: skip
    _generation_args(p)
    p.add_argument("--out", required=True, help="pairs .jsonl to write")

    p = actions.add_parser("constitute", help="critique-and-revise under principles: SFT data and pairs")
    p.add_argument("model", help="model dir that answers, critiques and revises")
    p.add_argument("--principles", help=".json/.jsonl/.yaml list of {name, critique, revision}")
    p.add_argument("--rounds", type=int, default=1, help="critique-revision rounds per prompt")
    _generation_args(p)
    p.add_argument("--sft-out", required=True, help="messages .jsonl to write (danlu sft)")
    p.add_argument("--pairs-out", required=True, help="revised-over-original pairs .jsonl (danlu align)")
    return prefs


def _outputs(args: argparse.Namespace, *paths: str) -> list[Path]:
    out = [Path(p) for p in paths]
    for p in out:
        if p.exists() and not args.force:
            raise OutputExistsError(f"{p} exists; choose another path or pass --force")
    return out


def _model(args: argparse.Namespace, path: str):
    from danlu.align.generate import ChatModel

    return ChatModel.from_dir(
        path, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        max_batch=args.batch, device=args.device,
    )  # fmt: skip


def _items(args: argparse.Namespace):
    from danlu.align.prompts import prompt_items
    from danlu.errors import ConfigError

    if not args.prompts:
        raise ConfigError(f"danlu prefs {args.action} needs --prompts (an SFT source or a .jsonl)")
    return prompt_items(args.prompts, args.limit, args.seed)


def _finish(report: dict[str, Any], written: list[Path]) -> None:
    from danlu.io import atomic_write_json

    atomic_write_json(written[0].with_suffix(".report.json"), report)
    print(json.dumps(report, indent=1))
    for p in written:
        print(f"wrote {p}")


def cmd_prefs(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.align.prompts import write_jsonl
    from danlu.errors import ConfigError

    if args.action == "samples":
        from danlu.align.prompts import sample_pairs

        (out,) = _outputs(args, args.out)
        items, skipped = _items(args)
        pairs, counts = sample_pairs(_model(args, args.model), items, args.batch, args.seed)
        write_jsonl(out, pairs)
        _finish({"model": args.model, "prompts_skipped": skipped, **counts}, [out])
    elif args.action == "rlaif":
        from danlu.align.generate import VerdictJudge
        from danlu.align.rlaif import read_candidates, read_rubric, rlaif_pairs, sample_candidates

        (out,) = _outputs(args, args.out)
        if bool(args.policy) == bool(args.candidates):
            raise ConfigError(
                "danlu prefs rlaif needs exactly one of --policy (with --prompts) or --candidates"
            )
        rubric = read_rubric(args.rubric)
        if args.candidates:
            cands, skipped = read_candidates(args.candidates)
        else:
            items, skipped = _items(args)
            cands = sample_candidates(_model(args, args.policy), items, args.n, args.batch, args.seed)
        judge = VerdictJudge(_model(args, args.judge), args.verdict)
        pairs, report = rlaif_pairs(judge, cands, rubric, judge_name=str(args.judge))
        write_jsonl(out, pairs)
        _finish({"judge": args.judge, "policy": args.policy, "skipped": skipped, **report}, [out])
    else:
        from danlu.align.constitution import constitute, load_principles

        sft_out, pairs_out = _outputs(args, args.sft_out, args.pairs_out)
        principles = load_principles(args.principles)
        items, skipped = _items(args)
        sft, pairs, report = constitute(
            _model(args, args.model), items, principles, args.rounds, args.batch, args.seed
        )
        write_jsonl(sft_out, sft)
        write_jsonl(pairs_out, pairs)
        _finish({"model": args.model, "prompts_skipped": skipped, **report}, [sft_out, pairs_out])

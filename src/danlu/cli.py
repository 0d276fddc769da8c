"""The `danlu` command: one verb per stage of the stage table (danlu.run.STAGES), plus tools.

    danlu run [RECIPE] [--train.lr=3e-4 ...]     every stage of a recipe, skipping finished ones
    danlu data [RECIPE]                          fetch, clean, dedup and split the documents
    danlu data report RUN_OR_DATA_DIR            counts, removal examples and histograms of the data
    danlu tokenizer train|encode|stats           byte-level BPE: train, encode text, compression stats
    danlu pack [RECIPE]                          documents -> token shards
    danlu pretrain [RECIPE]                      train (resumes from the run's last checkpoint)
    danlu sft [RECIPE] [--sft.base=MODEL]        finetune on conversations (full, LoRA, QLoRA, DoRA)
    danlu align [RECIPE] [--method dpo]          align: rm, dpo, ipo, cdpo, simpo, orpo, kto, ppo, grpo
    danlu prefs samples|rlaif|constitute ...     preference / SFT data: own samples, RLAIF, constitutional AI
    danlu generate MODEL --prompt TEXT           sample a continuation
    danlu chat MODEL                             talk to a model in the terminal
    danlu plot RUN                               PNG plots of a run's metrics
    danlu import SRC OUT                         a model dir from GGUF, a HF Llama dir or a registry model
    danlu export MODEL OUT [--peft]              a Hugging Face Llama dir (or its LoRA adapter for PEFT)
    danlu quantize MODEL OUT --method gptq       int8/int4/NF4/W8A8 model dir (RTN, GPTQ, AWQ, ...)
    danlu distill --teacher MODEL --student S    a student trained on a teacher's logits or generations
    danlu prune MODEL OUT --method 2:4           magnitude or 2:4 sparsity, optional recovery finetune
    danlu plan ACTION                            FLOPs, scaling laws, memory, cost, parallel layouts
    danlu serve MODEL [--port 8000]              an OpenAI-compatible HTTP server and a web chat page

Errors caused by input (`DanluError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from danlu.errors import ConfigError, DanluError, DataError
from danlu.infer.chat_repl import CHAT_HELP
from danlu.recipe import RecipeConfig, load_recipe, split_overrides

DEFAULT_RECIPE = Path("recipes/tiny-cpu.yaml")


def _recipe(args: argparse.Namespace, overrides: list[str]) -> RecipeConfig:
    path = args.recipe
    if path is None and DEFAULT_RECIPE.is_file():
        path = DEFAULT_RECIPE
    return load_recipe(path, overrides)


# ---------------------------------------------------------------------------------------------- verbs


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.run import run_recipe

    cfg = _recipe(args, overrides)
    results = run_recipe(cfg, force=tuple(args.force), nproc=args.nproc)
    pre = results["pretrain"]
    print(f"\nmodel:                 {results['model_dir']}")
    print(f"validation loss:       {pre.get('val_loss', float('nan')):.4f} nats/token")
    print(f"validation bits/byte:  {pre.get('val_bpb', float('nan')):.4f}")
    for prompt, text in results["samples"]:
        print(f"\n--- sample ---\n{prompt}{text}")
    if "chat_model_dir" in results:
        print(f"\nchat model (sft):      {results['chat_model_dir']}")
        print(
            f"sft validation loss:   {results['sft'].get('val_loss', float('nan')):.4f} nats/assistant token"
        )
    if "align" in results:
        print(f"aligned model:         {results['align']['model_dir']}")
    from danlu.run import STAGE

    for stage, out in (("quantize", "quantized_model_dir"), ("distill", "student_model_dir")):
        if stage in results:
            print(STAGE[stage].summary(results[stage], Path(results[out])))
    print(f"\ntalk to it:            danlu chat {results.get('chat_model_dir', results['model_dir'])}")


def cmd_stage(args: argparse.Namespace, overrides: list[str]) -> None:
    """One stage of a recipe (`danlu data`, `danlu pack`, `danlu pretrain`, ...), from the stage table."""
    from danlu.run import STAGE, RunLayout, run_stages

    if getattr(args, "method", None):  # danlu align --method X is --align.method=X
        overrides = [*overrides, f"--align.method={args.method}"]
    cfg = _recipe(args, overrides)
    result = run_stages(cfg, (args.verb,), force=(args.verb,))[args.verb]
    print(STAGE[args.verb].summary(result, RunLayout(cfg.run_path).path(args.verb)))


def cmd_data(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.recipe == "report" and not Path("report").is_file():
        from danlu.data.report import write_report

        if args.target is None or overrides:
            raise ConfigError("usage: danlu data report RUN_OR_DATA_DIR (no config overrides)")
        print(f"report written to {write_report(args.target)}")
        return
    if args.target is not None:
        raise ConfigError(f"danlu data takes one recipe, got also {args.target!r}; see danlu data --help")
    cmd_stage(args, overrides)


def cmd_tokenizer(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.tokenizer import Tokenizer, tokenizer_stats

    if args.action == "train":
        cmd_stage(args, overrides)
        return
    tok = Tokenizer.load(_tokenizer_dir(args.tokenizer))
    if args.action == "encode":
        text = args.text if args.text is not None else sys.stdin.read()
        print(" ".join(map(str, tok.encode(text))))
    else:
        texts = [_read_text(p) for p in args.files] if args.files else [sys.stdin.read()]
        for key, value in tokenizer_stats(tok, texts).items():
            print(f"{key:24s} {value:.4f}" if isinstance(value, float) else f"{key:24s} {value}")


def _tokenizer_dir(path: str) -> Path:
    """Accept a tokenizer dir, a model dir or a run dir (which hold one in tokenizer/)."""
    p = Path(path)
    return p / "tokenizer" if (p / "tokenizer").is_dir() else p


def _read_text(path: str) -> str:
    from danlu.errors import DataError

    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.infer.decoding import params_from_args, run_generate
    from danlu.infer.layout import decode_layout
    from danlu.model_dir import load_model

    params_from_args(args)  # bad flags fail before the model loads
    model, tok, _ = load_model(_model_dir(args.model))
    decode_layout(model.requires_grad_(False))
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    for piece in run_generate(args, model, tok):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _model_dir(path: str) -> Path:
    """Accept a model dir or a run dir (whose final model is in model/)."""
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").is_file() else p


def cmd_plot(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.errors import DataError
    from danlu.train.metrics import METRICS_FILE, plot_metrics, plot_training

    run = Path(args.run)
    metrics = run / METRICS_FILE if run.is_dir() else run
    if not metrics.is_file():
        raise DataError(f"{metrics} not found; pass a run directory (it holds {METRICS_FILE})")
    out = metrics.parent
    plot_metrics(metrics, out / "loss.png")
    print(f"wrote {plot_training(metrics, out / 'training.png')} and {out / 'loss.png'}")


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.infer.chat import ChatSession
    from danlu.infer.chat_repl import chat_loop

    extra = {
        k: getattr(args, k) for k in ("min_p", "repetition_penalty") if getattr(args, k, None) is not None
    }
    session = ChatSession.from_dir(
        _model_dir(args.model),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        system=args.system,
        **extra,
    )
    chat_loop(session, args.model)


def cmd_import(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.interop.gguf import MODELS, import_gguf, registry_gguf
    from danlu.interop.hf_llama import import_hf
    from danlu.io import check_replaceable_output

    check_replaceable_output(args.out, args.force)  # before a registry model is downloaded
    src = Path(args.src)
    if (src / "adapter_config.json").is_file():  # a PEFT adapter: onto --base
        from danlu.interop.peft import import_peft

        if not args.base:
            raise ConfigError(f"{src} is a PEFT adapter; name the danlu model dir it adapts with --base")
        out = import_peft(src, _model_dir(args.base), args.out, force=args.force)
    elif args.src in MODELS:
        out = import_gguf(registry_gguf(args.src), args.out, force=args.force)
    elif src.is_dir():
        out = import_hf(src, args.out, force=args.force)
    elif src.suffix == ".gguf" or src.is_file():
        out = import_gguf(src, args.out, force=args.force)
    else:
        raise DataError(
            f"{args.src} is neither a registry model ({', '.join(MODELS)}), a .gguf file nor a HF model dir"
        )
    print(f"imported {args.src} to {out}\ntalk to it: danlu chat {out}")


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.interop.hf_llama import export_hf

    if args.peft:
        from danlu.interop.peft import export_peft

        out = export_peft(_model_dir(args.model), args.out, force=args.force)
        print(f"wrote {out}: peft.PeftModel.from_pretrained(<the HF export of its base>, {str(out)!r})")
        return
    out = export_hf(_model_dir(args.model), args.out, force=args.force)
    print(f"wrote {out}: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_quantize(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.quant.config import QuantConfig
    from danlu.quant.stage import run_quantize

    cfg = QuantConfig(
        method=args.method,
        bits=args.bits,
        group_size=args.group_size,
        symmetric=args.symmetric,
        calib=args.calib,
        calib_samples=args.calib_samples,
        act_order=not args.no_act_order,
        smooth_alpha=args.smooth_alpha,
        int8_kernel=args.int8_kernel,
        gate=not args.no_gate,
        gate_ppl=args.gate_ppl,
        gate_chars=args.gate_chars,
        gate_tasks=tuple(t.strip() for t in args.gate_tasks.split(",") if t.strip()),
        max_ppl_increase=args.max_ppl_increase,
        **({"skip": tuple(args.skip)} if args.skip else {}),
    )
    result = run_quantize(_model_dir(args.model), args.out, cfg, force=args.force)
    gate = result["gate"]
    if gate is not None:
        print(
            f"gate passed: perplexity {gate['before']['perplexity']:.3f} -> {gate['after']['perplexity']:.3f}"
            f" ({gate['ppl_increase']:+.2%})"
        )
    print(f"wrote {result['model_dir']} ({result['layers']} quantized layers)")
    print(f"talk to it: danlu chat {result['model_dir']}")


def cmd_serve(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.serve.config import ServeConfig, require_extra

    cfg = ServeConfig(  # validates the flags before the model loads
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        grace_s=args.grace,
        served_model_name=args.served_model_name,
        device=args.device,
    )
    require_extra()
    from danlu.serve.server import serve

    serve(_model_dir(args.model), cfg)


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.eval.harness import EvalConfig, evaluate_dir
    from danlu.eval.report import format_table, write_json

    cfg = EvalConfig(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        limit=args.limit,
        batch_size=args.batch_size,
        num_fewshot=args.num_fewshot,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        ppl_files=tuple(args.ppl),
        ppl_stride=args.stride,
        samples=args.samples,
        temperature=args.temperature,
        train_data=args.train_data,
        judge=str(_model_dir(args.judge)) if args.judge else None,
        reference=str(_model_dir(args.reference)) if args.reference else None,
        toxicity_model=args.toxicity_model,
    )
    out = evaluate_dir(_model_dir(args.model), cfg, device=args.device)
    print(format_table(out))
    if args.out:
        print(f"results written to {write_json(out, args.out)}")
        for name, res in out["results"].items():
            if name.startswith("ppl:"):
                from danlu.eval.perplexity import plot_loss_by_position

                png = Path(args.out).with_name(f"loss_by_position_{name[4:]}.png")
                print(f"plot written to {plot_loss_by_position(res['loss_by_position'], png, name)}")


def cmd_leaderboard(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.eval.leaderboard import format_leaderboard, run_leaderboard
    from danlu.eval.report import write_json

    models = [_model_dir(m) for m in args.models]
    board = run_leaderboard(
        models,
        _model_dir(args.judge),
        args.limit,
        args.max_new_tokens,
        args.seed,
        args.device,
        args.with_reference,
    )
    print(format_leaderboard(board))
    if args.out:
        print(f"leaderboard written to {write_json(board, args.out)}")


def cmd_diagnose(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.eval.diagnose import diagnose
    from danlu.model_dir import load_model

    model, tok, _ = load_model(_model_dir(args.model))
    report = diagnose(model, tok, args.prompt, args.out, top_k=args.top_k)
    print(report["table"])
    print(f"attention maps and logit_lens.json written to {args.out}")


def cmd_plan(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.plan.commands import run_plan

    print(run_plan(args, overrides))


# ---------------------------------------------------------------------------------------------- parser


def _add_sampling(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("model", help="model dir (or run dir) written by pretraining")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 disables")
    p.add_argument("--top-p", type=float, default=0.95, help="1.0 disables")
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    from danlu.run import STAGES

    parser = argparse.ArgumentParser(
        prog="danlu",
        description="danlu: raw text to a model you can talk to.",
        epilog="Config overrides: --section.key=value, e.g. --train.max_steps=200 --model.n_layer=6",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def recipe_verb(name: str, fn: Callable[..., None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("recipe", nargs="?", help=f"recipe YAML (default {DEFAULT_RECIPE})")
        p.set_defaults(fn=fn)
        return p

    p = recipe_verb("run", cmd_run, "run every stage of a recipe, skipping up-to-date ones")
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help=f"rerun STAGE ({', '.join(s.name for s in STAGES)}) even if up to date",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="pretrain in N processes on this machine (torchrun; the layout is parallel.*)",
    )
    for stage in STAGES:  # one verb per stage of the table; data and tokenizer have subcommands too
        if stage.name in ("quantize", "distill"):  # their verbs take models, not a recipe (below)
            continue
        if stage.name == "tokenizer":
            tp = sub.add_parser("tokenizer", help="train a tokenizer, encode text, compression stats")
            tp.set_defaults(fn=cmd_tokenizer)
            tsub = tp.add_subparsers(dest="action", required=True)
            t = tsub.add_parser("train", help=stage.help)
            t.add_argument("recipe", nargs="?", help=f"recipe YAML (default {DEFAULT_RECIPE})")
            continue
        p = recipe_verb(stage.name, cmd_data if stage.name == "data" else cmd_stage, stage.help)
        if stage.name == "pretrain":
            p.add_argument(
                "--nproc",
                type=int,
                default=1,
                help="train in N processes on this machine (torchrun; the layout is parallel.*)",
            )
        if stage.name == "align":
            from danlu.align.config import METHODS

            p.add_argument("--method", choices=METHODS, default=None, help="the align.method to train")
        if stage.name == "data":
            p.add_argument(
                "target", nargs="?", help="`danlu data report DIR`: summarize a run or documents dir"
            )
    t = tsub.add_parser("encode", help="print the token ids of TEXT (or stdin)")
    t.add_argument("--tokenizer", required=True, help="tokenizer, model or run dir")
    t.add_argument("text", nargs="?")
    t = tsub.add_parser("stats", help="bytes per token and more, on FILES (or stdin)")
    t.add_argument("--tokenizer", required=True, help="tokenizer, model or run dir")
    t.add_argument("files", nargs="*")

    p = sub.add_parser("generate", help="continue a prompt: sampling, greedy, beam, constrained, ...")
    _add_sampling(p, max_new_tokens=200)
    p.add_argument("--prompt", required=True)
    from danlu.infer.decoding import add_decoding_flags

    add_decoding_flags(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("plot", help="draw a run's loss, LR, gradient norm and speed as PNGs")
    p.add_argument("run", help="run directory (or its metrics.jsonl)")
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("chat", help="talk to a model in the terminal", epilog=CHAT_HELP)
    _add_sampling(p, max_new_tokens=120)
    p.add_argument("--system", default=None, help="a system prompt")
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser(
        "import", help="make a danlu model dir from a GGUF file, HF Llama dir or registry model"
    )
    p.add_argument("src", help="smollm2-135m-instruct, a .gguf file, or a Hugging Face Llama directory")
    p.add_argument("out", help="the model dir to write (missing or empty)")
    p.add_argument("--force", action="store_true", help="replace OUT if it is a model dir")
    p.add_argument("--base", default=None, help="for a PEFT adapter SRC: the danlu model dir it adapts")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("export", help="write a model as a Hugging Face Llama directory")
    p.add_argument("model", help="model dir (or run dir)")
    p.add_argument("out", help="the directory to write (missing or empty)")
    p.add_argument("--force", action="store_true", help="replace OUT if it is a model dir")
    p.add_argument("--peft", action="store_true", help="write the model's LoRA adapter in PEFT's format")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser(
        "quantize",
        help="write a quantized model dir (RTN, GPTQ, AWQ, SmoothQuant, NF4) behind a perplexity gate",
    )
    p.add_argument("model", help="model dir (or run dir)")
    p.add_argument("out", help="the model dir to write (missing or empty)")
    p.add_argument("--method", default="gptq", help="rtn | gptq | awq | smoothquant (W8A8, --bits 8) | nf4")
    p.add_argument("--bits", type=int, default=4, help="8 (per channel), 4, 3 or 2 (per group)")
    p.add_argument("--group-size", type=int, default=128, help="input columns per scale below 8 bits")
    p.add_argument("--symmetric", action="store_true", help="symmetric grid below 8 bits (default min/max)")
    p.add_argument("--calib", default=None, help="calibration text file (default: the Shakespeare corpus)")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration windows of 256 tokens")
    p.add_argument("--no-act-order", action="store_true", help="GPTQ: columns in their stored order")
    p.add_argument("--smooth-alpha", type=float, default=0.5, help="SmoothQuant: migration strength")
    p.add_argument(
        "--int8-kernel",
        default="weight_only",
        help="rtn --bits 8: weight_only (bf16 activations) | dynamic (W8A8, int8 activations per token, "
        "fbgemm) | native (W8A8, int8 activations per 32 columns, danlu's C kernel)",
    )
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN", help="Linears kept in fp32")
    p.add_argument("--no-gate", action="store_true", help="write the model without the accuracy gate")
    p.add_argument("--gate-ppl", default=None, help="held-out text of the gate (default: end of --calib)")
    p.add_argument("--gate-chars", type=int, default=20_000, help="characters of held-out text it scores")
    p.add_argument("--gate-tasks", default="", help="eval tasks the gate also checks, e.g. arc_easy")
    p.add_argument(
        "--max-ppl-increase", type=float, default=None, help="relative (default 0.02 int8, 0.05 below)"
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it is a model dir")
    p.set_defaults(fn=cmd_quantize)

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a web chat page")
    p.add_argument("model", help="model dir (or run dir)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument(
        "--api-key",
        default=os.environ.get("DANLU_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $DANLU_API_KEY; unset: no key)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="requests generated for together")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those (then 429)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request, queueing included")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument(
        "--served-model-name", default=None, help="the model's name in the API (default: dir name)"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("eval", help="score a model on benchmark tasks (HellaSwag, ARC, MMLU, GSM8K, ...)")
    p.add_argument("model", help="model dir (or run dir)")
    p.add_argument("--tasks", default="", help="comma-separated, e.g. hellaswag,arc_easy,mmlu")
    p.add_argument("--ppl", action="append", default=[], metavar="FILE", help="perplexity, bits/byte")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride for --ppl (tokens)")
    p.add_argument("--limit", type=int, default=None, help="first N items per task (per MMLU subject)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--seed", type=int, default=1234, help="seed of the few-shot example draw")
    p.add_argument("--max-new-tokens", type=int, default=256, help="cap for generative tasks")
    p.add_argument(
        "--samples", type=int, default=1, help="completions per problem of humaneval/mbpp (pass@k)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="their sampling temperature (0: greedy)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--train-data", default=None, help="memorization: training documents dir or text file")
    p.add_argument("--judge", default=None, help="mtbench, alpacaeval: the judge model dir")
    p.add_argument("--reference", default=None, help="alpacaeval: reference model dir (default: built-in)")
    p.add_argument(
        "--toxicity-model", default=None, help="toxicity: a trained classifier .npz (else word list)"
    )
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("leaderboard", help="judge models pairwise on built-in questions; Bradley-Terry/Elo")
    p.add_argument("models", nargs="+", help="model dirs (or run dirs)")
    p.add_argument("--judge", required=True, help="the judge model dir")
    p.add_argument("--limit", type=int, default=None, help="first N built-in questions")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--with-reference", action="store_true", help="rank the built-in reference answers too")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the leaderboard and every match as JSON here")
    p.set_defaults(fn=cmd_leaderboard)

    p = sub.add_parser("diagnose", help="attention maps (PNG) and the logit lens of a prompt")
    p.add_argument("model", help="model dir (or run dir)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="directory for the PNGs and logit_lens.json")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(fn=cmd_diagnose)

    from danlu.compress.commands import add_compress_parsers

    add_compress_parsers(sub)

    from danlu.align.commands import add_prefs_parser

    add_prefs_parser(sub)

    from danlu.plan.commands import add_plan_parser

    add_plan_parser(sub).set_defaults(fn=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 prints the results
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        if overrides and not hasattr(args, "recipe"):
            raise ConfigError(f"danlu {args.verb} takes no config overrides, got {overrides[0]}")
        relaunched = args.verb != "run"  # danlu run launches only its pretrain stage (danlu.run)
        if relaunched and getattr(args, "nproc", 1) != 1 and "WORLD_SIZE" not in os.environ:
            from danlu.parallel.launch import check_layout, relaunch

            check_layout(_recipe(args, overrides).parallel, args.nproc)  # a clear error before launching
            return relaunch(args.nproc, list(sys.argv[1:] if argv is None else argv))
        with logging_redirect_tqdm():  # log lines print above progress bars instead of through them
            args.fn(args, overrides)
    except DanluError as e:
        print(f"danlu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ndanlu: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

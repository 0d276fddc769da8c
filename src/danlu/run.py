"""Recipe orchestration: chain the stages of a recipe in one run directory, skipping finished ones.

Each stage is one record in `STAGES`: its name (also its CLI verb), the stages it reads, its output
under the run dir, the recipe settings it depends on, and a plain function that reads and writes
artifacts in the run directory. Adding a stage is adding a record. After a stage
finishes, a stamp `.stages/<stage>.json` records a key: the hash of the stage's config and of the keys
of the stages it reads from. A stage whose stamp matches is up to date and is skipped, so rerunning an
interrupted `danlu run` continues where it stopped (pretraining itself resumes from its checkpoints).
A stage that runs (forced, changed, or its output missing or made by older code, like a tokenizer
without today's special tokens) makes every later stage run too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danlu.config import save_yaml, to_dict
from danlu.data.mixing import MixSpec, parse_mix
from danlu.errors import ConfigError
from danlu.io import atomic_write_json, local_input_fingerprint, run_lock, sha256_json
from danlu.recipe import RecipeConfig
from danlu.run_compress import (
    distill_settings,
    quantize_settings,
    quantize_summary,
    run_distill_stage,
    run_quantize_stage,
)
from danlu.stage_resume import prepare_stage_checkpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLayout:
    """Where each artifact of a run lives: every stage's output under the run dir (see STAGES)."""

    root: Path

    def path(self, stage: str) -> Path:
        return self.root / STAGE[stage].output

    @property
    def docs(self) -> Path:
        return self.path("data")

    @property
    def tokenizer(self) -> Path:
        return self.path("tokenizer")

    @property
    def tokens(self) -> Path:
        return self.path("pack")

    @property
    def model(self) -> Path:
        return self.path("pretrain")

    @property
    def stamps(self) -> Path:
        return self.root / ".stages"


def _stamp_path(layout: RunLayout, stage: str) -> Path:
    return layout.stamps / f"{stage}.json"


def read_stamp(layout: RunLayout, stage: str) -> dict[str, Any] | None:
    path = _stamp_path(layout, stage)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_stamp(layout: RunLayout, stage: str, key: str, result: dict[str, Any]) -> None:
    atomic_write_json(_stamp_path(layout, stage), {"key": key, "finished": time.time(), "result": result})


# settings added after runs were made: at these off values they stay out of the keys, so the keys of
# earlier runs stay as they were
_LATER_SETTINGS_OFF = {"max_minutes": 0.0}


def _key_settings(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {
            k: _key_settings(v)
            for k, v in tree.items()
            if not (k in _LATER_SETTINGS_OFF and v == _LATER_SETTINGS_OFF[k])
        }
    return [_key_settings(v) for v in tree] if isinstance(tree, list) else tree


def stage_keys(cfg: RecipeConfig) -> dict[str, str]:
    """The up-to-date key of every stage: the settings it depends on, chained with the keys of the
    stages it reads from, so a change anywhere upstream changes every key below it."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        keys[stage.name] = sha256_json(
            {
                "settings": _key_settings(stage.settings(cfg)),
                "inputs": {name: keys[name] for name in stage.inputs},
            }
        )
    return keys


def _missing_special_tokens(tokenizer_dir: Path) -> list[str]:
    """Special tokens danlu's trainer adds today that a run's saved tokenizer lacks (it was trained
    by an older danlu, before the objective tokens, say)."""
    from danlu.tokenizer.bpe import ALL_SPECIAL_TOKENS

    try:
        added = json.loads((tokenizer_dir / "tokenizer.json").read_text()).get("added_tokens", [])
        have = {t.get("content") for t in added if isinstance(t, dict)}
    except (OSError, ValueError, AttributeError):
        return list(ALL_SPECIAL_TOKENS)
    return [t for t in ALL_SPECIAL_TOKENS if t not in have]


def _tokenizer_current(layout: RunLayout) -> bool:
    """A tokenizer trained by an older danlu, without today's special tokens, is trained again."""
    missing = _missing_special_tokens(layout.tokenizer)
    if missing:
        log.warning(
            "the run's tokenizer lacks %d special tokens (%s, ...) that danlu adds now: retraining it",
            len(missing),
            missing[0],
        )
    return not missing


def _output_current(layout: RunLayout, stage: str) -> bool:
    """The stage's output is there and is what today's code would make of the same inputs."""
    st = STAGE[stage]
    if not (layout.path(stage) / st.done_file).exists():
        return False
    return st.current is None or st.current(layout)


def _run_stage(
    layout: RunLayout,
    stage: str,
    key: str,
    fn: Callable[[], dict[str, Any]],
    force: bool = False,
    started: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """(the stage's result, whether it ran). started: the settings and input keys it runs with, so a
    training stage resumes only checkpoints made with the same ones (danlu.stage_resume)."""
    stamp = read_stamp(layout, stage)
    fresh = stamp is not None and stamp.get("key") == key and _output_current(layout, stage)
    if fresh and not force:
        log.info("stage %-9s up to date, skipped", stage)
        return stamp.get("result", {}), False
    log.info("stage %-9s running", stage)
    trainer_out = STAGE[stage].trainer_out
    if trainer_out is not None and started is not None:
        prepare_stage_checkpoints(layout.stamps, stage, layout.root / trainer_out, started)
    start = time.perf_counter()
    result = fn()
    _write_stamp(layout, stage, key, result)
    log.info("stage %-9s done in %.1fs", stage, time.perf_counter() - start)
    return result, True


def run_data_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.data.documents import run_data
    from danlu.eval.edu_embed import model_dir_embedder
    from danlu.eval.perplexity import model_dir_scorer
    from danlu.run_paraphrase import model_dir_generator

    manifest = run_data(
        cfg.data,
        layout.docs,
        model_scorer=model_dir_scorer,
        model_generator=model_dir_generator,
        model_embedder=model_dir_embedder,
    )
    return {"splits": manifest.get("splits", {})}


def run_tokenizer_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.data.documents import document_texts
    from danlu.tokenizer import train_tokenizer
    from danlu.tokenizer.tools import tokenizer_report

    val = document_texts(layout.docs, "val") if (layout.docs / "val.parquet").exists() else None
    tok = train_tokenizer(document_texts(layout.docs, "train"), cfg.tokenizer, layout.tokenizer, val)
    # the trainer and its compression (bytes per token) on the val split, to compare trainers by
    return {"vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint()} | tokenizer_report(
        layout.tokenizer
    )


def _tokenizer_summary(result: dict[str, Any], out: Path) -> str:
    line = f"tokenizer written to {out}: vocab {result['vocab_size']}"
    if "held_out" in result:
        line += f", {result['trainer']}, {result['held_out']['bytes_per_token']:.3f} bytes/token on val"
    return line


def training_tokens(cfg: RecipeConfig) -> int:
    """Tokens the pretraining stage reads: steps x accumulation x batch x sequence length."""
    t = cfg.train
    return t.max_steps * t.grad_accum * t.batch_size * t.seq_len


def run_mix(cfg: RecipeConfig) -> MixSpec | None:
    """The recipe's checked data mix. A phase schedule is a share of the training tokens, so without
    data.mix.tokens a phased mix packs exactly what training reads and its phases play out once."""
    if cfg.data.mix is None:
        return None
    mix = parse_mix(cfg.data.mix, cfg.data.sources, cfg.data.seed)
    if len(mix.phases) > 1 and mix.tokens is None:
        mix = dataclasses.replace(mix, tokens=training_tokens(cfg))
    return mix


def run_pack_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.data.pack import run_pack
    from danlu.tokenizer import Tokenizer

    index = run_pack(layout.docs, Tokenizer.load(layout.tokenizer), layout.tokens, run_mix(cfg))
    _warn_if_schedule_misfits(cfg, index)
    return {"splits": index.get("splits", {})}


def _warn_if_schedule_misfits(cfg: RecipeConfig, index: dict[str, Any]) -> None:
    """The loader trains a phased mix's phases in order, once per pass over the train split: a
    training budget far from the packed size cuts the schedule short or starts it over."""
    phases = index["splits"]["train"].get("mix", {}).get("phases", [])
    if len(phases) < 2:
        return
    budget = training_tokens(cfg)
    packed = phases[-1]["end"]
    if abs(budget - packed) <= 0.1 * packed:
        return
    if budget < packed:
        last = next(k for k, p in enumerate(phases, 1) if p["end"] >= budget)
        what = f"training stops in phase {last} of {len(phases)}"
    else:
        what = f"the schedule starts over at phase 1 after {packed} tokens"
    log.warning(
        "training reads about %d tokens, the phased mix packs %d: %s; set data.mix.tokens to about %d",
        budget,
        packed,
        what,
        budget,
    )


def _qat_settings(cfg: RecipeConfig) -> dict[str, Any]:
    # only a recipe with qat adds the key, so the keys of every earlier run stay as they were
    return {"qat": to_dict(cfg.qat)} if cfg.qat is not None else {}


def run_pretrain_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.train.pretrain import run_pretrain

    result = run_pretrain(cfg, layout.tokens, layout.tokenizer, layout.root)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}


def sft_base(cfg: RecipeConfig, layout: RunLayout) -> Path:
    """The model the SFT stage finetunes: sft.base, or the run's pretrained model."""
    base = cfg.sft.base if cfg.sft is not None else ""
    return Path(base).expanduser() if base else layout.model


def run_sft_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.finetune.config import SFTConfig
    from danlu.finetune.sft import run_sft

    result = run_sft(cfg.sft or SFTConfig(), sft_base(cfg, layout), layout.path("sft"))
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}


def _sft_settings(cfg: RecipeConfig) -> dict[str, Any]:
    sft = cfg.sft
    base = [sft.base] if sft is not None and sft.base else []
    return {"sft": None if sft is None else to_dict(sft), "base": local_input_fingerprint(base)}


def align_base(cfg: RecipeConfig, layout: RunLayout) -> Path:
    """The model the align stage starts from: align.base, or the run's SFT model."""
    base = cfg.align.base if cfg.align is not None else ""
    return Path(base).expanduser() if base else layout.path("sft") / "model"


def run_align_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.align.config import AlignConfig
    from danlu.align.stage import run_align

    result = run_align(cfg.align or AlignConfig(), align_base(cfg, layout), layout.path("align"))
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}


def _align_settings(cfg: RecipeConfig) -> dict[str, Any]:
    align = cfg.align
    base = [align.base] if align is not None and align.base else []
    return {"align": None if align is None else to_dict(align), "base": local_input_fingerprint(base)}


def _align_summary(r: dict[str, Any], out: Path) -> str:
    acc = "val_accuracy" if "val_logp_accuracy" not in r else "val_logp_accuracy"
    acc = next((k for k in ("val_reward", "val_exact_match") if k in r), acc)  # ppo, grpo
    before = r.get("before", {}).get(acc, float("nan"))
    return f"aligned model: {r['model_dir']}  held-out {acc} {before:.3f} -> {r[acc]:.3f}"


def sample_texts(cfg: RecipeConfig, model_dir: Path) -> list[tuple[str, str]]:
    """Continue each of the recipe's prompts with the trained model."""
    from danlu.infer.sampling import complete
    from danlu.model_dir import load_model

    model, tok, _ = load_model(model_dir)
    out = []
    for i, prompt in enumerate(cfg.sample.prompts):
        new = list(complete(model, tok, prompt, cfg.sample, seed=cfg.sample.seed + i))
        out.append((prompt, tok.decode(new, skip_special=True)))
    return out


def _data_settings(cfg: RecipeConfig) -> dict[str, Any]:
    # the mix only shapes the pack stage: changing it re-packs and retrains, but keeps the documents
    # and the tokenizer; local inputs count by size and mtime, so editing a corpus reruns the stage
    data = {k: v for k, v in to_dict(cfg.data).items() if k != "mix"}
    return {"data": data, "inputs": local_input_fingerprint(cfg.data.sources)}


def _pack_settings(cfg: RecipeConfig) -> dict[str, Any]:
    mix = run_mix(cfg)
    return {"mix": None if mix is None else dataclasses.asdict(mix)}


def _splits(what: str) -> Callable[[dict[str, Any], Path], str]:
    return lambda result, out: f"{what} written to {out}: {result.get('splits', {})}"


@dataclass(frozen=True)
class Stage:
    """One stage of a run: what it reads, writes and depends on, and the function that runs it."""

    name: str
    help: str  # the CLI verb's one-line help
    inputs: tuple[str, ...]  # the stages whose outputs it reads
    output: str  # its artifact, relative to the run dir
    done_file: str  # the file in the output whose presence shows the output is there
    settings: Callable[[RecipeConfig], Any]  # what it depends on in the recipe (hashed into its key)
    run: Callable[[RecipeConfig, RunLayout], dict[str, Any]]
    summary: Callable[[dict[str, Any], Path], str]  # what the CLI verb prints when it finishes
    # False when the output, though there, was made by older code and must be made again
    current: Callable[[RunLayout], bool] | None = None
    # whether `danlu run` runs it for this recipe (an optional stage, like sft); its verb always runs
    enabled: Callable[[RecipeConfig], bool] | None = None
    # its trainer's output dir (holding its step checkpoints), relative to the run dir: the
    # checkpoints are resumed only under the same settings
    trainer_out: str | None = None


STAGES: tuple[Stage, ...] = (
    Stage(
        "data",
        "fetch, clean, filter, dedup and split the documents",
        (),
        "data",
        "manifest.json",
        _data_settings,
        run_data_stage,
        _splits("documents"),
    ),
    Stage(
        "tokenizer",
        "train byte-level BPE on the run's documents",
        ("data",),
        "tokenizer",
        "tokenizer.json",
        # both BPE trainers write the same tokenizer.json (tests/test_tokenizer_trainer.py), so choosing
        # between them leaves the key, and a run's tokenizer is not made out of date by it
        lambda cfg: {
            "tokenizer": {
                k: v
                for k, v in to_dict(cfg.tokenizer).items()
                if not (k == "trainer" and v in ("hf", "danlu"))
            }
        },
        run_tokenizer_stage,
        _tokenizer_summary,
        current=_tokenizer_current,
    ),
    Stage(
        "pack",
        "tokenize the documents into token shards (mixing sources by data.mix)",
        ("tokenizer",),
        "tokens",
        "index.json",
        _pack_settings,
        run_pack_stage,
        _splits("token shards"),
    ),
    Stage(
        "pretrain",
        "pretrain a model (resumes from the run's last checkpoint)",
        ("pack",),
        "model",
        "model.safetensors",
        lambda cfg: {"model": to_dict(cfg.model), "train": to_dict(cfg.train)} | _qat_settings(cfg),
        run_pretrain_stage,
        lambda r, out: f"model: {out}  val loss {r['val_loss']:.4f}  val bpb {r['val_bpb']:.4f}",
        trainer_out=".",
    ),
    Stage(
        "sft",
        "finetune a model on conversations (full, LoRA, QLoRA, DoRA), writing a chat model dir",
        ("pretrain",),
        "sft",
        "model/config.json",
        _sft_settings,
        run_sft_stage,
        lambda r, out: f"chat model: {r['model_dir']}  val loss {r['val_loss']:.4f} (assistant tokens)",
        enabled=lambda cfg: cfg.sft is not None,
        trainer_out="sft",
    ),
    Stage(
        "align",
        "align a chat model with preference pairs (rm, dpo, ipo, cdpo, simpo, orpo, kto)",
        ("sft",),
        "align",
        "model/config.json",
        _align_settings,
        run_align_stage,
        _align_summary,
        enabled=lambda cfg: cfg.align is not None,
        trainer_out="align",
    ),
    # its verb is `danlu quantize MODEL OUT` (danlu.cli), not a recipe verb; `danlu run` runs it
    Stage(
        "quantize",
        "quantize the last trained model behind the accuracy gate",
        ("pretrain", "sft", "align"),
        "quantized",
        "quant/quant_config.json",
        quantize_settings,
        run_quantize_stage,
        quantize_summary,
        enabled=lambda cfg: cfg.quantize_config() is not None,
    ),
    # its verb is `danlu distill --teacher ... --student ...` (danlu.compress.commands); `danlu run`
    # runs it when the recipe has a distill: section
    Stage(
        "distill",
        "distil the last trained model into a smaller student (distill.student)",
        ("pretrain", "sft", "align"),
        "distill",
        "model/config.json",
        distill_settings,
        run_distill_stage,
        lambda r, out: f"distilled student: {r['model_dir']}  val loss {r['val_loss']:.4f}",
        enabled=lambda cfg: cfg.distill is not None,
        trainer_out="distill",
    ),
)
STAGE = {stage.name: stage for stage in STAGES}


# set by a `danlu run --nproc N` for the torchrun ranks of its pretrain stage: the run dir whose lock
# that `danlu run` holds for them
RUN_LOCK_HELD_ENV = "DANLU_RUN_LOCK_HELD"


def run_stages(
    cfg: RecipeConfig, names: tuple[str, ...] | None = None, force: tuple[str, ...] = (), nproc: int = 1
) -> dict[str, Any]:
    """Run the named stages (all, by default) in table order, skipping up-to-date ones; a stage that
    runs makes every later one run too (it may have changed their input). Returns each result.
    With nproc > 1 the pretrain stage trains in nproc processes (torchrun), the others in this one."""
    unknown = [n for n in (*(names or ()), *force) if n not in STAGE]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGE)}")
    if nproc != 1:
        from danlu.parallel.launch import check_layout

        check_layout(cfg.parallel, nproc)  # a clear error before any stage runs
    layout = RunLayout(cfg.run_path)
    layout.root.mkdir(parents=True, exist_ok=True)
    held = os.environ.get(RUN_LOCK_HELD_ENV) == str(layout.root.resolve())
    if held or os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 (or its launcher) locks
        return _run_stages_locked(cfg, layout, names, force, nproc)
    with run_lock(layout.root):
        return _run_stages_locked(cfg, layout, names, force, nproc)


def _pretrain_in_processes(layout: RunLayout, nproc: int) -> dict[str, Any]:
    """The pretrain stage as `danlu pretrain <run>/config.yaml` in nproc processes; its result is the
    one the ranks stamped."""
    from danlu.parallel.launch import launch

    start, held = time.time(), {RUN_LOCK_HELD_ENV: str(layout.root.resolve())}
    launch(nproc, ["pretrain", str(layout.root / "config.yaml")], held)
    stamp = read_stamp(layout, "pretrain")
    if stamp is None or stamp.get("finished", 0) < start:
        raise ConfigError(f"the pretrain stage's processes finished without stamping {layout.stamps}")
    return stamp.get("result", {})


def _run_stages_locked(
    cfg: RecipeConfig,
    layout: RunLayout,
    names: tuple[str, ...] | None,
    force: tuple[str, ...],
    nproc: int = 1,
) -> dict[str, Any]:
    save_yaml(cfg, layout.root / "config.yaml")
    keys = stage_keys(cfg)
    results: dict[str, Any] = {}
    upstream_ran = False
    for stage in STAGES:
        if names is not None and stage.name not in names:
            continue
        if names is None and stage.enabled is not None and not stage.enabled(cfg):
            continue
        results[stage.name], ran = _run_stage(
            layout,
            stage.name,
            keys[stage.name],
            (lambda: _pretrain_in_processes(layout, nproc))
            if stage.name == "pretrain" and nproc > 1
            else (lambda st=stage: st.run(cfg, layout)),
            stage.name in force or upstream_ran,
            {"settings": stage.settings(cfg), "inputs": {n: keys[n] for n in stage.inputs}},
        )
        upstream_ran = upstream_ran or ran
    return results


def run_recipe(cfg: RecipeConfig, force: tuple[str, ...] = (), nproc: int = 1) -> dict[str, Any]:
    """Run every stage of the recipe in order, skipping up-to-date ones (pretraining in nproc
    processes); then sample."""
    results = run_stages(cfg, force=force, nproc=nproc)
    layout = RunLayout(cfg.run_path)
    results["samples"] = sample_texts(cfg, layout.model)
    results["model_dir"] = str(layout.model)
    if "sft" in results:
        results["chat_model_dir"] = results["sft"]["model_dir"]
    if "quantize" in results:
        results["quantized_model_dir"] = results["quantize"]["model_dir"]
    if "distill" in results:
        results["student_model_dir"] = results["distill"]["model_dir"]
    return results

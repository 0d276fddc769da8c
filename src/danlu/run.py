"""Recipe orchestration: chain the stages of a recipe in one run directory, skipping finished ones.

Each stage is a plain function that reads and writes artifacts in the run directory. After a stage
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danlu.config import save_yaml, to_dict
from danlu.data.mixing import MixSpec, parse_mix
from danlu.io import atomic_write_json, sha256_json
from danlu.recipe import RecipeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLayout:
    """Where each artifact of a run lives."""

    root: Path

    @property
    def docs(self) -> Path:
        return self.root / "data"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def model(self) -> Path:
        return self.root / "model"

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


def stage_keys(cfg: RecipeConfig) -> dict[str, str]:
    """The up-to-date key of every stage: its own config chained with the keys of its inputs."""
    # the mix only shapes the pack stage: changing it re-packs and retrains, but keeps documents and
    # tokenizer (and without a mix, every key is what it was before mixing existed)
    data_cfg = {k: v for k, v in to_dict(cfg.data).items() if k != "mix"}
    data = sha256_json({"data": data_cfg, "inputs": _local_input_fingerprint(cfg.data.sources)})
    tok = sha256_json({"tokenizer": to_dict(cfg.tokenizer), "data": data})
    mix = run_mix(cfg)
    pack = sha256_json({"tok": tok} if mix is None else {"tok": tok, "mix": dataclasses.asdict(mix)})
    pretrain = sha256_json({"model": to_dict(cfg.model), "train": to_dict(cfg.train), "pack": pack})
    return {"data": data, "tokenizer": tok, "pack": pack, "pretrain": pretrain}


def _local_input_fingerprint(sources: list[str]) -> list[Any]:
    """Size and mtime of local input files, so editing a local corpus reruns the data stage."""
    out: list[Any] = []
    for src in sources:
        path = Path(src).expanduser()
        if not path.exists():
            out.append(src)  # a registry name (pinned by version and checksum) or a missing path
            continue
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
        out.append([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return out


def _stage_output(layout: RunLayout, stage: str) -> Path:
    """The file whose presence shows that a stage's output is still there."""
    return {
        "data": layout.docs / "manifest.json",
        "tokenizer": layout.tokenizer / "tokenizer.json",
        "pack": layout.tokens / "index.json",
        "pretrain": layout.model / "model.safetensors",
    }[stage]


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


def _output_current(layout: RunLayout, stage: str) -> bool:
    """The stage's output is there and is what today's code would make of the same inputs."""
    if not _stage_output(layout, stage).exists():
        return False
    if stage == "tokenizer" and (missing := _missing_special_tokens(layout.tokenizer)):
        log.warning(
            "the run's tokenizer lacks %d special tokens (%s, ...) that danlu adds now: retraining it",
            len(missing),
            missing[0],
        )
        return False
    return True


def _run_stage(
    layout: RunLayout, stage: str, key: str, fn: Callable[[], dict[str, Any]], force: bool = False
) -> tuple[dict[str, Any], bool]:
    """(the stage's result, whether it ran)."""
    stamp = read_stamp(layout, stage)
    fresh = stamp is not None and stamp.get("key") == key and _output_current(layout, stage)
    if fresh and not force:
        log.info("stage %-9s up to date, skipped", stage)
        return stamp.get("result", {}), False
    log.info("stage %-9s running", stage)
    start = time.perf_counter()
    result = fn()
    _write_stamp(layout, stage, key, result)
    log.info("stage %-9s done in %.1fs", stage, time.perf_counter() - start)
    return result, True


def run_data_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.data.documents import run_data

    manifest = run_data(cfg.data, layout.docs)
    return {"splits": manifest.get("splits", {})}


def run_tokenizer_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.data.documents import document_texts
    from danlu.tokenizer import train_tokenizer

    tok = train_tokenizer(document_texts(layout.docs, "train"), cfg.tokenizer, layout.tokenizer)
    return {"vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint()}


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


def run_pretrain_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.train.pretrain import run_pretrain

    result = run_pretrain(cfg, layout.tokens, layout.tokenizer, layout.root)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}


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


STAGES = ("data", "tokenizer", "pack", "pretrain")


def run_recipe(cfg: RecipeConfig, force: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every stage of the recipe in order, skipping up-to-date ones; then sample."""
    layout = RunLayout(cfg.run_path)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, layout.root / "config.yaml")
    keys = stage_keys(cfg)
    fns = {
        "data": run_data_stage,
        "tokenizer": run_tokenizer_stage,
        "pack": run_pack_stage,
        "pretrain": run_pretrain_stage,
    }
    results: dict[str, Any] = {}
    upstream_ran = False  # a stage that ran may have changed its output: every later stage reruns
    for stage in STAGES:
        results[stage], ran = _run_stage(
            layout, stage, keys[stage], lambda f=fns[stage]: f(cfg, layout), stage in force or upstream_ran
        )
        upstream_ran = upstream_ran or ran
    results["samples"] = sample_texts(cfg, layout.model)
    results["model_dir"] = str(layout.model)
    return results

"""A danlu model as an lm-eval-harness `LM`, and lm-eval task configs that read the local eval files.

`DanluLMCore` answers lm-eval's three request types with plain tuples (testable without lm-eval);
`lm_class()` wraps it in a subclass of `lm_eval.api.model.LM` and registers it as model type "danlu":

    from lm_eval import simple_evaluate
    from danlu.eval.lm_eval_adapter import lm_class
    simple_evaluate(model=lm_class()(pretrained="/path/to/model", batch_size=16), tasks=["arc_easy"])

lm-eval is imported only inside `lm_class` and `write_local_tasks` (the `lmeval` extra).

`write_local_tasks` writes task YAMLs that include lm-eval's own task files (same prompts, metrics
and preprocessing) but load the data from the offline arrow files, so both harnesses score the same
items without the hub.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from danlu.errors import ConfigError, MissingExtra
from danlu.eval.generative import greedy_until
from danlu.eval.perplexity import rolling_windows
from danlu.eval.scoring import Scorer, prefix_token_id


class DanluLMCore:
    """lm-eval's request semantics on a danlu model and tokenizer."""

    def __init__(self, model: Any, tok: Any, batch_size: int = 16, max_gen_toks: int = 256):
        self.model = model
        self.tok = tok
        self.scorer = Scorer(model, tok, batch_size=batch_size)
        self.max_gen_toks = max_gen_toks

    @classmethod
    def from_dir(cls, path: str | Path, batch_size: int = 16, device: str = "cpu") -> DanluLMCore:
        from danlu.model_dir import load_model

        model, tok, _ = load_model(path, device=device)
        core = cls(model, tok, batch_size)
        core.scorer.device = torch.device(device)
        return core

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return [(s.logprob, s.greedy) for s in self.scorer.loglikelihood(requests)]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Summed log-probability of each whole text, in lm-eval's disjoint rolling windows."""
        prefix = prefix_token_id(self.tok)
        spans: list[tuple[int, int]] = []
        windows: list[tuple[list[int], list[int]]] = []
        for text in texts:
            start = len(windows)
            windows.extend(rolling_windows(self.tok.encode(text), prefix, self.scorer.max_length))
            spans.append((start, len(windows)))
        scores = self.scorer.loglikelihood_tokens(windows)
        return [sum(s.logprob for s in scores[a:b]) for a, b in spans]

    def generate_until(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        out = []
        for context, kwargs in requests:
            kwargs = dict(kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ConfigError("the danlu lm-eval adapter decodes greedily; sampling was asked for")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            text, _ = greedy_until(self.model, self.tok, context, until, max_new)
            out.append(text)
        return out


@cache
def lm_class() -> type:
    """The lm_eval LM subclass (registered as "danlu"); needs the `lmeval` extra."""
    try:
        from lm_eval.api.model import LM
        from lm_eval.api.registry import register_model
    except ImportError:
        raise MissingExtra(
            "the lm-eval adapter needs the lm-eval package: pip install 'danlu[lmeval]'"
        ) from None

    class DanluLM(LM):  # type: ignore[misc]
        def __init__(
            self, pretrained: str | None = None, batch_size: int | str = 16, device: str = "cpu",
            core: DanluLMCore | None = None, **_: Any,
        ) -> None:  # fmt: skip
            super().__init__()
            if core is None:
                if pretrained is None:
                    raise ConfigError("give the danlu model dir: --model_args pretrained=PATH")
                bs = 16 if str(batch_size).startswith("auto") else int(batch_size)
                core = DanluLMCore.from_dir(pretrained, bs, device)
            self.core = core

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            return self.core.loglikelihood([r.args for r in requests])

        def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
            return self.core.loglikelihood_rolling([r.args[0] for r in requests])

        def generate_until(self, requests: list[Any]) -> list[str]:
            return self.core.generate_until([r.args for r in requests])

    register_model("danlu")(DanluLM)
    return DanluLM


# --- lm-eval task configs over the local arrow files ----------------------------------------------

# danlu task -> (lm-eval task YAML under lm_eval/tasks, local dataset name, config, split)
LM_EVAL_TASKS: dict[str, tuple[str, str, str, str]] = {
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag", "none", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc", "ARC-Easy", "validation"),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc", "ARC-Challenge", "validation"),
    "piqa": ("piqa/piqa.yaml", "piqa", "plain_text", "validation"),
    "winogrande": ("winogrande/default.yaml", "winogrande", "winogrande_xl", "validation"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa", "main", "validation"),
    "siqa": ("siqa/siqa.yaml", "social_i_qa", "none", "validation"),
    "commonsense_qa": ("commonsense_qa/default.yaml", "tau/commonsense_qa", "none", "validation"),
}


def write_local_tasks(
    names: Sequence[str],
    out_dir: str | Path,
    root: Path | None = None,
    train_files: dict[str, Path] | None = None,
) -> dict[str, list[str]]:
    """Write lm-eval task YAMLs (named danlu_<task>) for names; {danlu task: [lm-eval task names]}
    (MMLU: one per subject, to be averaged weighted by size as lm-eval's mmlu group does).

    A task with a train split (danlu.eval.train_splits; train_files[task] overrides the file) reads
    it as lm-eval's training_split. The few-shot split is named only where lm-eval's own YAML has a
    test_split (ARC, OpenBookQA): naming it elsewhere would change whether lm-eval's sampler is given
    the evaluated item, and so its draws."""
    try:
        import lm_eval.tasks
    except ImportError:
        raise MissingExtra(
            "lm-eval task configs need the lm-eval package: pip install 'danlu[lmeval]'"
        ) from None

    from danlu.eval import data
    from danlu.eval.tasks import get_task, mmlu_subjects

    lm_tasks = Path(lm_eval.tasks.__file__).parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}

    def write(task: str, include: Path, data_files: dict[str, str], extra: dict[str, Any]) -> str:
        cfg = {
            "include": str(include), "task": task, "tag": "danlu_local", "dataset_path": "arrow",
            "dataset_name": None, "dataset_kwargs": {"data_files": data_files},
            "training_split": None, **extra,
        }  # fmt: skip
        (out / f"{task}.yaml").write_text(json.dumps(cfg, indent=1))
        return task

    for name in names:
        if name == "mmlu":
            written[name] = []
            for subject in mmlu_subjects(root):
                files = {
                    split: str(data.arrow_files("hails/mmlu_no_train", subject, split, root)[0])
                    for split in ("test", "dev")
                }
                include = lm_tasks / "mmlu" / "default" / f"mmlu_{subject}.yaml"
                written[name].append(
                    write(f"danlu_mmlu_{subject}", include, files, {"validation_split": None})
                )
            continue
        if name not in LM_EVAL_TASKS:
            raise ConfigError(
                f"no lm-eval mapping for task {name!r}; known: {', '.join([*LM_EVAL_TASKS, 'mmlu'])}"
            )
        yaml_path, ds, config, split = LM_EVAL_TASKS[name]
        files = {split: str(data.arrow_files(ds, config, split, root)[0])}
        extra: dict[str, Any] = {"validation_split": split, "test_split": None, "fewshot_split": None}
        spec = get_task(name)
        if spec.fewshot_split == "train":
            from danlu.eval.train_splits import train_arrow

            files["train"] = str((train_files or {}).get(name) or train_arrow(name))
            extra["training_split"] = "train"
            extra["fewshot_split"] = None if spec.drops_item else "train"
        written[name] = [write(f"danlu_{name}", lm_tasks / yaml_path, files, extra)]
    return written

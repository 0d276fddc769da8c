"""Paraphrase augmentation: the block asks a generator per picked document with a seed of its own;
fraction, kept originals, lineage, limits and settings pinned with a recording generator; then a tiny
chat model through the run layer's engine generator, from run_data and from `danlu data`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from danlu.data.config import DataConfig
from danlu.data.documents import read_documents, run_data
from danlu.data.paraphrase import DEFAULT_PROMPT, ParaphraseAugmenter, Reply
from danlu.data.pipeline import build_block
from danlu.errors import ConfigError
from danlu.run_paraphrase import model_dir_generator
from serve_support import tiny_chat_model

CALLS: list[tuple[str, int]] = []
BATCHES: list[int] = []


def recording_generator(model: str, device: str, max_batch: int):
    """A stand-in model: the reply reverses the document's words and names the seed."""

    def generate(messages, seeds, max_new_tokens, temperature):
        CALLS.extend(zip(messages, seeds, strict=True))
        BATCHES.append(len(messages))
        assert len(messages) <= max_batch
        return [
            Reply(" ".join(m.split("Text:\n", 1)[1].split()[::-1]) + f" [{s}]", True)
            for m, s in zip(messages, seeds, strict=True)
        ]

    return generate


def canned_generator(text: str, ended: bool):
    def factory(model: str, device: str, max_batch: int):
        return lambda messages, seeds, n, t: [Reply(text, ended)] * len(messages)

    return factory


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("para"), max_seq_len=512, n_embd=32)


def _docs(n: int) -> list[dict]:
    return [
        {"id": f"d{i}", "text": f"document number {i} says hello", "source": "s", "meta": {}}
        for i in range(n)
    ]


def _block(model_dir: Path, generator=recording_generator, **kw) -> ParaphraseAugmenter:
    return ParaphraseAugmenter(str(model_dir), model_generator=generator, **kw)


def test_each_picked_document_gets_its_own_seed_whatever_the_order(tmp_path):
    block = _block(tmp_path, fraction=0.5, keep_original=False, seed=3)
    CALLS.clear()
    first = {d["id"]: (block.filter(d), d)[1] for d in _docs(40)}
    seeds_first = sorted(s for _, s in CALLS)
    CALLS.clear()
    again = {d["id"]: (block.filter(d), d)[1] for d in reversed(_docs(40))}
    assert first == again and sorted(s for _, s in CALLS) == seeds_first
    picked = [d for d in first.values() if "augmented" in d["meta"]]
    assert 10 <= len(picked) <= 30 and len(CALLS) == len(picked)  # binomial(40, 0.5)
    for d in picked:
        mark = d["meta"]["augmented"]
        assert (
            mark["block"] == "paraphrase" and mark["source_id"] == d["id"] and mark["model"] == tmp_path.name
        )
        assert d["text"].endswith(f"[{mark['seed']}]") and "added" not in mark
    assert all(
        m == DEFAULT_PROMPT.format(text=f"document number {m.split()[-3]} says hello") for m, _ in CALLS
    )
    other = _block(tmp_path, fraction=0.5, keep_original=False, seed=4)
    assert {d["id"] for d in picked} != {d["id"] for d in _docs(40) if (other.filter(d), d)[1]["meta"]}


def test_limits_skip_documents_and_are_counted(tmp_path):
    block = _block(tmp_path, max_input_chars=30)
    short, long = (
        {"id": k, "text": t, "source": "s", "meta": {}} for k, t in (("a", "a short text"), ("b", "x " * 16))
    )
    assert len(block.expand(short)) == 1 and block.expand(long) == []
    counts = block.take_counts()
    assert counts["documents_too_long"] == 1 and counts["documents_augmented"] == 1
    timed = _block(tmp_path, time_limit_s=1e-9)
    added = [timed.expand(d) for d in _docs(3)]
    assert len(added[0]) == 1 and added[1:] == [[], []]
    assert timed.take_counts()["documents_past_time_limit"] == 2
    doc = _docs(1)[0]
    for reply, ended, count in (
        (" ", True, "documents_empty_reply"),
        ("document number zero says hello, but it was cut", False, "documents_cut_reply"),
        ("Sure.", True, "documents_length_rejected"),  # under half the document's length
    ):
        block = _block(tmp_path, generator=canned_generator(reply, ended))
        assert block.expand(doc) == [] and block.take_counts()[count] == 1
    kept_cut = _block(tmp_path, generator=canned_generator("a cut paraphrase of it", False), drop_cut=False)
    assert [d["text"] for d in kept_cut.expand(doc)] == ["a cut paraphrase of it"]


def test_the_block_keeps_originals_and_marks_lineage(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "text": f"the story number {i} ends well"}) + "\n" for i in range(10)
        )
    )
    spec = {"block": "paraphrase", "model": str(tmp_path), "fraction": 0.5, "keep_original": True, "seed": 2}
    cfg = DataConfig(sources=[str(src)], pipeline=[spec], val_fraction=0.2)
    m = run_data(cfg, tmp_path / "out", model_generator=recording_generator)
    assert m["lineage"]["blocks"][0]["augments"] is True
    b = m["blocks"]["paraphrase"]
    added = b["counts"]["documents_added"]
    assert b["documents_in"] == 10 and b["documents_out"] == 10 + added and 1 <= added <= 9
    train = list(read_documents(tmp_path / "out", "train"))
    val = list(read_documents(tmp_path / "out", "val"))
    originals = [d for d in train + val if "augmented" not in d["meta"]]
    assert len(originals) == 10 and not any("augmented" in d["meta"] for d in val)
    copies = [d for d in train if "augmented" in d["meta"]]
    assert sum(m["augmented_added"].values()) == added and len(copies) == m["augmented_added"]["train"]
    by_id = {d["id"]: d["text"] for d in originals}
    for d in copies:
        source = d["meta"]["augmented"]["source_id"]
        assert d["id"] == f"{source}~paraphrase" and d["meta"]["augmented"]["added"] is True
        assert d["text"].startswith(" ".join(by_id[source].split()[::-1]))


def test_batches_give_the_replies_one_at_a_time_gives(tmp_path):
    src = tmp_path / "c.jsonl"
    lines = (json.dumps({"id": f"c{i}", "text": f"the story number {i} ends well"}) for i in range(12))
    src.write_text("".join(line + "\n" for line in lines))
    hashes = []
    for batch_size in (1, 4):
        BATCHES.clear()
        spec = {"block": "paraphrase", "model": str(tmp_path), "batch_size": batch_size}
        m = run_data(
            DataConfig(sources=[str(src)], pipeline=[spec]),
            tmp_path / f"o{batch_size}",
            model_generator=recording_generator,
        )
        hashes.append({k: v["sha256"] for k, v in m["splits"].items()})
        added = m["blocks"]["paraphrase"]["counts"]["documents_added"]
        assert [batch_size] * (12 // batch_size) == BATCHES and added == 12
    assert hashes[0] == hashes[1]


def test_output_does_not_depend_on_shards_or_workers(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "text": f"the story number {i} ends well"}) + "\n" for i in range(12)
        )
    )
    spec = {"block": "paraphrase", "model": str(tmp_path), "fraction": 0.5, "seed": 2}
    hashes = []
    for shard_docs, workers in ((100, 1), (3, 2)):
        cfg = DataConfig(sources=[str(src)], pipeline=[spec], shard_docs=shard_docs, workers=workers)
        m = run_data(cfg, tmp_path / f"out-{workers}", model_generator=recording_generator)
        hashes.append({k: v["sha256"] for k, v in m["splits"].items()})
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": "no/such/dir"}, "is not a model directory"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"fraction": 2}, "fraction must be in"),
        ({"prompt": "Paraphrase this"}, "prompt must contain {text}"),
        ({"time_limit_s": 0}, "time_limit_s must be > 0"),
        ({"length_ratio": [2, 1]}, "length_ratio must be"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"drop_cut": "no"}, "drop_cut must be true or false"),
        ({"model_generator": "x"}, "has no option model_generator"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_block(
            {"block": "paraphrase", "model": str(tmp_path), **spec}, model_generator=recording_generator
        )
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no text generator was given"):
        build_block({"block": "paraphrase", "model": str(tmp_path)})


def test_a_chat_model_paraphrases_deterministically_under_the_seed(chat_model):
    generate = model_dir_generator(str(chat_model))
    prompts = [
        DEFAULT_PROMPT.format(text="the cat sat on the mat"),
        DEFAULT_PROMPT.format(text="hello there"),
    ]
    first = generate(prompts, [11, 12], 12, 0.8)
    assert first == generate(prompts, [11, 12], 12, 0.8) and all(r.text.strip() for r in first)
    assert not any(r.ended for r in first)  # this model never ends its turn: every reply is cut
    assert first != generate(prompts, [13, 14], 12, 0.8)
    assert generate(prompts[:1], [11], 12, 0.8) == first[:1]  # a reply depends on its own seed only
    batched = model_dir_generator(str(chat_model), max_batch=2)
    assert [r.text for r in batched(prompts, [11, 12], 12, 0.8)] == [r.text for r in first]


def test_danlu_data_runs_the_block_on_a_model_dir(chat_model, tmp_path, monkeypatch):
    from danlu.cli import main

    src = tmp_path / "c.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "text": f"the cat number {i} sat on the mat"}) + "\n" for i in range(6)
        )
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        f"data:\n  sources: [{src}]\n  val_fraction: 0.2\n  pipeline:\n"
        f"    - {{block: paraphrase, model: {chat_model}, max_new_tokens: 8, drop_cut: false, length_ratio: [0, 99]}}\n"
        "    - {block: eda, synonym_replace: 0.3, fraction: 1.0, keep_original: true}\n"
    )
    monkeypatch.chdir(tmp_path)
    main(["data", str(recipe)])
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["blocks"]["paraphrase"]["counts"]["documents_added"] == 6
    assert [b.get("augments") for b in manifest["lineage"]["blocks"]] == [True, True]
    train = list(read_documents(tmp_path / "run" / "data", "train"))
    marks = [d["meta"]["augmented"] for d in train if "augmented" in d["meta"]]
    assert {m["block"] for m in marks} == {"paraphrase", "eda"}
    # copies of copies (eda of a paraphrase) stay with their original: validation holds originals only
    eda_marks = [m for m in marks if m["block"] == "eda"]
    assert len(eda_marks) >= 5 and all(m["source_id"].startswith("c") for m in eda_marks)
    assert all(m["of"]["block"] == "paraphrase" for m in eda_marks if m["source_id"].endswith("~paraphrase"))
    val = list(read_documents(tmp_path / "run" / "data", "val"))
    assert val and not any("augmented" in d["meta"] for d in val)
    assert all(m["model"] == "model" for m in marks if m["block"] == "paraphrase")

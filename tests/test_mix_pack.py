"""Data mixing in the pack stage: realized shares, epoch caps, phase order, seeds, config errors, and a
`danlu run` with data.mix set."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import yaml

from danlu.cli import main
from danlu.data.config import DataConfig
from danlu.data.documents import document_texts, run_data
from danlu.data.loader import TokenDataset, TrainLoader
from danlu.data.mixing import parse_mix
from danlu.data.pack import run_pack
from danlu.errors import ConfigError
from danlu.recipe import RecipeConfig, load_recipe
from danlu.run import RunLayout, read_stamp, run_mix, stage_keys, training_tokens
from danlu.tokenizer import train_tokenizer
from danlu.tokenizer.config import TokenizerConfig


def _write_source(path, tag: str, lines: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": f"{tag} {i}: {t}"}) + "\n" for i, t in enumerate(lines)))
    return str(path)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, word_lines):
    """Documents of two sources, "alpha ..." and "beta ...", and a tokenizer for them."""
    root = tmp_path_factory.mktemp("mix")
    a = _write_source(root / "a.jsonl", "alpha", word_lines(100, seed=1))
    b = _write_source(root / "b.jsonl", "beta", word_lines(100, seed=2))
    run_data(DataConfig(sources=[a, b], val_fraction=0.1), root / "docs")
    tok = train_tokenizer(document_texts(root / "docs"), TokenizerConfig(vocab_size=300), root / "tok")
    return root, tok, a, b


def _pack(two_sources, out, **mix):
    root, tok, a, b = two_sources
    return run_pack(root / "docs", tok, out, parse_mix(mix, [a, b], default_seed=0))


def _documents(tok, out) -> list[str]:
    """The train stream cut at its document starts and decoded, in stream order."""
    stream = np.fromfile(out / "train.bin", dtype=np.uint16)
    starts = np.load(out / "train.docs.npy")
    ends = [*starts[1:], len(stream)]
    return [tok.decode(stream[s + 1 : e - 1].tolist()) for s, e in zip(starts, ends, strict=True)]


def _token_shares(tok, out) -> dict[str, float]:
    stream = np.fromfile(out / "train.bin", dtype=np.uint16)
    starts = np.load(out / "train.docs.npy")
    lengths = np.diff(starts, append=len(stream))
    by_tag = Counter()
    for text, n in zip(_documents(tok, out), lengths, strict=True):
        by_tag[text.split()[0]] += int(n)
    return {tag: n / len(stream) for tag, n in by_tag.items()}


def test_weights_give_the_token_shares_asked_for(two_sources, tmp_path):
    root, tok, a, b = two_sources
    index = _pack(two_sources, tmp_path / "t", weights={a: 0.8, b: 0.2})
    shares = _token_shares(tok, tmp_path / "t")  # counted from the stream itself
    assert shares["alpha"] == pytest.approx(0.8, abs=0.03) and shares["beta"] == pytest.approx(0.2, abs=0.03)
    train = index["splits"]["train"]
    (phase,) = train["mix"]["phases"]
    assert phase["sources"][a]["share"] == pytest.approx(shares["alpha"], abs=1e-5)
    assert phase["start"] == 0 and phase["end"] == train["tokens"] == len(
        TokenDataset(tmp_path / "t", "train")
    )
    natural = train["mix"]["sources"]
    # the budget defaults to the train split's size: alpha is upsampled (~1.6 epochs), beta cut (~0.4)
    total = sum(s["available_tokens"] for s in natural.values())
    longest = int(np.diff(np.load(tmp_path / "t" / "train.docs.npy"), append=train["tokens"]).max())
    assert total <= train["tokens"] < total + 2 * longest  # each source crosses its target by < 1 doc
    assert natural[a]["epochs"] == pytest.approx(0.8 * total / natural[a]["available_tokens"], rel=0.03)
    assert train["documents"] == len(np.load(tmp_path / "t" / "train.docs.npy"))
    val = run_pack(root / "docs", tok, tmp_path / "plain")["splits"]["val"]
    assert index["splits"]["val"] == val  # validation is never mixed


def test_max_epochs_caps_upsampling(two_sources, tmp_path):
    _, tok, a, b = two_sources
    free = _pack(two_sources, tmp_path / "free", weights={a: 0.9, b: 0.1})["splits"]["train"]["mix"]
    capped = _pack(two_sources, tmp_path / "cap", weights={a: 0.9, b: 0.1}, max_epochs=1.2)
    mix = capped["splits"]["train"]["mix"]
    assert free["sources"][a]["epochs"] > 1.7  # uncapped: 0.9 of the budget is ~1.8 passes over alpha
    assert 1.15 < mix["sources"][a]["epochs"] <= 1.2 + 0.05  # capped (crossing it by < 1 document)
    assert mix["sources"][b]["epochs"] > 0.5  # beta takes what alpha could not supply
    repeats = Counter(t for t in _documents(tok, tmp_path / "cap") if t.startswith("alpha"))
    assert max(repeats.values()) == 2 and min(repeats.values()) == 1  # one pass, then a part of one
    assert capped["splits"]["train"]["tokens"] == pytest.approx(mix["tokens_asked"], rel=0.02)


def test_a_budget_beyond_the_epoch_cap_is_cut_with_a_warning(two_sources, tmp_path, caplog):
    index = _pack(two_sources, tmp_path / "t", alpha=0.0, max_epochs=0.5)
    mix = index["splits"]["train"]["mix"]
    assert all(0.5 <= s["epochs"] < 0.55 for s in mix["sources"].values())  # every source at its cap
    assert index["splits"]["train"]["tokens"] < 0.55 * mix["tokens_asked"]
    assert "data.mix.max_epochs=0.5 caps the mix" in caplog.text


def test_phases_are_laid_out_in_order(two_sources, tmp_path):
    _, tok, a, b = two_sources
    phases = [{"until": 0.7, "weights": {a: 1, b: 1}}, {"until": 1.0, "weights": {b: 1}}]
    index = _pack(two_sources, tmp_path / "t", phases=phases, tokens=3000)
    first, last = index["splits"]["train"]["mix"]["phases"]
    starts = np.load(tmp_path / "t" / "train.docs.npy").tolist()
    longest = int(np.diff(starts, append=last["end"]).max())
    # 0.7 of the budget, each source crossing its target by less than one document
    assert first["end"] == last["start"] and 2100 <= first["end"] < 2100 + 2 * longest
    assert last["sources"][a]["tokens"] == 0 and last["sources"][b]["share"] == 1.0
    texts = _documents(tok, tmp_path / "t")
    assert last["start"] in starts  # a phase boundary is a document boundary
    cut = starts.index(last["start"])
    assert all(t.startswith("beta") for t in texts[cut:])
    assert {t.split()[0] for t in texts[:cut]} == {"alpha", "beta"}
    # the loader trains phase 1's windows before any window that starts in phase 2
    loader = TrainLoader(TokenDataset(tmp_path / "t", "train"), batch_size=2, seq_len=16, seed=0)
    order = loader._epoch_order() * 16
    n_first = -(-last["start"] // 16)
    assert (order[:n_first] < last["start"]).all() and (order[n_first:] >= last["start"]).all()


def test_same_seed_same_file_other_seed_other_order(two_sources, tmp_path):
    tok = two_sources[1]
    same = [_pack(two_sources, tmp_path / f"s{i}", seed=4)["splits"]["train"]["sha256"] for i in (1, 2)]
    other = _pack(two_sources, tmp_path / "o", seed=5)["splits"]["train"]["sha256"]
    assert same[0] == same[1] != other
    # alpha=1 over the natural budget takes every document once: same documents, another order
    docs4, docs5 = _documents(tok, tmp_path / "s1"), _documents(tok, tmp_path / "o")
    assert sorted(docs4) == sorted(docs5) and docs4 != docs5


@pytest.mark.parametrize(
    ("mix", "key"),
    [
        ({"weights": {"nope": 1.0}}, "data.mix.weights: unknown source 'nope'"),
        ({"weights": {"a": -1.0, "b": 1.0}}, "data.mix.weights: weights must be >= 0"),
        ({"weights": {"a": 0, "b": 0}}, "data.mix.weights: weights must be >= 0 with at least one > 0"),
        ({"weights": {"a": "heavy"}}, "data.mix.weights.a: expected a finite number"),
        ({"weights": {"a": 1}, "alpha": 0.5}, "data.mix: give weights or alpha"),
        ({"alpha": -0.5}, "data.mix.alpha: must be >= 0"),
        ({"alpah": 0.5}, "data.mix.alpah: unknown key; did you mean data.mix.alpha"),
        ({"max_epochs": 0}, "data.mix.max_epochs: must be > 0"),
        ({"tokens": 0}, "data.mix.tokens: expected an integer >= 1"),
        ({"phases": [{"until": 0.7}, {"until": 0.5}, {"until": 1.0}]}, "data.mix.phases: .*must increase"),
        ({"phases": [{"until": 0.5}, {"until": 0.9}]}, "data.mix.phases: .*end at until: 1.0"),
        ({"phases": [{"weights": {"a": 1}}]}, r"data.mix.phases\[0\]: missing until"),
        ({"phases": [{"until": 1.0, "weights": {"c": 1}}]}, r"data.mix.phases\[0\].weights: unknown source"),
        ({"phases": [{"until": 1.0, "wieghts": {}}]}, r"data.mix.phases\[0\].wieghts: unknown key"),
        ({"phases": "late"}, "data.mix.phases: expected a list"),
    ],
)
def test_bad_mix_configs_name_the_key(mix, key):
    with pytest.raises(ConfigError, match=key):
        DataConfig(sources=["a", "b"], mix=mix)


def test_a_recipe_with_a_mix_loads_and_only_repacks(tmp_path):
    recipe = {
        "data": {
            "sources": ["shakespeare", "chitchat"],
            "mix": {
                "weights": {"shakespeare": 0.7, "chitchat": 0.3},
                "max_epochs": 4,
                "tokens": 2000000,
                "phases": [
                    {"until": 0.7},
                    {"until": 0.9, "weights": {"shakespeare": 0.5, "chitchat": 0.5}},
                    {"until": 1.0, "weights": {"chitchat": 1}},
                ],
            },
        }
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cfg = load_recipe(tmp_path / "r.yaml")
    spec = parse_mix(cfg.data.mix, cfg.data.sources, cfg.data.seed)
    assert [p.end for p in spec.phases] == [0.7, 0.9, 1.0] and spec.seed == cfg.data.seed == 1337
    assert spec.weights == {"shakespeare": 0.7, "chitchat": 0.3} and spec.tokens == 2_000_000
    assert load_recipe(None, ["--data.mix.alpha=0.3"]).data.mix == {"alpha": 0.3}
    with pytest.raises(ConfigError, match=r"data\.mix\.weights: unknown source 'shakespear'"):
        load_recipe(None, ["--data.mix.weights.shakespear=1"])

    plain, mixed = stage_keys(RecipeConfig()), stage_keys(cfg)
    reseeded = stage_keys(load_recipe(tmp_path / "r.yaml", ["--data.mix.seed=3"]))
    assert mixed["data"] == plain["data"] and mixed["tokenizer"] == plain["tokenizer"]
    assert len({plain["pack"], mixed["pack"], reseeded["pack"]}) == 3
    assert mixed["pretrain"] != reseeded["pretrain"]


def test_run_with_a_mix_trains_and_a_changed_mix_repacks_only(tmp_path, word_lines, capsys, caplog):
    a = _write_source(tmp_path / "a.jsonl", "alpha", word_lines(60, seed=3))
    b = _write_source(tmp_path / "b.jsonl", "beta", word_lines(60, seed=4))
    cfg = {
        "name": "mix",
        "run_dir": str(tmp_path / "out"),
        "data": {"sources": [a, b], "val_fraction": 0.1,
                 "mix": {"weights": {a: 0.5, b: 0.5}, "tokens": 2000,
                         "phases": [{"until": 0.5}, {"until": 1.0, "weights": {b: 1}}]}},
        "tokenizer": {"vocab_size": 300},
        "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "max_seq_len": 16},
        "train": {"seq_len": 16, "batch_size": 4, "max_steps": 4, "eval_every": 2, "eval_batches": 1,
                  "ckpt_every": 2, "log_every": 1, "device": "cpu"},
        "sample": {"prompts": ["alpha"], "max_new_tokens": 4},
    }  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "r.yaml")]) == 0
    layout = RunLayout(tmp_path / "out")
    index = json.loads((layout.tokens / "index.json").read_text())
    assert [p["until"] for p in index["splits"]["train"]["mix"]["phases"]] == [0.5, 1.0]
    assert (
        "mix" not in json.loads((layout.docs / "manifest.json").read_text())["config"]
    )  # pack's, not data's
    metrics = [json.loads(line) for line in (layout.root / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
    assert "training stops in phase 1 of 2; set data.mix.tokens to about 256" in caplog.text

    # another mix: documents and tokenizer are reused, the tokens are packed anew
    before = {s: read_stamp(layout, s) for s in ("data", "tokenizer", "pack")}
    cfg["data"]["mix"] = {"alpha": 0.5}
    cfg["train"]["max_steps"] = 2
    (tmp_path / "r2.yaml").write_text(yaml.safe_dump(cfg))
    for path in (layout.root / "checkpoints", layout.model):  # the old checkpoints trained another mix
        shutil.rmtree(path)
    (layout.root / "metrics.jsonl").unlink()
    assert main(["run", str(tmp_path / "r2.yaml")]) == 0, capsys.readouterr().err
    after = {s: read_stamp(layout, s) for s in before}
    assert after["data"] == before["data"] and after["tokenizer"] == before["tokenizer"]
    assert after["pack"]["key"] != before["pack"]["key"]
    repacked = json.loads((layout.tokens / "index.json").read_text())["splits"]["train"]["mix"]
    assert repacked["alpha"] == 0.5 and len(repacked["phases"]) == 1


def test_a_phased_mix_without_a_budget_packs_what_training_reads(tmp_path):
    phases = [{"until": 0.7}, {"until": 1.0, "weights": {"chitchat": 1}}]
    recipe = {"data": {"mix": {"weights": {"shakespeare": 0.5, "chitchat": 0.5}, "phases": phases}},
              "train": {"max_steps": 10, "grad_accum": 2, "batch_size": 3, "seq_len": 64}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cfg = load_recipe(tmp_path / "r.yaml")
    assert run_mix(cfg).tokens == training_tokens(cfg) == 10 * 2 * 3 * 64
    longer = load_recipe(tmp_path / "r.yaml", ["--train.max_steps=20"])
    assert run_mix(longer).tokens == 2 * run_mix(cfg).tokens
    assert stage_keys(longer)["pack"] != stage_keys(cfg)["pack"]  # a new budget re-packs the schedule
    # an explicit budget wins, and a mix without phases keeps the train split's own size
    assert run_mix(load_recipe(tmp_path / "r.yaml", ["--data.mix.tokens=5000"])).tokens == 5000
    del recipe["data"]["mix"]["phases"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    plain = load_recipe(tmp_path / "r.yaml")
    assert run_mix(plain).tokens is None
    assert (
        stage_keys(plain)["pack"]
        == stage_keys(load_recipe(tmp_path / "r.yaml", ["--train.max_steps=20"]))["pack"]
    )

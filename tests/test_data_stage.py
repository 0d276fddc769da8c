"""The data stage on the user's path: model-dir perplexity scores, hf: sources, binary files, tiny corpora."""

from __future__ import annotations

import json
import random

import pytest

from danlu.cli import main
from danlu.data.config import DataConfig
from danlu.data.documents import read_documents, run_data
from danlu.data.readers import ReadReport, read_path
from danlu.errors import DanluError, DataError

WORDS = ["king", "queen", "night", "day", "love", "sword", "crown", "river", "friend", "foe"]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny danlu model dir: an untrained 1-layer model and a 300-token BPE."""
    from danlu.model import build_model, resolve_model_config
    from danlu.model.config import ModelConfig
    from danlu.model_dir import save_model_dir
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("ppl_model")
    tok_dir = Tokenizer.train(_texts(300), 300).save(root / "tokenizer")
    cfg = resolve_model_config(ModelConfig(n_layer=1, n_embd=32, n_head=2, max_seq_len=32), 300)
    return save_model_dir(root / "model", build_model(cfg), cfg, tok_dir)


def _corpus(path, texts):
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _all_docs(docs_dir):
    return [d for split in ("train", "val") for d in read_documents(docs_dir, split)]


def test_perplexity_block_with_a_model_dir_scores_through_danlu_data(model_dir, tmp_path, capsys):
    texts = _texts(12, seed=1)
    corpus = _corpus(tmp_path / "c.jsonl", texts)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: ppl\nrun_dir: {tmp_path / 'run'}\ndata:\n  sources: [{corpus}]\n  val_fraction: 0.2\n"
        f"  pipeline:\n    - {{block: perplexity, model: {model_dir}, annotate_only: true}}\n"
    )
    assert main(["data", str(recipe)]) == 0, capsys.readouterr().err
    from danlu.run import RunLayout

    docs = _all_docs(RunLayout(tmp_path / "run").docs)
    assert sorted(d["text"] for d in docs) == sorted(texts)
    from danlu.eval.perplexity import model_dir_scorer

    want = dict(zip(texts, model_dir_scorer(str(model_dir))(texts), strict=True))
    for d in docs:  # an untrained model: perplexity near its vocabulary size, and the scorer's own value
        assert 30 < d["meta"]["perplexity"] < 3000
        assert d["meta"]["perplexity"] == pytest.approx(want[d["text"]], rel=1e-5)


def test_model_dir_scores_are_the_same_in_worker_processes(model_dir, tmp_path):
    from danlu.eval.perplexity import model_dir_scorer

    corpus = _corpus(tmp_path / "c.jsonl", _texts(12, seed=2))
    spec = {"block": "perplexity", "model": str(model_dir), "keep_bottom": 0.5}
    out = {}
    for workers in (1, 2):
        cfg = DataConfig(
            sources=[str(corpus)], pipeline=[spec], val_fraction=0.2, shard_docs=4, workers=workers
        )
        run_data(cfg, tmp_path / f"w{workers}", model_scorer=model_dir_scorer)
        out[workers] = sorted((d["id"], d["meta"]["perplexity"]) for d in _all_docs(tmp_path / f"w{workers}"))
    assert len(out[1]) == 6 and out[1] == out[2]


def test_a_model_dir_without_a_scorer_is_a_clear_error(model_dir, tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl", _texts(6))
    spec = {"block": "perplexity", "model": str(model_dir), "annotate_only": True}
    with pytest.raises(DanluError, match="model_dir_scorer"):
        run_data(DataConfig(sources=[str(corpus)], pipeline=[spec]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_source_is_streamed_by_the_data_stage(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config=None, split="train", streaming=False, **kwargs):
        calls.append((name, config, split, streaming))
        return iter([{"text": t, "n": i} for i, t in enumerate(_texts(5, seed=3))] + [{"body": "no text"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = "hf:someone/tiny-stories:en@train"
    manifest = run_data(DataConfig(sources=[spec], val_fraction=0.2), tmp_path / "out")
    assert calls == [("someone/tiny-stories", "en", "train", True)]
    docs = _all_docs(tmp_path / "out")
    assert sorted(d["text"] for d in docs) == sorted(_texts(5, seed=3))
    assert {d["source"] for d in docs} == {spec} and all("n" in d["meta"] for d in docs)
    assert manifest["sources"][spec]["malformed_input"]["problems"] == {"missing_text": 1}


def test_a_binary_file_given_as_text_is_dropped_as_malformed(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.txt").write_text("A plain document that is real text.\n")
    # one Latin-1 letter in 115 characters: under 1% replaced, kept; random bytes: over half, dropped
    sentence = "Un caf\xe9, puis une longue phrase sans aucun autre accent, pour que tout le reste "
    latin1 = (sentence + "de ce fichier soit du texte ASCII. ") * 10
    (folder / "latin1.txt").write_bytes(latin1.encode("latin-1"))
    rng = random.Random(0)
    (folder / "image.txt").write_bytes(bytes(rng.randrange(256) for _ in range(20_000)))
    report = ReadReport()
    docs = {d["id"].rsplit("/", 1)[-1]: d for d in read_path(folder, report)}
    assert sorted(docs) == ["good.txt", "latin1.txt"]  # a few bad bytes are kept, decoded with U+FFFD
    assert docs["latin1.txt"]["text"] == latin1.replace("\xe9", "\ufffd")
    assert report.problems == {"bad_encoding": 1, "undecodable": 1}
    assert "image.txt" in report.examples["undecodable"][0] and "%" in report.examples["undecodable"][0]
    with pytest.raises(DataError, match=r"image\.txt"):
        list(read_path(folder / "image.txt"))  # strict mode names the file


def test_a_binary_line_of_jsonl_is_dropped_but_a_stray_byte_is_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"text": "fine text here, long enough"}).encode()
    text = "one bad byte: X, " + "in a line of more than a hundred characters " * 3
    stray = json.dumps({"text": text}).encode()
    stray = stray.replace(b"X", b"\xff")
    junk = b'{"text": "' + bytes(range(128, 256)) * 4 + b'"}'
    path.write_bytes(b"\n".join([good, stray, junk]) + b"\n")
    report = ReadReport()
    texts = [d["text"] for d in read_path(path, report)]
    assert texts == ["fine text here, long enough", text.replace("X", "\ufffd")]
    assert report.problems == {"bad_encoding": 1, "undecodable": 1}


def test_sources_too_small_for_a_validation_split_fail_in_the_data_stage_saying_what_to_change(tmp_path):
    a = _corpus(tmp_path / "a.jsonl", ["one document of source a, long enough to keep."])
    b = _corpus(tmp_path / "b.jsonl", ["one document of source b, long enough to keep.", "tiny"])
    with pytest.raises(DataError) as err:
        run_data(DataConfig(sources=[str(a), str(b)]), tmp_path / "out")
    message = str(err.value)
    assert "re-run" not in message and "validation" in message
    assert "add documents" in message and "data.min_chars=20" in message
    assert f"{a}: 1" in message and f"{b}: 1" in message
    assert not (tmp_path / "out").exists()


def test_one_usable_document_says_what_to_change(tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl", ["one document, long enough to keep.", "short"])
    with pytest.raises(DataError, match=r"add documents.*data\.min_chars=20"):
        run_data(DataConfig(sources=[str(corpus)]), tmp_path / "out")

"""`danlu run` end to end on a tiny local corpus, stage skipping, and the verbs that use its outputs."""

from __future__ import annotations

import json
import shutil

import pytest

from danlu.cli import main
from danlu.data.sources import CHAT_LABELS
from danlu.infer.chat import ChatSession
from danlu.model_dir import load_model
from danlu.run import RunLayout, read_stamp
from danlu.tokenizer.bpe import OBJECTIVE_TOKENS
from run_support import tiny_recipe


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, word_lines):
    return tiny_recipe(tmp_path_factory.mktemp("run"), word_lines, "t")


def test_run_end_to_end_then_skips_up_to_date_stages(recipe, capsys):
    assert main(["run", str(recipe / "r.yaml")]) == 0
    out = capsys.readouterr().out
    assert "validation bits/byte:" in out and "--- sample ---\nA: hello\nB:" in out
    layout = RunLayout(recipe / "out")
    stamps = {s: read_stamp(layout, s) for s in ("data", "tokenizer", "pack", "pretrain")}
    assert all(stamps.values())
    bpb = float(out.split("validation bits/byte:")[1].split()[0])
    metrics = [json.loads(line) for line in (layout.root / "metrics.jsonl").read_text().splitlines()]
    assert bpb == pytest.approx(metrics[-1]["val_bpb"], abs=1e-4)
    assert (layout.root / "loss.png").stat().st_size > 0

    # Rerun: nothing is redone. Then a longer schedule: only pretraining runs, resuming from step 6.
    assert main(["run", str(recipe / "r.yaml")]) == 0
    assert {s: read_stamp(layout, s) for s in stamps} == stamps
    assert main(["run", str(recipe / "r.yaml"), "--train.max_steps=9"]) == 0
    for s in ("data", "tokenizer", "pack"):
        assert read_stamp(layout, s) == stamps[s]
    assert read_stamp(layout, "pretrain")["result"]["steps"] == 9
    recs = [json.loads(line) for line in (layout.root / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 10))  # continued, not restarted


def test_generate_tokenizer_and_chat_verbs(recipe, capsys, monkeypatch):
    model_dir = recipe / "out" / "model"
    assert (
        main(
            ["generate", str(recipe / "out"), "--prompt", "the king", "--max-new-tokens", "5", "--seed", "1"]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("the king")
    assert main(["tokenizer", "encode", "--tokenizer", str(recipe / "out"), "the king"]) == 0
    _, tok, _ = load_model(model_dir)
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("the king")]
    assert main(["tokenizer", "stats", "--tokenizer", str(model_dir), str(recipe / "corpus.jsonl")]) == 0
    assert "bytes_per_token" in capsys.readouterr().out

    answers = iter(["hello there", ""])
    monkeypatch.setattr("builtins.input", lambda _prompt: next(answers))
    assert main(["chat", str(model_dir), "--seed", "0", "--max-new-tokens", "6"]) == 0
    assert "transcript mode" in capsys.readouterr().out


def test_chat_transcript_prompt_and_history(recipe):
    session = ChatSession.from_dir(recipe / "out" / "model", seed=0, max_new_tokens=12)
    assert session.mode == "transcript"
    reply = "".join(session.reply("hello"))
    assert "\n" not in reply
    assert session.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply}]
    a, b = CHAT_LABELS
    session.history.append({"role": "user", "content": "hi"})
    assert (
        session.tokenizer.decode(session.prompt_ids(), skip_special=True)
        == f"{a}: hello\n{b}: {reply}\n{a}: hi\n{b}:"
    )


def test_vocab_too_large_for_the_data_fails_cleanly(recipe, capsys, tmp_path):
    over = [f"--run_dir={tmp_path / 'big'}", "--tokenizer.vocab_size=20000"]
    assert main(["run", str(recipe / "r.yaml"), *over]) == 2
    err = capsys.readouterr().err
    assert "lower tokenizer.vocab_size" in err and "Traceback" not in err
    assert not (tmp_path / "big" / "tokenizer").exists()


def test_a_tokenizer_from_an_older_danlu_is_retrained_and_later_stages_follow(recipe, tmp_path, caplog):
    run = tmp_path / "old"
    shutil.copytree(recipe / "out", run)
    layout = RunLayout(run)
    before = {s: read_stamp(layout, s) for s in ("data", "tokenizer", "pack", "pretrain")}
    tok_file = layout.tokenizer / "tokenizer.json"
    spec = json.loads(tok_file.read_text())  # as trained before the objective tokens existed
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in OBJECTIVE_TOKENS]
    tok_file.write_text(json.dumps(spec))
    shutil.rmtree(run / "checkpoints")  # they were trained on the old tokenizer's tokens
    shutil.rmtree(layout.model)

    assert main(["run", str(recipe / "r.yaml"), f"--run_dir={run}"]) == 0
    assert "lacks 20 special tokens (<|mask|>, ...)" in caplog.text
    after = {s: read_stamp(layout, s) for s in before}
    assert after["data"] == before["data"]  # up to date: kept
    for stage in ("tokenizer", "pack", "pretrain"):  # the tokenizer reran, so everything after it did
        assert after[stage]["finished"] > before[stage]["finished"]
    added = {t["content"] for t in json.loads(tok_file.read_text())["added_tokens"]}
    assert set(OBJECTIVE_TOKENS) <= added


def test_a_second_run_on_a_busy_run_dir_fails_at_once_and_touches_nothing(recipe, capsys):
    from danlu.io import run_lock

    out = recipe / "out"
    out.mkdir(exist_ok=True)
    before = sorted(p.name for p in out.iterdir())
    with run_lock(out):  # another danlu process, as far as the lock can tell
        assert main(["run", str(recipe / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "another danlu process" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted({*before, ".lock"})


def test_a_stage_rerun_with_other_settings_trains_afresh_keeping_the_old_checkpoints(
    recipe, tmp_path, caplog
):
    run = tmp_path / "changed"
    shutil.copytree(recipe / "out", run, ignore=shutil.ignore_patterns(".lock"))
    assert main(["run", str(recipe / "r.yaml"), f"--run_dir={run}", "--train.lr=0.002"]) == 0
    assert "made with other settings (settings.train.lr:" in caplog.text
    (aside,) = run.glob("checkpoints-superseded-*")
    assert (aside / "step-000006").is_dir()  # the old run's checkpoints, moved, not deleted
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r][:2] == [1, 2]  # trained from the start

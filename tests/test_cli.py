"""The `danlu` command: argument handling and clean failures (exit 2, one line, no traceback)."""

import subprocess
import sys

import pytest

from danlu.cli import main, split_overrides


def test_split_overrides():
    rest, over = split_overrides(
        ["run", "r.yaml", "--train.lr", "3e-4", "--force", "data", "--name=x", "--model.n_layer=2"]
    )
    assert rest == ["run", "r.yaml", "--force", "data"]
    assert over == ["--train.lr", "3e-4", "--name=x", "--model.n_layer=2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "no/such/recipe.yaml"], "recipe no/such/recipe.yaml not found"),
        (["run", "--train.lrr=1"], "did you mean train.lr"),
        (["run", "--force", "nosuchstage"], "unknown stage"),
        (["tokenizer", "encode", "--tokenizer", "no/such/dir", "hi"], "no/such/dir"),
        (["generate", "no/such/model", "--prompt", "hi"], "no/such/model"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("danlu: error:") and message in err
    assert "Traceback" not in err


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "danlu.cli", "run", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not found" in proc.stderr


# --- export / import never destroy what is already at OUT ---


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny danlu model dir (an untrained 1-layer model and a 320-token BPE)."""
    import random

    from danlu.model import build_model, resolve_model_config
    from danlu.model.config import ModelConfig
    from danlu.model_dir import save_model_dir
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("tiny_model")
    rng = random.Random(0)
    words = ["king", "queen", "night", "day", "love", "sword", "crown", "river", "friend", "foe"]
    texts = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(300)]
    tok_dir = Tokenizer.train(texts, 320).save(root / "tokenizer")
    cfg = resolve_model_config(ModelConfig(n_layer=1, n_embd=32, n_head=2, max_seq_len=32), 320)
    return save_model_dir(root / "model", build_model(cfg), cfg, tok_dir)


def _names(path):
    return sorted(p.name for p in path.iterdir())


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("danlu: error:") and "Traceback" not in err
    return err


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_never_deletes_files_in_a_foreign_dir(tiny_model, tmp_path, capsys, force):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(tiny_model), str(out), *force]) == 2
    err = _error(capsys)
    assert str(out) in err and "keep.txt" in err and "another" in err
    assert _names(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert _names(tmp_path) == ["out"]


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_never_replaces_a_file(tiny_model, tmp_path, capsys, force):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert main(["export", str(tiny_model), str(out), *force]) == 2
    assert "is a file" in _error(capsys)
    assert out.read_text() == "mine" and _names(tmp_path) == ["notes.txt"]


def test_export_replaces_a_model_dir_only_with_force(tiny_model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(tiny_model), str(empty)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(_names(empty))

    out = tmp_path / "hf"
    assert main(["export", str(tiny_model), str(out)]) == 0
    capsys.readouterr()
    (out / "README.md").write_text("mine")
    assert main(["export", str(tiny_model), str(out)]) == 2
    err = _error(capsys)
    assert "already holds a model" in err and "--force" in err
    assert (out / "README.md").exists()
    assert main(["export", str(tiny_model), str(out), "--force"]) == 0
    assert not (out / "README.md").exists() and (out / "model.safetensors").is_file()
    assert _names(tmp_path) == ["empty", "hf"]


def test_export_writes_files_with_the_umask_modes(tiny_model, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["export", str(tiny_model), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert modes == dict.fromkeys(modes, 0o644)
    assert stat.S_IMODE((tmp_path / "hf").stat().st_mode) == 0o755


def test_import_guards_its_output_like_export(tiny_model, tmp_path, capsys):
    hf = tmp_path / "hf"
    assert main(["export", str(tiny_model), str(hf)]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")  # the guard runs before the file is read
    for src in (hf, tmp_path / "model.gguf"):
        for force in ([], ["--force"]):
            capsys.readouterr()
            assert main(["import", str(src), str(foreign), *force]) == 2
            assert "keep.txt" in _error(capsys)
            assert _names(foreign) == ["keep.txt"]
            assert main(["import", str(src), str(tmp_path / "model.gguf"), *force]) == 2
            assert "is a file" in _error(capsys)
    assert (tmp_path / "model.gguf").read_bytes() == b"GGUF"

    out = tmp_path / "danlu"
    assert main(["import", str(hf), str(out)]) == 0
    capsys.readouterr()
    assert main(["import", str(hf), str(out)]) == 2
    assert "--force" in _error(capsys)
    assert main(["import", str(hf), str(out), "--force"]) == 0
    assert {"config.json", "model.safetensors", "tokenizer"} <= set(_names(out))
    assert _names(tmp_path) == ["danlu", "foreign", "hf", "model.gguf"]


def test_a_folder_with_no_model_is_named_as_such_not_called_corrupt(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["chat", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no model" in err and "delete" not in err and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "not a model"

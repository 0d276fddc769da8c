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

"""Atomic writes: files and directories get the modes the umask gives any other tool's files, and an
interrupted write leaves either the old output or nothing, never a half-written one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from danlu.errors import OutputExistsError
from danlu.io import atomic_dir, atomic_path, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _temps(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mask, file_mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_text_follows_the_umask(tmp_path, umask, mask, file_mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "hi")
    assert _mode(tmp_path / "a.txt") == file_mode
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "b.bin") == file_mode


@pytest.mark.parametrize("mask, dir_mode", [(0o022, 0o755), (0o077, 0o700)])
def test_atomic_dir_follows_the_umask(tmp_path, umask, mask, dir_mode):
    umask(mask)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("x")
    assert _mode(tmp_path / "out") == dir_mode
    assert _mode(tmp_path / "out" / "sub") == dir_mode


def test_saved_model_dir_has_umask_modes(tmp_path, umask):
    from torch import nn

    from danlu.model.config import ModelConfig
    from danlu.model_dir import save_model_dir

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    out = save_model_dir(tmp_path / "model", nn.Linear(2, 2), ModelConfig(), tok)
    assert _mode(out) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert _temps(tmp_path) == []


def test_interrupted_atomic_dir_leaves_nothing_that_looks_complete(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "new") as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []

    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("killed")
    assert (tmp_path / "out" / "v").read_text() == "1"
    assert _temps(tmp_path) == []


def test_atomic_dir_replaces_an_old_dir_but_never_a_file(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "w").write_text("2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["w"]
    assert _temps(tmp_path) == []

    (tmp_path / "notes").write_text("mine")
    with pytest.raises(OutputExistsError), atomic_dir(tmp_path / "notes") as tmp:
        (tmp / "v").write_text("1")
    assert (tmp_path / "notes").read_text() == "mine"
    assert _temps(tmp_path) == []

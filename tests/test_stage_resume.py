"""A recipe stage resumes its step checkpoints only when they were made with the same settings."""

from __future__ import annotations

import logging

from danlu.stage_resume import prepare_stage_checkpoints, setting_changes


def _with_checkpoints(out):
    for step in (3, 6):
        (out / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        (out / "checkpoints" / f"step-{step:06d}" / "model.safetensors").write_bytes(b"x")


def _started(lr=0.01, max_steps=6, pack="k1"):
    return {"settings": {"train": {"lr": lr, "max_steps": max_steps}}, "inputs": {"pack": pack}}


def test_setting_changes_ignore_the_length_of_the_schedule_only():
    assert setting_changes(_started(), _started(max_steps=9)) == []
    assert setting_changes(_started(), _started(lr=0.02)) == ["settings.train.lr: 0.01 -> 0.02"]
    assert setting_changes(_started(), _started(pack="k2")) == ["inputs.pack: 'k1' -> 'k2'"]
    assert setting_changes({"a": {"b": 1}}, {"a": {}}) == ["a.b: 1 -> None"]


def test_checkpoints_of_the_same_settings_or_a_longer_schedule_stay(tmp_path):
    stamps, out = tmp_path / ".stages", tmp_path / "run"
    _with_checkpoints(out)
    prepare_stage_checkpoints(stamps, "pretrain", out, _started())  # first start: records, moves nothing
    prepare_stage_checkpoints(stamps, "pretrain", out, _started(max_steps=9))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]


def test_checkpoints_of_other_settings_are_moved_aside_not_deleted(tmp_path, caplog):
    stamps, out = tmp_path / ".stages", tmp_path / "run"
    _with_checkpoints(out)
    prepare_stage_checkpoints(stamps, "sft", out, _started())
    with caplog.at_level(logging.WARNING):
        prepare_stage_checkpoints(stamps, "sft", out, _started(lr=0.02, max_steps=9))
    assert not (out / "checkpoints").exists()
    (aside,) = out.glob("checkpoints-superseded-*")
    assert (aside / "step-000006" / "model.safetensors").read_bytes() == b"x"
    assert "made with other settings (settings.train.lr: 0.01 -> 0.02)" in caplog.text
    # the new settings are now the record: the next start under them keeps what it trains
    _with_checkpoints(out)
    prepare_stage_checkpoints(stamps, "sft", out, _started(lr=0.02, max_steps=9))
    assert (out / "checkpoints" / "step-000006").is_dir()


def test_a_run_dir_from_before_the_record_resumes_as_it_did(tmp_path):
    stamps, out = tmp_path / ".stages", tmp_path / "run"
    _with_checkpoints(out)
    prepare_stage_checkpoints(stamps, "pretrain", out, _started(lr=0.5))  # no record of its start yet
    assert (out / "checkpoints" / "step-000006").is_dir()

"""The token loader: windows, determinism, exact resume, and refusal of truncated shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.loader import TokenDataset, TrainLoader, eval_batches
from danlu.errors import DataError


def _tokens_dir(path, n_tokens: int, dtype=np.uint16, phase_ends: tuple[int, ...] = ()):
    """A packed directory whose token at position i is i (mod 2^16), so windows are easy to check;
    phase_ends records a phased mix whose phases end at these token offsets."""
    path.mkdir(parents=True, exist_ok=True)
    np.arange(n_tokens, dtype=np.int64).astype(dtype).tofile(path / "train.bin")
    split = {"file": "train.bin", "tokens": n_tokens, "documents": 1, "bytes": n_tokens}
    if phase_ends:
        starts = [0, *phase_ends[:-1]]
        split["mix"] = {"phases": [{"start": a, "end": b} for a, b in zip(starts, phase_ends, strict=True)]}
    index = {"dtype": np.dtype(dtype).name, "vocab_size": 70000, "splits": {"train": split}}
    (path / "index.json").write_text(json.dumps(index))
    return path


def test_batches_are_shifted_windows_covering_each_window_once_per_epoch(tmp_path):
    ds = TokenDataset(_tokens_dir(tmp_path, 1001, np.uint32), "train")
    loader = TrainLoader(ds, batch_size=4, seq_len=10, seed=0)  # (1001-1)//10 = 100 windows
    it = iter(loader)
    starts = []
    for _ in range(25):
        x, y = next(it)
        assert x.shape == y.shape == (4, 10) and x.dtype == torch.long
        assert torch.equal(y, x + 1)  # y is x shifted by one: the stream is 0, 1, 2, ...
        assert torch.all(x[:, 0] % 10 == 0)
        starts += x[:, 0].tolist()
    assert sorted(starts) == list(range(0, 1000, 10))  # one epoch = every window exactly once
    assert loader.state_dict()["epoch"] == 0 and loader.state_dict()["pos"] == 100
    x, _ = next(it)  # the next batch starts a new epoch in a new order
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["pos"] == 4


@settings(max_examples=25, deadline=None)
@given(consumed=st.integers(0, 60), batch=st.integers(1, 7), seed=st.integers(0, 2**31))
def test_resume_from_any_position_continues_identically(tmp_path_factory, consumed, batch, seed):
    ds = TokenDataset(_tokens_dir(tmp_path_factory.mktemp("t"), 500), "train")
    a = TrainLoader(ds, batch, 8, seed)
    for _ in range(consumed):
        a.next_batch()
    b = TrainLoader(ds, batch, 8, seed)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # through JSON, as a checkpoint stores it
    for _ in range(15):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seed_changes_order_and_same_seed_repeats(tmp_path):
    ds = TokenDataset(_tokens_dir(tmp_path, 2000), "train")
    first = [TrainLoader(ds, 4, 16, s).next_batch()[0] for s in (1, 1, 2)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_resume_with_other_settings_is_refused(tmp_path):
    ds = TokenDataset(_tokens_dir(tmp_path, 2000), "train")
    state = TrainLoader(ds, 4, 16, 1).state_dict()
    with pytest.raises(DataError, match="batch_size was 4, now 8"):
        TrainLoader(ds, 8, 16, 1).load_state_dict(state)


def test_eval_batches_are_fixed_and_capped(tmp_path):
    ds = TokenDataset(_tokens_dir(tmp_path, 105), "train")  # (105-1)//10 = 10 windows
    batches = list(eval_batches(ds, 4, 10))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0][0][:, 0].tolist() == [0, 10, 20, 30]
    assert len(list(eval_batches(ds, 4, 10, max_batches=2))) == 2


def test_truncated_or_missing_shard_is_refused(tmp_path):
    d = _tokens_dir(tmp_path, 1000)
    with open(d / "train.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="truncated"):
        TokenDataset(d, "train")
    (d / "train.bin").unlink()
    with pytest.raises(DataError, match="missing or truncated"):
        TokenDataset(d, "train")
    with pytest.raises(DataError, match="lacks split 'val'"):
        TokenDataset(d, "val")
    with pytest.raises(DataError, match="run the pack stage"):
        TokenDataset(tmp_path / "nowhere", "train")


def test_too_small_split_is_refused(tmp_path):
    ds = TokenDataset(_tokens_dir(tmp_path, 50), "train")
    with pytest.raises(DataError, match="fewer than one batch"):
        TrainLoader(ds, batch_size=8, seq_len=16, seed=0)


def _epoch_starts(loader: TrainLoader, n_batches: int) -> list[int]:
    return [int(v) for _ in range(n_batches) for v in loader.next_batch()[0][:, 0]]


def test_phased_split_is_read_phase_by_phase_each_shuffled(tmp_path):
    # phases [0, 400), [400, 1001): windows 0-39 start in phase 1, windows 40-99 in phase 2
    ds = TokenDataset(_tokens_dir(tmp_path, 1001, np.uint32, phase_ends=(400, 1001)), "train")
    assert ds.phase_starts == [400]
    loader = TrainLoader(ds, batch_size=4, seq_len=10, seed=3)
    first, second = _epoch_starts(loader, 25), _epoch_starts(loader, 25)
    for epoch in (first, second):
        assert sorted(epoch[:40]) == list(range(0, 400, 10))  # all of phase 1 first
        assert sorted(epoch[40:]) == list(range(400, 1000, 10))  # then all of phase 2
    assert first[:40] != list(range(0, 400, 10)) and first != second  # shuffled, anew each epoch
    # one phase is exactly the unphased order
    one = TokenDataset(_tokens_dir(tmp_path / "one", 1001, np.uint32, phase_ends=(1001,)), "train")
    plain = TokenDataset(_tokens_dir(tmp_path / "plain", 1001, np.uint32), "train")
    assert _epoch_starts(TrainLoader(one, 4, 10, 3), 25) == _epoch_starts(TrainLoader(plain, 4, 10, 3), 25)


def test_phased_resume_continues_identically_and_refuses_other_phases(tmp_path):
    ds = TokenDataset(_tokens_dir(tmp_path / "a", 2001, phase_ends=(700, 1500, 2001)), "train")
    a = TrainLoader(ds, 3, 10, 5)
    _epoch_starts(a, 40)  # into the third phase
    b = TrainLoader(ds, 3, 10, 5)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert _epoch_starts(a, 50) == _epoch_starts(b, 50)  # across the epoch boundary too
    other = TokenDataset(_tokens_dir(tmp_path / "b", 2001, phase_ends=(800, 1500, 2001)), "train")
    with pytest.raises(DataError, match=r"phase_starts was \[700, 1500\], now \[800, 1500\]"):
        TrainLoader(other, 3, 10, 5).load_state_dict(a.state_dict())
    old = {k: v for k, v in TrainLoader(ds, 3, 10, 5).state_dict().items() if k != "phase_starts"}
    plain = TokenDataset(_tokens_dir(tmp_path / "c", 2001), "train")
    TrainLoader(plain, 3, 10, 5).load_state_dict(old)  # a checkpoint from before phases still loads


def test_phases_that_do_not_cover_the_split_are_refused(tmp_path):
    _tokens_dir(tmp_path, 1000, phase_ends=(400, 900))
    with pytest.raises(DataError, match="do not cover its 1000 tokens"):
        TokenDataset(tmp_path, "train")

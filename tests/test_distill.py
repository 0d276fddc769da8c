"""Distillation: the loss against its formula, forward vs reverse KL, the frozen teacher, a refused
teacher with another vocabulary, and short logit and sequence-level runs whose model dirs load."""

from __future__ import annotations

import math

import pytest
import torch

from danlu.cli import main
from danlu.compress.config import DistillConfig
from danlu.compress.distill import build_distill_trainer, distill_loss_fn, run_distill
from danlu.compress.distill_loss import distill_loss, token_kl
from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.model_dir import load_model, save_model_dir
from danlu.train.config import TrainConfig
from danlu.train.losses import IGNORE_INDEX


def _direct(student, teacher, targets, temperature, alpha, kind):
    """The loss written out position by position, in float64."""
    total = 0.0
    s_all, t_all = student.double(), teacher.double()
    for b in range(targets.shape[0]):
        for i in range(targets.shape[1]):
            y = int(targets[b, i])
            if y == IGNORE_INDEX:
                continue
            zs, zt = s_all[b, i], t_all[b, i]
            ps = torch.exp(zs / temperature) / torch.exp(zs / temperature).sum()
            pt = torch.exp(zt / temperature) / torch.exp(zt / temperature).sum()
            p, q = (pt, ps) if kind == "forward" else (ps, pt)
            kl = sum(float(p[v]) * math.log(float(p[v]) / float(q[v])) for v in range(len(p)))
            ce = -math.log(float(torch.exp(zs[y]) / torch.exp(zs).sum()))
            total += temperature**2 * kl + alpha * ce
    return total


@pytest.mark.parametrize("kind", ["forward", "reverse"])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (2.0, 0.5), (0.7, 1.0)])
def test_loss_equals_the_formula(kind, temperature, alpha):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=g) * 2, torch.randn(2, 5, 11, generator=g) * 2
    targets = torch.randint(0, 11, (2, 5), generator=g)
    targets[0, 1] = targets[1, 4] = IGNORE_INDEX
    terms = distill_loss(student, teacher, targets, temperature, alpha, kind)
    assert terms.n_tokens == 8
    assert float(terms.loss_sum) == pytest.approx(
        _direct(student, teacher, targets, temperature, alpha, kind), rel=1e-5
    )


def test_kl_is_zero_when_student_is_teacher():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 50, generator=g) * 3
    targets = torch.randint(0, 50, (3, 7), generator=g)
    for kind in ("forward", "reverse"):
        terms = distill_loss(logits, logits.clone(), targets, 2.0, 0.3, kind)
        assert abs(float(terms.kl_sum)) < 1e-5
        assert float(terms.loss_sum) == pytest.approx(0.3 * float(terms.ce_sum), rel=1e-5)
    assert float(distill_loss(logits, logits + 1.0, targets, 2.0, 0.0).loss_sum) == pytest.approx(
        0.0, abs=1e-4
    )


def test_forward_kl_covers_modes_and_reverse_kl_seeks_one():
    """A bimodal teacher: the forward KL prefers the student that spreads over both modes, the reverse
    KL the student that sits on one of them; and their gradients are the known closed forms."""
    teacher = torch.tensor([0.5, 0.5, 1e-6]).log()
    covering = torch.tensor([0.45, 0.45, 0.10]).log()
    one_mode = torch.tensor([0.98, 0.01, 0.01]).log()
    fwd = [float(token_kl(s, teacher, 1.0, "forward")) for s in (covering, one_mode)]
    rev = [float(token_kl(s, teacher, 1.0, "reverse")) for s in (covering, one_mode)]
    assert fwd[0] < fwd[1] and rev[1] < rev[0]
    # reverse KL is the forward KL with the roles swapped, and the two differ on the same pair
    assert float(token_kl(covering, teacher, 1.0, "reverse")) == pytest.approx(
        float(token_kl(teacher, covering, 1.0, "forward")), rel=1e-6
    )
    z = torch.randn(20, requires_grad=True)
    t = torch.randn(20)
    ps, pt = z.softmax(-1), t.softmax(-1)
    (g_fwd,) = torch.autograd.grad(token_kl(z, t, 1.0, "forward"), z)
    torch.testing.assert_close(g_fwd, (ps - pt).detach(), atol=1e-6, rtol=1e-5)
    kl_rev = token_kl(z, t, 1.0, "reverse")
    (g_rev,) = torch.autograd.grad(kl_rev, z)
    expected = ps * (ps.log() - pt.log() - kl_rev)
    torch.testing.assert_close(g_rev, expected.detach(), atol=1e-6, rtol=1e-5)


def test_teacher_is_frozen_and_gets_no_gradient():
    cfg = ModelConfig(vocab_size=40, n_layer=1, n_embd=16, n_head=2, max_seq_len=16, ffn_hidden=32)
    torch.manual_seed(0)
    teacher, student = build_model(cfg).eval().requires_grad_(False), build_model(cfg)
    x = torch.randint(0, 40, (2, 8))
    out = distill_loss_fn(teacher, 2.0, 0.5, "forward")(student, (x, x))
    out.loss_sum.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert out.metrics["kl"] > 0 and out.n_tokens == 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_packed, word_lines):
    """(teacher dir, student config file, text file, a model dir with another tokenizer)."""
    from danlu.tokenizer import Tokenizer, train_tokenizer
    from danlu.tokenizer.config import TokenizerConfig

    _, tok_dir = tiny_packed
    root = tmp_path_factory.mktemp("distill")
    vocab = Tokenizer.load(tok_dir).vocab_size
    torch.manual_seed(0)
    tcfg = ModelConfig(vocab_size=vocab, n_layer=2, n_embd=32, n_head=4, max_seq_len=64, ffn_hidden=64)
    teacher = save_model_dir(root / "teacher", build_model(tcfg).eval(), tcfg, tok_dir)
    student_cfg = root / "student.yaml"
    student_cfg.write_text("n_layer: 1\nn_embd: 16\nn_head: 2\nmax_seq_len: 64\nffn_hidden: 32\n")
    text = root / "text.txt"
    text.write_text("\n".join(word_lines(400, seed=5)), encoding="utf-8")
    other_tok = train_tokenizer(word_lines(300, seed=9), TokenizerConfig(vocab_size=300), root / "other_tok")
    ocfg = ModelConfig(vocab_size=other_tok.vocab_size, n_layer=1, n_embd=16, n_head=2, max_seq_len=64)
    other = save_model_dir(root / "other", build_model(ocfg).eval(), ocfg, root / "other_tok")
    return teacher, student_cfg, text, other


def _cfg(text, **kw):
    train = TrainConfig(seq_len=32, batch_size=2, max_steps=3, lr=1e-3, warmup_steps=1, eval_every=3,
                        ckpt_every=3, log_every=1, eval_batches=2, device="cpu")  # fmt: skip
    return DistillConfig(data=(str(text),), train=train, **kw)


def test_teacher_with_another_vocabulary_is_refused(setup, tmp_path, capsys):
    teacher, _, text, other = setup
    with pytest.raises(ConfigError, match="vocabulary"):
        build_distill_trainer(_cfg(text), teacher, other, tmp_path / "a")
    with pytest.raises(ConfigError, match="vocabulary"):
        build_distill_trainer(_cfg(text), other, teacher, tmp_path / "b")
    rc = main(["distill", "--teacher", str(other), "--student", str(teacher), "--data", str(text),
               "--out", str(tmp_path / "c"), "--steps", "2"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "vocabulary" in err and "Traceback" not in err


@pytest.mark.parametrize("method", ["logit", "sequence"])
def test_a_short_run_writes_a_student_that_loads(setup, tmp_path, method):
    teacher, student_cfg, text, _ = setup
    before = {k: v.clone() for k, v in load_model(teacher)[0].state_dict().items()}
    cfg = _cfg(text, method=method, gen_prompts=6, gen_prompt_len=8, gen_tokens=12)
    result = run_distill(cfg, teacher, student_cfg, tmp_path / "run")
    model, tok, mcfg = load_model(result["model_dir"])
    assert (mcfg.n_layer, mcfg.n_embd) == (1, 16) and math.isfinite(result["val_loss"])
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, mcfg.vocab_size)
    assert tok.fingerprint() == load_model(teacher)[1].fingerprint()
    after = load_model(teacher)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    if method == "sequence":
        lines = (tmp_path / "run" / "data" / "generations.jsonl").read_text().splitlines()
        assert len(lines) == 7  # the key line and one example per prompt


def test_a_recipe_distill_section_chains_distillation_after_pretraining(tmp_path, word_lines, capsys):
    import json

    import yaml

    from danlu.run import RunLayout, read_stamp
    from run_support import tiny_recipe

    (tmp_path / "student.yaml").write_text("n_layer: 1\nn_embd: 16\nn_head: 2\nmax_seq_len: 32\n")
    train = {"seq_len": 16, "batch_size": 2, "max_steps": 3, "eval_every": 3, "eval_batches": 1,
             "ckpt_every": 3, "log_every": 1, "warmup_steps": 1, "device": "cpu"}  # fmt: skip
    distill = {"student": str(tmp_path / "student.yaml"), "temperature": 1.0, "train": train}
    root = tiny_recipe(tmp_path, word_lines, "d", every=6, max_new_tokens=2, distill=distill)
    assert main(["run", str(root / "r.yaml")]) == 0
    assert "distilled student: " in capsys.readouterr().out
    layout = RunLayout(root / "out")
    stamp = read_stamp(layout, "distill")
    assert stamp["result"]["steps"] == 3 and math.isfinite(stamp["result"]["val_loss"])
    _, _, scfg = load_model(layout.path("distill") / "model")
    _, _, tcfg = load_model(layout.model)
    assert (scfg.n_embd, scfg.vocab_size) == (16, tcfg.vocab_size)
    meta = json.loads((layout.path("distill") / "model" / "config.json").read_text())
    assert meta["distill"]["teacher"] == str(layout.model) and meta["distill"]["method"] == "logit"
    assert (layout.path("distill") / "data" / "train.txt").stat().st_size > 0  # the run's documents
    assert main(["run", str(root / "r.yaml")]) == 0  # up to date: skipped
    assert read_stamp(layout, "distill") == stamp
    cfg = yaml.safe_load((root / "r.yaml").read_text())
    del cfg["distill"]["student"]
    (root / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(root / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distill.student" in err[0]

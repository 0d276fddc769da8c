"""`danlu generate` with every decoding method, through danlu.cli.main on a tiny model dir."""

from __future__ import annotations

import json
import re

import pytest
import torch

from danlu.cli import main
from danlu.infer.beam import beam_search
from danlu.infer.contrastive import contrastive_generate
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from danlu.model_dir import load_model, save_model_dir
from danlu.tokenizer import Tokenizer

PROMPT = "the king"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Two tiny model dirs sharing one tokenizer (a model and a smaller draft/amateur)."""
    root = tmp_path_factory.mktemp("gen")
    text = 'the king and the queen. {"name": "Ann", "age": 3} yes no 日本 héllo ' * 3
    tok_dir = Tokenizer.train([text] * 30, 300).save(root / "tokenizer")
    out = []
    for name, layers, width, seed in (("model", 2, 32, 0), ("small", 1, 16, 1)):
        torch.manual_seed(seed)
        cfg = resolve_model_config(ModelConfig(n_layer=layers, n_embd=width, n_head=2, max_seq_len=160), 300)
        model = build_model(cfg)
        with torch.no_grad():  # peaked distributions: no near ties between methods that agree
            for pname, p in model.named_parameters():
                if "norm" not in pname:
                    p.normal_(0, 0.3)
        out.append(save_model_dir(root / name, model, cfg, tok_dir))
    return out


def generate(capsys, model_dir, *flags: str) -> str:
    assert main(["generate", str(model_dir), "--prompt", PROMPT, *flags]) == 0
    out = capsys.readouterr().out
    assert out.startswith(PROMPT) and out.endswith("\n")
    return out[len(PROMPT) : -1]


def error(capsys, *argv: str) -> str:
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("danlu: error:") and "Traceback" not in err and err.count("\n") == 1, err
    return err


@torch.no_grad()
def greedy_text(model_dir, n: int) -> str:
    model, tok, _ = load_model(model_dir)
    seq = tok.encode(PROMPT, bos=True)
    start = len(seq)
    for _ in range(n):
        token = int(model(torch.tensor([seq]))[0, -1].argmax())
        if token in tok.chat_stop_ids():
            break
        seq.append(token)
    return tok.decode(seq[start:], skip_special=True)


def test_greedy_and_speculative_print_the_greedy_continuation(capsys, caplog, dirs) -> None:
    caplog.set_level("INFO")
    model, small = dirs
    want = greedy_text(model, 12)
    assert generate(capsys, model, "--temperature", "0", "--max-new-tokens", "12") == want
    got = generate(
        capsys, model, "--temperature", "0", "--max-new-tokens", "12", "--draft", str(small), "--draft-k", "3"
    )
    assert got == want
    assert "drafted tokens accepted" in caplog.text  # the acceptance rate is reported


def test_seeded_sampling_is_reproducible(capsys, dirs) -> None:
    flags = (
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "10",
        "--seed",
        "3",
        "--min-p",
        "0.05",
        "--repetition-penalty",
        "1.3",
    )
    assert generate(capsys, dirs[0], *flags) == generate(capsys, dirs[0], *flags)


def test_stop_string_cuts_the_output(capsys, dirs) -> None:
    full = greedy_text(dirs[0], 20)
    stop = full[5:8]
    got = generate(capsys, dirs[0], "--temperature", "0", "--max-new-tokens", "20", "--stop", stop)
    assert got == full[: full.find(stop)]


def test_constrained_flags(capsys, dirs, tmp_path) -> None:
    model = dirs[0]
    base = ("--temperature", "1.0", "--seed", "1", "--max-new-tokens", "120")
    assert generate(capsys, model, *base, "--choice", "yes", "--choice", "no") in {"yes", "no"}
    assert re.fullmatch(r"[a-c]{3}-\d\d", generate(capsys, model, *base, "--regex", r"[a-c]{3}-\d\d"))
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 4}, "ok": {"type": "boolean"}},
        "required": ["name", "ok"],
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    value = json.loads(generate(capsys, model, *base, "--json-schema", str(path)))
    assert set(value) == {"name", "ok"} and len(value["name"]) <= 4 and isinstance(value["ok"], bool)


def test_beam_flags_print_beam_search_results(capsys, dirs) -> None:
    model_dir = dirs[0]
    out = generate(capsys, model_dir, "--beams", "3", "--max-new-tokens", "6", "--length-penalty", "0.5")
    model, tok, _ = load_model(model_dir)
    ends = tok.chat_stop_ids()
    best = beam_search(model, tok.encode(PROMPT, bos=True), 3, 6, ends, 0.5)[0]
    assert out == tok.decode([t for t in best.tokens if t not in ends], skip_special=True)
    two = generate(capsys, model_dir, "--beams", "3", "--max-new-tokens", "6", "--num-return", "2")
    assert two.count("--- beam ") == 2


def test_amateur_flag_runs_contrastive_decoding(capsys, dirs) -> None:
    model_dir, small = dirs
    out = generate(capsys, model_dir, "--amateur", str(small), "--max-new-tokens", "8", "--alpha", "0.2")
    expert, tok, _ = load_model(model_dir)
    amateur, _, _ = load_model(small)
    ends = tok.chat_stop_ids()
    tokens = [
        t for t in contrastive_generate(expert, amateur, tok.encode(PROMPT, bos=True), 8, 0.2, end_ids=ends)
    ]
    assert out == tok.decode([t for t in tokens if t not in ends], skip_special=True)


def test_a_long_request_is_fitted_to_the_context(capsys, dirs) -> None:
    prompt = "king " * 300  # over the context of 160 on its own
    assert (
        main(["generate", str(dirs[0]), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "1000"])
        == 0
    )
    assert len(capsys.readouterr().out) > len(prompt)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-p", "1.5"], "min_p"),
        (["--logit-bias", "abc"], "TOKEN_ID=VALUE"),
        (["--logit-bias", "100000=1"], "outside the vocabulary"),
        (["--regex", "(ab"], "regex"),
        (["--regex", "a", "--choice", "b"], "one constraint"),
        (["--json-schema", "no/such/schema.json"], "cannot read"),
        (["--beams", "2", "--regex", "a+"], "beam decoding takes no"),
        (["--beams", "2", "--draft", "x"], "one decoding method"),
        (["--beams", "2", "--num-return", "3"], "num_return"),
        (["--draft", "x", "--draft-k", "0"], "--draft-k"),
        (["--draft", "no/such/dir"], "not a directory"),
        (["--amateur", "x", "--alpha", "0"], "--alpha"),
        (["--temperature", "-1"], "temperature"),
    ],
)
def test_bad_generate_flags_are_one_line_errors(capsys, dirs, flags: list[str], message: str) -> None:
    assert message in error(capsys, str(dirs[0]), "--prompt", PROMPT, "--max-new-tokens", "20", *flags)

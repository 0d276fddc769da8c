"""A missing optional dependency fails with a MissingExtra error that names the extra to install."""

from __future__ import annotations

import sys

import pytest

from danlu.cli import main
from danlu.errors import MissingExtra


def _hide(monkeypatch, *modules: str) -> None:
    """Make `import m` raise ImportError, as when the package is not installed."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_gguf_import_names_the_interop_extra(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "gguf", "gguf.quants")
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    assert main(["import", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs the gguf package" in err and "pip install 'danlu[interop]'" in err
    assert "Traceback" not in err


def test_quality_features_name_the_data_extra(monkeypatch):
    from danlu.data.quality_model import hashed_features

    _hide(monkeypatch, "scipy", "scipy.sparse")
    with pytest.raises(MissingExtra, match=r"scipy package: pip install 'danlu\[data\]'"):
        hashed_features(["some text"])


def test_lm_eval_adapter_names_the_lmeval_extra(monkeypatch, tmp_path):
    from danlu.eval.lm_eval_adapter import lm_class, write_local_tasks

    _hide(monkeypatch, "lm_eval", "lm_eval.api", "lm_eval.api.model", "lm_eval.api.registry", "lm_eval.tasks")
    with pytest.raises(MissingExtra, match=r"lm-eval package: pip install 'danlu\[lmeval\]'"):
        lm_class.__wrapped__()  # past the cache: a class built earlier in this process would be returned
    with pytest.raises(MissingExtra, match=r"danlu\[lmeval\]"):
        write_local_tasks(["arc_easy"], tmp_path)


def test_chat_template_names_the_interop_extra(monkeypatch):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    from danlu.tokenizer.pretrained import PretrainedTokenizer

    meta = {"special_tokens": {}, "bos_id": 0, "eos_id": 0, "chat_template": "{{ messages[0].content }}"}
    tok = PretrainedTokenizer(Tokenizer(BPE()), meta)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"
    _hide(monkeypatch, "jinja2", "jinja2.sandbox")
    with pytest.raises(MissingExtra, match=r"jinja2 package: pip install 'danlu\[interop\]'"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])

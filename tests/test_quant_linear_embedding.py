"""The quantized embedding table (danlu.quant.embedding): gathers equal the dequantized rows, the tied
head is one module at both names and equals its reference product, quantized model dirs keep it, and
the int8 kernel's bf16 scales follow a changed scale. The int4 kernel's layout (danlu.quant.int4_layout)
reads back as torch's converter wrote it, and an Int4Linear holds its codes once after its kernel ran."""

from __future__ import annotations

import pytest
import torch

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.quant import native
from danlu.quant.apply import quantize_model
from danlu.quant.config import QuantConfig
from danlu.quant.embedding import QuantEmbedding, quantize_embedding, table_spec
from danlu.quant.linear import Int4Linear, Int8Linear, set_int4_kernel, use_reference
from danlu.quant.quantizers import QuantSpec, quantize

CFG = dict(n_layer=2, n_embd=96, n_head=4, n_kv_head=2, max_seq_len=64, ffn_hidden=192)


def _model(vocab: int = 200, tied: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=vocab, tie_embeddings=tied, **CFG)).eval()


@pytest.mark.parametrize("bits", [8, 4])
def test_gather_and_head_equal_the_dequantized_table(bits):
    model = _model(vocab=208)  # the int4 kernel takes whole tiles of 16 rows
    W = model.embed.weight.detach().clone()
    report = quantize_embedding(model, table_spec(bits, group_size=32))
    emb = model.embed
    assert isinstance(emb, QuantEmbedding) and model.lm_head is emb
    assert report["embed"]["max_err"] > 0
    table = emb.weight  # the dequantized fp32 table
    assert table.shape == W.shape and table.dtype == torch.float32
    assert (table - W).abs().max() <= report["embed"]["max_err"] + 1e-7
    ids = torch.tensor([[3, 7, 207], [0, 0, 5]])
    assert torch.equal(emb(ids), table[ids])
    x = torch.randn(2, 5, 96)
    with torch.no_grad():
        fast = emb(x)
        use_reference(model)
        ref = emb(x)
    assert torch.allclose(ref, x @ table.T, atol=1e-4)
    t = emb.table
    if bits == 4 and t.use_native and native.available():
        # danlu's int4 kernel: its product equals the same activation rounding in torch ops
        want = native.q4_reference(x.view(-1, 96), t.codes(), t.scale, t.offset, 32).view_as(fast)
        assert (fast - want).abs().max() < 1e-4
        assert (fast - ref).norm() / ref.norm() < 3e-2  # activations int8 per block of 32
        use_reference(model, False)
        t.use_native = False
        with torch.no_grad():
            fast = emb(x)  # torch's int4 kernel
    assert (fast - ref).norm() / ref.norm() < 1e-2  # torch's kernels take bf16 activations


def test_quantize_model_takes_the_embedding_off_the_skip_list_and_dirs_keep_it(tmp_path, tiny_packed):
    from danlu.model_dir import load_model, save_model_dir
    from danlu.quant.stage import save_quantized
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    vocab = Tokenizer.load(tok_dir).vocab_size
    model = _model(vocab)
    cfg = model.cfg
    base = save_model_dir(tmp_path / "base", model, cfg, tok_dir)
    ids = torch.randint(0, vocab, (2, 16))
    with torch.no_grad():
        ref = model(ids)
    for bits, table in ((8, Int8Linear), (4, Int4Linear)):
        qmodel, _, _ = load_model(base)
        reports = quantize_model(
            qmodel, QuantConfig(method="rtn", bits=bits, group_size=32, skip=("*norm*",))
        )
        assert "embed" in reports and "lm_head" not in reports
        assert isinstance(qmodel.embed.table, table) and qmodel.lm_head is qmodel.embed
        out = save_quantized(tmp_path / f"q{bits}", qmodel, {**cfg.__dict__}, tok_dir, {"method": "rtn"})
        loaded, _, _ = load_model(out)
        assert isinstance(loaded.embed, QuantEmbedding) and loaded.lm_head is loaded.embed
        with torch.no_grad():
            got = loaded(ids)
            assert torch.allclose(got, qmodel(ids), atol=1e-5)
        assert (got - ref).norm() / ref.norm() < (0.05 if bits == 8 else 0.3)
    # the default skip-list keeps the table in fp32; skipping only one half of a tied pair is refused
    qmodel, _, _ = load_model(base)
    quantize_model(qmodel, QuantConfig(method="rtn", bits=8))
    assert isinstance(qmodel.embed, torch.nn.Embedding)
    with pytest.raises(ConfigError, match="tied to the embedding"):
        quantize_model(qmodel, QuantConfig(method="rtn", bits=8, skip=("embed", "*norm*")))


def test_untied_model_quantizes_the_table_and_the_head_apart():
    model = _model(tied=False)
    quantize_model(model, QuantConfig(method="rtn", bits=8, skip=("*norm*",)))
    assert isinstance(model.embed, QuantEmbedding) and isinstance(model.lm_head, Int8Linear)
    assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 200)


def test_int8_kernel_scale_follows_a_changed_scale():
    torch.manual_seed(0)
    layer = Int8Linear.from_qtensor(quantize(torch.randn(64, 96), QuantSpec(8, True, "channel")))
    x = torch.randn(1, 96)
    with torch.no_grad():
        before = layer(x)
        layer.scale.mul_(2)
        after = layer(x)
    assert torch.allclose(after, 2 * before, rtol=1e-2)


@pytest.mark.parametrize("rows", [16, 48, 64, 80, 208])  # whole 64-row blocks and a smaller last one
def test_the_int4_kernel_layout_reads_back_as_the_converter_wrote_it(rows):
    from danlu.quant.int4_layout import kernel_pack, kernel_rows, kernel_unpack

    torch.manual_seed(rows)
    codes = torch.randint(0, 16, (rows, 96), dtype=torch.int32)
    packed = kernel_pack(codes)  # torch._convert_weight_to_int4pack_for_cpu
    assert torch.equal(kernel_unpack(packed).int(), codes)
    some = torch.tensor([0, rows - 1, rows // 2, 1, rows // 2])
    assert torch.equal(kernel_rows(packed, some, rows).int(), codes[some])


def test_int4_codes_are_held_once_after_the_kernel_runs(tmp_path, tiny_packed):
    from danlu.model_dir import load_model, save_model_dir
    from danlu.quant.stage import save_quantized
    from danlu.tokenizer import Tokenizer

    torch.manual_seed(0)
    layer = Int4Linear.from_qtensor(quantize(torch.randn(80, 200), QuantSpec(4, False, "group", 64)))
    packed, ref_w = layer.qweight.clone(), layer.dequantize()
    with torch.no_grad():
        layer(torch.randn(1, 200))
    assert layer.in_kernel_layout and not torch.equal(layer.qweight, packed)
    held = [layer.qweight, layer.scale, layer.offset, *layer.kernel_tensors()]
    # the codes once (in the kernel's layout, 200 columns padded to 4 groups of 64), not beside the
    # packed copy; fp32 scale and offset, and the kernel's bf16 (scale, zero) pairs, per group
    codes, fp32_scales, kernel_scales = 80 * 256 // 2, 2 * 80 * 4 * 4, 4 * 80 * 2 * 2
    assert sum(t.numel() * t.element_size() for t in held) == codes + fp32_scales + kernel_scales
    assert torch.equal(layer.dequantize(), ref_w)
    assert torch.equal(layer.state_dict()["qweight"], packed)  # the state dict is in the packed layout
    # a tied int4 table that has run its kernel still gathers rows, saves and loads
    _, tok_dir = tiny_packed
    vocab = Tokenizer.load(tok_dir).vocab_size
    model = _model(vocab)
    base = save_model_dir(tmp_path / "base", model, model.cfg, tok_dir)
    qmodel, _, _ = load_model(base)
    quantize_model(qmodel, QuantConfig(method="rtn", bits=4, group_size=32, skip=("*norm*",)))
    set_int4_kernel(qmodel, use_native=False)  # torch's kernel and its layout (native: no layout change)
    ids = torch.randint(0, vocab, (1, 12))
    with torch.no_grad():
        before = qmodel(ids)
        table = qmodel.embed.table
        assert isinstance(table, Int4Linear) and (table.in_kernel_layout or vocab % 16)
        assert torch.equal(qmodel.embed(ids), qmodel.embed.weight[ids])
        assert torch.equal(qmodel(ids), before)
    out = save_quantized(tmp_path / "q4", qmodel, {**model.cfg.__dict__}, tok_dir, {"method": "rtn"})
    loaded, _, _ = load_model(out)
    set_int4_kernel(loaded, use_native=False)
    with torch.no_grad():
        assert torch.allclose(loaded(ids), before, atol=1e-5)


def test_damaged_quantized_dirs_with_a_table_are_refused_in_one_line(tmp_path, tiny_packed, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    from danlu.cli import main
    from danlu.errors import CheckpointCorrupt
    from danlu.model_dir import MODEL_FILE, load_model, save_model_dir
    from danlu.quant.stage import save_quantized
    from danlu.quant.store import QUANT_CONFIG, QUANT_DIR
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    model = _model(Tokenizer.load(tok_dir).vocab_size)
    base = save_model_dir(tmp_path / "base", model, model.cfg, tok_dir)
    qmodel, _, _ = load_model(base)
    quantize_model(qmodel, QuantConfig(method="rtn", bits=4, group_size=32, skip=("*norm*",)))
    good = save_quantized(tmp_path / "q4", qmodel, {**model.cfg.__dict__}, tok_dir, {"method": "rtn"})
    assert main(["generate", str(good), "--prompt", "a", "--max-new-tokens", "1"]) == 0
    capsys.readouterr()

    def damaged(name, damage):
        bad = tmp_path / name
        shutil.copytree(good, bad)
        damage(bad)
        return bad

    def table_scale_cut(d):  # scales of half the table's groups: they do not fit its codes
        tensors = load_file(d / MODEL_FILE)
        key = "embed.table.scale"
        tensors[key] = tensors[key][:, : tensors[key].shape[1] // 2].contiguous()
        save_file(tensors, d / MODEL_FILE)

    def truncated(d):
        data = (d / MODEL_FILE).read_bytes()
        (d / MODEL_FILE).write_bytes(data[: len(data) // 2])

    def layout_truncated(d):
        file = d / QUANT_DIR / QUANT_CONFIG
        file.write_text(file.read_text()[:40])

    for name, damage, says in (
        ("scale", table_scale_cut, "does not fit"),
        ("trunc", truncated, str(tmp_path / "trunc")),
        ("layout", layout_truncated, "not JSON"),
    ):
        bad = damaged(name, damage)
        with pytest.raises(CheckpointCorrupt, match=says.replace(".", r"\.")):
            load_model(bad)
        assert main(["generate", str(bad), "--prompt", "a", "--max-new-tokens", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and says in err, err

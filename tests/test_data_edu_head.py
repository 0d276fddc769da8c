"""The embedding head of the edu score on crafted embeddings, its block with an injected embedder, and
the mean-pooled hidden states of danlu.eval.edu_embed on a small random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from danlu.data.edu import spearman
from danlu.data.edu_head import EduEmbeddingHead, edu_head_block
from danlu.errors import ConfigError, DataError
from danlu.eval.edu_embed import ModelEmbedder
from danlu.model import build_model
from danlu.model.config import ModelConfig


def planted(n: int, dim: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose score is a fixed direction of them (plus a little noise), kept inside 0..5."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.1, 10.0, size=dim)  # features on very different scales
    direction = np.zeros(dim)
    direction[:3] = 1.0 / x[:, :3].std(0)
    score = 2.5 + np.tanh(x @ direction / 2.0) * 2.4 + rng.normal(scale=0.05, size=n)
    return x, score


def test_head_recovers_a_planted_direction_on_held_out_rows():
    x, y = planted(400)
    head = EduEmbeddingHead(l2=10.0).fit(x[:300], y[:300])
    pred = head.predict(x[300:])
    assert spearman(pred, y[300:]) > 0.95
    assert pred.min() >= 0.0 and pred.max() <= 5.0
    logit = EduEmbeddingHead(l2=10.0, link="logit").fit(x[:300], y[:300]).predict(x[300:])
    assert spearman(logit, y[300:]) > 0.95 and logit.min() > 0.0 and logit.max() < 5.0


def test_head_standardizes_so_a_rescaled_feature_gives_the_same_predictions():
    x, y = planted(120)
    scaled = x * np.linspace(0.01, 100.0, x.shape[1])
    a = EduEmbeddingHead(l2=30.0).fit(x, y).predict(x)
    b = EduEmbeddingHead(l2=30.0).fit(scaled, y).predict(scaled)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_head_saves_and_loads_its_weights_and_embedding_settings(tmp_path):
    x, y = planted(100)
    settings = {"model": "runs/judge", "layers": [4, 12], "max_tokens": 64}
    head = EduEmbeddingHead(l2=5.0, link="logit", embedding=settings).fit(x, y)
    back = EduEmbeddingHead.load(head.save(tmp_path / "head.npz"))
    np.testing.assert_allclose(back.predict(x), head.predict(x))
    assert back.embedding == settings and back.l2 == 5.0 and back.link == "logit"


def test_head_rejects_bad_settings_shapes_and_files(tmp_path):
    with pytest.raises(ConfigError):
        EduEmbeddingHead(l2=0.0)
    with pytest.raises(ConfigError):
        EduEmbeddingHead(link="probit")
    with pytest.raises(ConfigError):
        EduEmbeddingHead().predict(np.zeros((1, 3)))
    with pytest.raises(DataError):
        EduEmbeddingHead().fit(np.zeros((3, 2)), [1.0, 2.0])
    x, y = planted(20)
    head = EduEmbeddingHead().fit(x, y)
    with pytest.raises(DataError):
        head.predict(np.zeros((2, x.shape[1] + 1)))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError):
        EduEmbeddingHead.load(bad)


WORDS = ("lesson", "explain", "exercise", "lol", "haha")


def word_count_embedder(model: str, device: str, layers: list[int], max_tokens: int):
    """A crafted embedder factory: counts of five words, so the planted rule is easy to read."""
    seen.append((model, device, list(layers), max_tokens))
    return lambda texts: np.array([[t.split().count(w) for w in WORDS] for t in texts], np.float64)


seen: list[tuple] = []


def test_edu_score_block_with_an_injected_embedder_keeps_the_lessons(tmp_path):
    lessons = [f"a lesson to explain {k} with an exercise" for k in range(6)]
    chats = [f"lol haha {k} haha" for k in range(6)]
    texts = lessons + chats
    embed = word_count_embedder("m", "cpu", [1], 8)
    settings = {"model": "runs/judge", "layers": [3], "max_tokens": 32}
    head = EduEmbeddingHead(l2=1.0, embedding=settings).fit(embed(texts), [4.5] * 6 + [0.5] * 6)
    path = head.save(tmp_path / "head.npz")
    seen.clear()
    block = edu_head_block(str(path), word_count_embedder, keep_top=0.5)
    assert seen == [("runs/judge", "cpu", [3], 32)]
    keep = block.decide([block.keys(texts[:5]), block.keys(texts[5:])])
    kept = np.concatenate([d["keep"] for d in keep])
    assert kept.tolist() == [True] * 6 + [False] * 6
    threshold = edu_head_block(str(path), word_count_embedder, threshold=2.5)
    doc = {"id": "0", "text": chats[0], "source": "", "meta": {}}
    assert threshold.filter(doc) == (False, "low_edu_score") and doc["meta"]["edu_score"] < 2.5
    with pytest.raises(ConfigError, match="no embedder"):
        edu_head_block(str(path), None, keep_top=0.5)
    with pytest.raises(ConfigError):
        edu_head_block(str(path), word_count_embedder, keep_top=0.5, threshold=1.0)


class ByteTok:
    """Each character is one token: enough for a model whose hidden states are checked by hand."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 64 for c in text]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=3, n_embd=16, n_head=4, n_kv_head=2, vocab_size=64, max_seq_len=64)
    return build_model(cfg, "cpu").eval()


def by_hand(model, ids: list[int]) -> list[torch.Tensor]:
    """The residual stream after each block, from the model's own parts."""
    idx = torch.tensor([ids])
    x, T = model.embed(idx), len(ids)
    rope = (model.rope_cos[:T], model.rope_sin[:T])
    bias = model.attention_bias(0, T, x.device, x.dtype, None)
    out = []
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            x, _ = block(x, layer, rope, bias, None)
            out.append(x[0])
    return out


def test_embedder_mean_pools_the_chosen_layers(tiny):
    text = "the cat sat on the mat"
    ids = ByteTok().encode(text)
    hidden = by_hand(tiny, ids)
    got = ModelEmbedder(tiny, ByteTok(), layers=[2, 1])([text, ""])
    assert got.shape == (2, 2 * 16)
    np.testing.assert_allclose(got[0, :16], hidden[0].mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(got[0, 16:], hidden[1].mean(0).numpy(), atol=1e-5)
    assert not got[1].any()  # an empty text has no tokens to pool


def test_embedder_last_layer_is_what_the_head_reads(tiny):
    """The last layer is taken after the final norm: by linearity, head(mean) = mean of the logits."""
    text = "a lesson about rivers"
    last = ModelEmbedder(tiny, ByteTok(), layers=[3])([text])[0]
    with torch.no_grad():
        logits = tiny(torch.tensor([ByteTok().encode(text)]))[0]
    mean_logits = tiny.lm_head(torch.tensor(last)).detach().numpy()
    np.testing.assert_allclose(mean_logits, logits.mean(0).numpy(), atol=1e-4)


def test_embedder_truncates_and_rejects_bad_layers(tiny):
    long = "x" * 50
    a = ModelEmbedder(tiny, ByteTok(), [1], max_tokens=10)([long])
    b = ModelEmbedder(tiny, ByteTok(), [1], max_tokens=64)(["x" * 10])
    np.testing.assert_allclose(a, b, atol=1e-6)
    for layers in ([0], [4], []):
        with pytest.raises(ConfigError):
            ModelEmbedder(tiny, ByteTok(), layers)


def test_pipeline_edu_score_block_reads_a_head_with_the_injected_embedder(tmp_path):
    from danlu.data.pipeline import build_block, build_pipeline

    texts = ["a lesson to explain an exercise", "lol haha haha"]
    embed = word_count_embedder("m", "cpu", [1], 8)
    head = EduEmbeddingHead(l2=1.0, embedding={"model": "judge", "layers": [2], "max_tokens": 16})
    path = str(head.fit(embed(texts), [4.0, 1.0]).save(tmp_path / "head.npz"))
    spec = {"block": "edu_score", "model": path, "threshold": 2.5}
    block = build_block(spec, model_embedder=word_count_embedder)
    docs = [{"id": str(i), "text": t, "source": "", "meta": {}} for i, t in enumerate(texts)]
    assert [block.filt.filter(d)[0] for d in docs] == [True, False]
    assert docs[0]["meta"]["edu_score"] > 2.5
    with pytest.raises(ConfigError, match="no embedder"):
        build_pipeline([spec])
    with pytest.raises(ConfigError, match="no option model_embedder"):
        build_block({**spec, "model_embedder": "x"}, model_embedder=word_count_embedder)

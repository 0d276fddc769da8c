"""Config loading: recipes, dotted overrides, validation with clear errors."""

from pathlib import Path

import pytest

from danlu.config import from_dict, parse_overrides, save_yaml, to_dict
from danlu.errors import ConfigError
from danlu.recipe import RecipeConfig, load_recipe

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads(path):
    cfg = load_recipe(path)
    assert isinstance(cfg, RecipeConfig)
    assert cfg.train.seq_len <= cfg.model.max_seq_len


def test_overrides_are_typed_and_nested():
    cfg = load_recipe(
        None, ["--train.lr=3e-4", "--model.n_layer", "6", "--data.sources=[a.txt, b]", "--name=x"]
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.n_layer == 6
    assert cfg.data.sources == ["a.txt", "b"]
    assert cfg.name == "x"
    assert cfg.run_path == Path("runs/x")


def test_overrides_take_yaml_lists_of_maps():
    cfg = load_recipe(
        None,
        [
            "--data.pipeline=[{block: clean}, {block: minhash_dedup, threshold: 0.8}]",
            "--data.mix={weights: {shakespeare: 0.7, chitchat: 0.3}, phases: [{until: 0.6}, {until: 1.0}]}",
            "--train.lr=2.5E-3",
        ],
    )
    assert cfg.data.pipeline == [{"block": "clean"}, {"block": "minhash_dedup", "threshold": 0.8}]
    assert cfg.data.mix["phases"] == [{"until": 0.6}, {"until": 1.0}]
    assert cfg.train.lr == pytest.approx(2.5e-3)
    with pytest.raises(ConfigError, match=r"data\.pipeline: expected list"):
        load_recipe(None, ["--data.pipeline=[{block: clean}"])  # unclosed: a string, not a list


def test_int_accepted_for_float_and_none_for_optional():
    cfg = load_recipe(None, ["--train.lr=1", "--model.n_kv_head=none"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.n_kv_head is None


def test_scalar_becomes_one_element_list():
    assert load_recipe(None, ["--data.sources=shakespeare"]).data.sources == ["shakespeare"]


def test_unknown_key_suggests_the_close_one(tmp_path):
    (tmp_path / "r.yaml").write_text("train:\n  learning_rate: 0.1\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key train\.learning_rate"):
        load_recipe(tmp_path / "r.yaml")
    with pytest.raises(ConfigError, match=r"did you mean train\.max_steps"):
        load_recipe(None, ["--train.max_step=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("--train.lr=abc", r"train\.lr: expected float"),
        ("--train.max_steps=1.5", r"train\.max_steps: expected int"),
        ("--train.max_steps=0", r"train\.max_steps: must be >= 1"),
        ("--train.dtype=fp8", r"train\.dtype"),
        ("--data.val_fraction=0.9", r"data\.val_fraction"),
        ("--tokenizer.vocab_size=100", r"tokenizer\.vocab_size"),
        ("--train=3", r"train: expected a mapping"),
        ("--sample.top_p=0", r"sample\.top_p"),
        # optional sections: the section's own message, not "expected SFTConfig | None"
        ("--sft.lora.r=abc", r"sft\.lora\.r: expected int"),
        ("--align.beta=abc", r"align\.beta: expected float"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [override])


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--train.lr"])
    with pytest.raises(ConfigError, match="expected an override"):
        parse_overrides(["train.lr=1"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_recipe(None, ["--train.lr=0.01", "--sample.prompts=[a, b]"])
    save_yaml(cfg, tmp_path / "config.yaml")
    again = load_recipe(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert from_dict(RecipeConfig, to_dict(cfg)) == cfg

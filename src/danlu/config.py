"""The strict config loader: dataclasses from YAML and dotted overrides (`--train.lr=3e-4`).

The configs themselves live beside their stages (danlu.data.config, danlu.model.config,
danlu.train.config, ...) and danlu.recipe composes them. Every field has a comment saying what it means; `__post_init__` validates ranges. Loading a recipe
rejects unknown keys (with a suggestion) and wrong types with a `ConfigError` that names the key.
The resolved config is saved beside every output (`config.yaml` in the run directory).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from danlu.errors import ConfigError

# Building dataclasses from plain dicts, with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1 and isinstance(value, dict):  # an optional section: its own message
            raise errors[0]  # names the bad key inside it, not "expected SFTConfig | None"
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str | int | float):  # a scalar where a list is expected: one-element list
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,):  # tuple[X, ...]: a list, kept as a tuple
        return tuple(_coerce(value, list[typing.get_args(tp)[0]], key))
    if origin is dict:  # free-form settings (e.g. a pipeline block's options), checked by their consumer
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override --{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _parse_scalar(raw: str) -> Any:
    """Parse an override value as YAML (scalars, and flow lists and maps such as
    `[{block: clean}, {block: exact_dedup}]`); also read 3e-4 (a string to YAML 1.1) and none."""
    if raw.lower() in ("none", "null", "~"):
        return None
    if _EXPONENT_FLOAT.fullmatch(raw):
        return float(raw)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`["--train.lr=3e-4", "--model.n_layer", "6"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise ConfigError(f"expected an override like --train.lr=3e-4, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {arg} has no value; write {arg}=VALUE")
        _set_dotted(tree, key, _parse_scalar(raw))
        i += 1
    return tree


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found; recipes live in recipes/ (e.g. recipes/tiny-cpu.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path} must be a mapping of sections (data, tokenizer, model, train, sample)"
        )
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    from danlu.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

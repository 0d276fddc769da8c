"""`danlu diagnose MODEL --prompt TEXT --out DIR`: attention maps and the logit lens of one prompt.

Writes one PNG of attention probabilities per layer (every head of it), `logit_lens.json` (per layer,
the top tokens at the last position and the rank of the model's output token) and returns the lens as
a table for the screen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError
from danlu.eval.introspect import format_lens, lens_table, logit_lens, plot_attention, trace
from danlu.io import atomic_write_text


def token_labels(tok: Any, ids: list[int]) -> list[str]:
    return [tok.decode([i]).replace("\n", "\\n") for i in ids]


def diagnose(
    model: Any,
    tok: Any,
    prompt: str,
    out_dir: str | Path,
    top_k: int = 5,
    layers: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Attention PNGs of `layers` (default: all) and the logit lens of prompt, written into out_dir."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    ids = tok.encode(prompt)
    t = trace(model, ids, attention=True)
    n_layer = len(t.attention)
    chosen = tuple(range(n_layer)) if layers is None else layers
    bad = [layer for layer in chosen if not 0 <= layer < n_layer]
    if bad:
        raise ConfigError(f"--layers {bad}: the model has layers 0..{n_layer - 1}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = token_labels(tok, ids)
    pngs = [
        str(
            plot_attention(
                t.attention[layer], labels, out / f"attention_layer{layer:02d}.png", f"layer {layer}"
            )
        )
        for layer in chosen
    ]
    rows = lens_table(tok, logit_lens(model, t.hidden), position=-1, k=top_k)
    report = {"prompt": prompt, "tokens": labels, "logit_lens": rows, "attention_png": pngs}
    atomic_write_text(out / "logit_lens.json", json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    report["table"] = format_lens(rows)
    return report

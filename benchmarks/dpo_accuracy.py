"""DPO's held-out preference accuracy curve, and where the pairs' lengths bias it.

Prints, for each align run dir (`danlu align ... --run_dir=R` writes R/align), the held-out numbers
before training and at every evaluation:

    val_accuracy             TRL's reward accuracy: beta * (log-ratio of chosen - of rejected) > 0.
                             At the start the policy is the reference, every reward is 0 and the
                             strict ">" gives 0 (a tie, not a wrong ranking): chance is 0.5
    val_logp_accuracy        the policy's own ranking: summed log-prob of chosen above rejected
    val_logp_norm_accuracy   the same per response token (length-normalized)

with Wilson 95% intervals. With --lengths, the aligned model (R/align/model) and its base are run on
the held-out pairs to split the rankings by whether the chosen response is the longer one: a summed
log-prob favours the shorter response (every token costs log-prob), which the log-ratio of DPO's
reward cancels and the per-token ranking removes.

    python benchmarks/dpo_accuracy.py runs/aifeedback-dpo/align [more run dirs] [--lengths]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

KEYS = ("val_loss", "val_accuracy", "val_margin", "val_logp_accuracy", "val_logp_norm_accuracy")


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def curve(run: Path) -> None:
    from _machine import markdown_table

    before = json.loads((run / "data" / "before.json").read_text())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_loss" in r]
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    n = manifest["encoded"]["val"]
    cfg = (
        json.loads((run / "model" / "config.json").read_text()).get("align", {})
        if (run / "model").is_dir()
        else {}
    )
    print(f"{run}: {cfg.get('method', '?')} beta {cfg.get('beta', '?')}, base {cfg.get('base', '?')}")
    print(f"held-out pairs: {n} (train {manifest['encoded']['train']})")
    rows = [["0 (start)", *(f"{before[k]:.4f}" for k in KEYS)]]
    rows += [[str(r["step"]), *(f"{r[k]:.4f}" for k in KEYS)] for r in evals]
    print(markdown_table(["step", *KEYS], rows))
    last = evals[-1]
    for key in ("val_accuracy", "val_logp_accuracy", "val_logp_norm_accuracy"):
        lo, hi = wilson(last[key], n)
        s_lo, s_hi = wilson(before[key], n)
        print(
            f"{key}: start {before[key]:.3f} [{s_lo:.3f}, {s_hi:.3f}] -> step {last['step']} "
            f"{last[key]:.3f} [{lo:.3f}, {hi:.3f}] (Wilson 95%)"
        )


@torch.no_grad()
def _logps(model_dir: Path, encoded, pad: int) -> torch.Tensor:
    """[N, 2] summed log-probs of the (chosen, rejected) responses of the encoded pairs."""
    from danlu.align.batches import in_order, paired_batch
    from danlu.align.logps import sequence_logps
    from danlu.model_dir import load_model

    model, _, _ = load_model(model_dir, "cpu")
    out = []
    for idx in in_order(len(encoded), 16):
        b = paired_batch([encoded[i] for i in idx], pad)
        lp, _ = sequence_logps(model, b["ids"], b["mask"])
        out.append(torch.stack(lp.chunk(2), dim=1))
    return torch.cat(out)


def lengths(run: Path) -> None:
    from _machine import markdown_table
    from danlu.align.batches import encode_pairs
    from danlu.model_dir import load_tokenizer

    model_dir = run / "model"
    base = Path(json.loads((model_dir / "config.json").read_text())["align"]["base"])
    rows = [json.loads(x) for x in (run / "data" / "pairs.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    tok = load_tokenizer(model_dir)
    import yaml

    seq_len = yaml.safe_load((run.parent / "config.yaml").read_text())["align"]["train"]["seq_len"]
    encoded, _ = encode_pairs(val, tok, manifest["template"], seq_len + 1)  # as the stage encodes them
    assert len(encoded) == manifest["encoded"]["val"], (len(encoded), manifest["encoded"]["val"])
    lc = torch.tensor([sum(e.chosen_mask) for e in encoded], dtype=torch.float)
    lr = torch.tensor([sum(e.rejected_mask) for e in encoded], dtype=torch.float)
    ref, pol = _logps(base, encoded, tok.pad_id), _logps(model_dir, encoded, tok.pad_id)
    longer = lc > lr
    table = []
    for name, sel in (
        ("chosen longer", longer),
        ("chosen not longer", ~longer),
        ("all", torch.ones_like(longer)),
    ):
        k = int(sel.sum())
        r, p = ref[sel], pol[sel]

        def acc(x: torch.Tensor, k: int = k) -> str:
            return f"{float(x.float().mean()):.3f}" if k else "-"

        table.append([
            name, str(k),
            acc(r[:, 0] > r[:, 1]), acc(r[:, 0] / lc[sel] > r[:, 1] / lr[sel]),
            acc(p[:, 0] > p[:, 1]), acc(p[:, 0] / lc[sel] > p[:, 1] / lr[sel]),
            acc((p[:, 0] - r[:, 0]) > (p[:, 1] - r[:, 1])),
        ])  # fmt: skip
    print(
        f"\nheld-out pairs by length ({base} -> {model_dir}); mean tokens chosen {lc.mean():.1f}, rejected {lr.mean():.1f}"
    )
    print(markdown_table(
        ["pairs", "n", "base summed", "base per-token", "aligned summed", "aligned per-token", "DPO reward"], table
    ))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="align run dirs (R/align)")
    ap.add_argument("--lengths", action="store_true", help="split the rankings by response length")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from _machine import machine_markdown

    for run in args.runs:
        curve(run)
        if args.lengths:
            lengths(run)
        print()
    print(machine_markdown())


if __name__ == "__main__":
    main()

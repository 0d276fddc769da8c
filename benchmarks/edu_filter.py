"""Educational-value filtering as FineWeb-Edu does it, on the default corpus (Shakespeare + chitchat).

    annotate  the judge (runs/smollm2, SmolLM2-135M-Instruct) scores a seeded sample of corpus chunks
              with the additive 0-5 rubric (danlu.eval.edu_judge; next-token distribution over 0..5,
              documents cut to --doc-tokens tokens), written as JSONL annotations.
    bench     trains the fast classifier (danlu.data.edu: hashed n-gram ridge regression) on the first
              part of the annotations and prints its Spearman correlation with the judge on the held-out
              rest; then scores the corpus with it, keeps the top half (the `edu_score` block), draws a
              random half of the same size, and trains one tiny model on each for the same steps. Both
              are evaluated on the "educational" slice: held-out annotated chunks the judge scored in
              its top quarter, which neither training set contains.

The corpus: every document of the default recipe's sources, cleaned (clean.normalize), cut into pieces
of about --chunk-chars characters at paragraph (else line) breaks, pieces under 200 characters dropped.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/edu_filter.py annotate --n 400 --out runs/data-edu/fw.jsonl
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/edu_filter.py bench --annotations runs/data-edu/fw.jsonl
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from danlu.data.clean import normalize
from danlu.data.sources import read_source

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("shakespeare", "chitchat")


def pieces(text: str, chars: int) -> list[str]:
    """Text cut at paragraph breaks (or line breaks, for chats without blank lines) into ~chars pieces."""
    parts = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(parts) == 1:
        parts = [p for p in text.split("\n") if p.strip()]
    sep = "\n\n" if "\n\n" in text else "\n"
    out, cur, size = [], [], 0
    for p in parts:
        cur.append(p.strip())
        size += len(p)
        if size >= chars:
            out.append(sep.join(cur))
            cur, size = [], 0
    if cur:
        out.append(sep.join(cur))
    return out


def corpus_chunks(chunk_chars: int = 1000, min_chars: int = 200) -> list[dict]:
    docs = []
    for source in SOURCES:
        for doc in read_source(source):
            for i, text in enumerate(pieces(normalize(doc["text"]), chunk_chars)):
                if len(text) >= min_chars:
                    docs.append({"id": f"{doc['id']}#{i}", "text": text, "source": source, "meta": {}})
    return docs


def annotate_main(args: argparse.Namespace) -> None:
    import torch

    from danlu.eval.edu_judge import EduContrastJudge, EduJudge, annotate, write_annotations

    torch.set_num_threads(1)
    docs = corpus_chunks(args.chunk_chars)
    sample = random.Random(args.seed).sample(docs, args.n)
    if args.prompt == "contrast":
        judge = EduContrastJudge.from_dir(args.judge, max_doc_tokens=args.doc_tokens)
    else:
        judge = EduJudge.from_dir(args.judge, max_doc_tokens=args.doc_tokens, prompt=args.prompt)
    start = time.monotonic()
    rows = list(annotate(judge, sample, args.time_limit))
    write_annotations(rows, args.out)
    took = time.monotonic() - start
    print(f"annotated {len(rows)} of {len(docs)} chunks with {args.judge} in {took:.0f} s -> {args.out}")


def agreement_main(args: argparse.Namespace) -> None:
    """Spearman of the hashed n-gram ridge regressor against the judge on held-out annotations."""
    from _machine import machine_markdown
    from danlu.data.edu import read_annotations, spearman, train_edu_regressor

    for path in args.annotations:
        rows = read_annotations(path)
        cut = int(len(rows) * args.train_fraction)
        train, test = rows[:cut], rows[cut:]
        for norm, link in (("l2", "identity"), ("l1", "logit")):
            for ngrams in (1, 2):
                for l2 in (0.1, 1.0, 10.0):
                    reg = train_edu_regressor(train, l2=l2, ngrams=ngrams, norm=norm, link=link)
                    rho = spearman(reg.predict([r["text"] for r in test]), [r["score"] for r in test])
                    print(
                        f"{path}: train {len(train)}, held out {len(test)}, norm {norm}, link {link}, "
                        f"ngrams {ngrams}, l2 {l2:g}: Spearman {rho:.3f}"
                    )
    print(machine_markdown())


def brown_learned_chunks(chunk_chars: int, min_chars: int = 200) -> list[str]:
    """Brown's "learned" genre (scientific and scholarly prose): an educational slice from outside the corpus."""
    from danlu.data.corpora import read_corpus

    out = []
    for doc in read_corpus("brown"):
        if doc["meta"]["genre"] == "learned":
            out.extend(t for t in pieces(normalize(doc["text"]), chunk_chars) if len(t) >= min_chars)
    return out


def train_tiny_lm(texts: list[str], tok, args: argparse.Namespace):
    """A small Llama-style LM trained for args.steps steps of args.batch x args.seq_len tokens drawn at
    random positions of the texts' token stream (documents joined by EOS); same seed, same init."""
    import torch

    from danlu.model import build_model
    from danlu.model.config import ModelConfig

    stream = []
    for ids in tok.encode_batch(texts):
        stream.extend([*ids, tok.eos_id])
    data = torch.tensor(stream)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(
        n_layer=args.layers, n_embd=args.dim, n_head=4, vocab_size=tok.vocab_size, max_seq_len=args.seq_len
    )
    model = build_model(cfg, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        frac = step / max(1, args.steps - 1)
        for g in opt.param_groups:  # warmup, then cosine to 10%
            g["lr"] = args.lr * min(1.0, (step + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=gen)
        x = torch.stack([data[i : i + args.seq_len] for i in starts])
        y = torch.stack([data[i + 1 : i + args.seq_len + 1] for i in starts])
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval(), len(stream)


def slice_loss(model, tok, texts: list[str], seq_len: int) -> float:
    """Mean next-token loss (nats) over every token of the texts, each text in seq_len windows."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in tok.encode_batch(texts):
            ids = [tok.eos_id, *ids]
            for i in range(0, len(ids) - 1, seq_len):
                w = torch.tensor(ids[i : i + seq_len + 1])
                logits = model(w[None, :-1])[0]
                total += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
                count += len(w) - 1
    return total / count


def bench_main(args: argparse.Namespace) -> None:
    """Agreement on held-out annotations, then kept half vs random half on the educational slices."""
    import numpy as np
    import torch

    from _machine import machine_markdown
    from danlu.data.edu import edu_score_block, read_annotations, spearman, train_edu_regressor
    from danlu.tokenizer import Tokenizer

    torch.set_num_threads(1)
    start = time.monotonic()
    rows = read_annotations(args.annotations)
    cut = int(len(rows) * args.train_fraction)
    train, test = rows[:cut], rows[cut:]
    model_path = args.out / "edu_regressor.npz"
    reg = train_edu_regressor(
        train, model_path, l2=args.l2, ngrams=args.ngrams, norm=args.norm, link=args.link
    )
    rho = spearman(reg.predict([r["text"] for r in test]), [r["score"] for r in test])
    print(
        f"classifier: hashed n-gram ridge (ngrams {args.ngrams}, norm {args.norm}, link {args.link}, "
        f"l2 {args.l2:g}) on {len(train)} annotations; "
        f"Spearman with the judge on {len(test)} held-out annotations: {rho:.3f}"
    )

    # the educational slice: held-out annotated chunks the judge put in its top quarter
    q = np.quantile([r["score"] for r in test], 0.75)
    held_ids = {r["id"] for r in test}
    edu_slice = [r["text"] for r in test if r["score"] >= q]
    control = [r["text"] for r in test]
    chunks = [d for d in corpus_chunks(args.chunk_chars) if d["id"] not in held_ids]
    block = edu_score_block(str(model_path), keep_top=0.5)
    texts = [d["text"] for d in chunks]
    keep = block.decide([block.keys(texts)])[0]["keep"]
    kept = [t for t, k in zip(texts, keep, strict=True) if k]
    rand = random.Random(args.seed).sample(texts, len(kept))
    share = {
        s: sum(d["source"] == s for d, k in zip(chunks, keep, strict=True) if k) / len(kept) for s in SOURCES
    }
    print(
        f"pool {len(texts)} chunks (held-out annotations removed); kept half {len(kept)} chunks "
        f"({', '.join(f'{s} {v:.0%}' for s, v in share.items())}); random half {len(rand)} chunks"
    )
    learned = brown_learned_chunks(args.chunk_chars)[: args.brown_chunks]
    tok = Tokenizer.load(args.tokenizer)
    tokens = args.steps * args.batch * args.seq_len
    print(
        f"each model: {args.layers} layers, d {args.dim}, {args.steps} steps x {args.batch} x "
        f"{args.seq_len} = {tokens} training tokens"
    )
    print(
        f"slices: judge top quarter of held-out annotations {len(edu_slice)} chunks (score >= {q:.3f}); "
        f"all held-out annotations {len(control)}; Brown 'learned' genre {len(learned)} chunks"
    )
    for name, half in (("kept half (edu_score keep_top 0.5)", kept), ("random half", rand)):
        t0 = time.monotonic()
        model, n_stream = train_tiny_lm(half, tok, args)
        losses = [slice_loss(model, tok, s, args.seq_len) for s in (edu_slice, control, learned)]
        print(
            f"{name}: {n_stream} tokens in its stream, trained in {time.monotonic() - t0:.0f} s; "
            f"val loss: edu slice {losses[0]:.4f}, all held-out {losses[1]:.4f}, Brown learned {losses[2]:.4f}"
        )
    print(f"total {time.monotonic() - start:.0f} s; {load_line()}")
    print(machine_markdown())


def load_line() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("annotate")
    a.add_argument("--judge", default=str(ROOT / "runs/smollm2"))
    a.add_argument("--n", type=int, default=400)
    a.add_argument(
        "--prompt",
        default="fineweb",
        help="fineweb (the verbatim rubric), short, or contrast (the rubric's two ends as descriptions)",
    )
    a.add_argument("--doc-tokens", type=int, default=256)
    a.add_argument("--time-limit", type=float, default=1800.0)
    a.add_argument("--out", type=Path, required=True)
    for p in (a,):
        p.add_argument("--chunk-chars", type=int, default=1000)
        p.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("agreement")
    g.add_argument("annotations", nargs="+", type=Path)
    g.add_argument("--train-fraction", type=float, default=0.75)
    b = sub.add_parser("bench")
    b.add_argument("--annotations", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True, help="folder for the trained regressor")
    b.add_argument("--train-fraction", type=float, default=0.75)
    b.add_argument("--l2", type=float, default=1.0)
    b.add_argument("--ngrams", type=int, default=2)
    b.add_argument("--norm", default="l2", choices=("l1", "l2"))
    b.add_argument("--link", default="identity", choices=("identity", "logit"))
    b.add_argument("--tokenizer", type=Path, default=ROOT / "runs/tiny-cpu/tokenizer")
    b.add_argument("--layers", type=int, default=2)
    b.add_argument("--dim", type=int, default=128)
    b.add_argument("--steps", type=int, default=300)
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--seq-len", type=int, default=128)
    b.add_argument("--lr", type=float, default=3e-3)
    b.add_argument("--brown-chunks", type=int, default=100)
    b.add_argument("--chunk-chars", type=int, default=1000)
    b.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cmd == "annotate":
        annotate_main(args)
    elif args.cmd == "bench":
        args.out.mkdir(parents=True, exist_ok=True)
        print(load_line())
        bench_main(args)
    else:
        agreement_main(args)


if __name__ == "__main__":
    main()

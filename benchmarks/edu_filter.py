"""Educational-value filtering as FineWeb-Edu does it, on the default corpus (Shakespeare + chitchat).

    annotate  the judge (runs/smollm2, SmolLM2-135M-Instruct) scores a seeded sample of corpus chunks
              (--extra brown:200 adds chunks of offline corpora, for a sample with real spread) with the
              additive 0-5 rubric or the contrast protocol (danlu.eval.edu_judge), written as JSONL.
    merge     annotation files of one judge as one file, in a seeded random order.
    embed     mean-pooled judge hidden states of every annotation text at several layers
              (danlu.eval.edu_embed), one .npz per annotation file.
    agreement Spearman with the judge on the held-out last quarter of the annotations, for the hashed
              n-gram ridge regressor (danlu.data.edu) and, with --embeddings, the embedding head
              (danlu.data.edu_head); each with the settings 5-fold CV on the training rows chose.
    bench     the same classifier, then scores the corpus (or a seeded --pool of it) with it, keeps the
              top half (the `edu_score` block), draws a random half of the same size, and trains one
              tiny model on each for the same steps. Both are evaluated on the "educational" slice:
              held-out annotated chunks the judge scored in its top quarter, which neither training
              set contains; and on all held-out annotations and Brown's "learned" genre.

The corpus: every document of the default recipe's sources, cleaned (clean.normalize), cut into pieces
of about --chunk-chars characters at paragraph (else line) breaks, pieces under 200 characters dropped.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/edu_filter.py annotate --prompt contrast --doc-tokens 128 \
        --seed 1 --n 150 --extra brown:200 python_docs:50 --out runs/edu26-emb/contrast_wide.jsonl
    python benchmarks/edu_filter.py merge runs/data26-edu/contrast.jsonl runs/edu26-emb/contrast_wide.jsonl \
        --out runs/edu26-emb/contrast_all.jsonl
    python benchmarks/edu_filter.py embed runs/edu26-emb/contrast_all.jsonl --out runs/edu26-emb
    python benchmarks/edu_filter.py agreement runs/edu26-emb/contrast_all.jsonl --embeddings runs/edu26-emb
    python benchmarks/edu_filter.py bench --annotations runs/edu26-emb/contrast_all.jsonl \
        --embeddings runs/edu26-emb --embed-tokens 128 --pool 2000 --out runs/edu26-bench
"""

from __future__ import annotations

import argparse
import hashlib
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


def corpus_chunks(
    chunk_chars: int = 1000, min_chars: int = 200, sources: tuple = SOURCES, corpora: tuple = ()
) -> list[dict]:
    """Chunks of the default corpus's sources (and of offline `corpora`, danlu.data.corpora names;
    Brown chunks are labelled with their genre, brown/<genre>)."""
    from danlu.data.corpora import read_corpus

    docs = []
    read = [(s, read_source(s)) for s in sources] + [(c, read_corpus(c)) for c in corpora]
    for name, documents in read:
        for doc in documents:
            label = f"{name}/{doc['meta']['genre']}" if name == "brown" else name
            for i, text in enumerate(pieces(normalize(doc["text"]), chunk_chars)):
                if len(text) >= min_chars:
                    docs.append({"id": f"{doc['id']}#{i}", "text": text, "source": label, "meta": {}})
    return docs


def annotate_main(args: argparse.Namespace) -> None:
    import torch

    from danlu.eval.edu_judge import EduContrastJudge, EduJudge, annotate, write_annotations

    torch.set_num_threads(1)
    docs = corpus_chunks(args.chunk_chars)
    sample = random.Random(args.seed).sample(docs, args.n)
    for extra in args.extra:  # NAME:N, N seeded chunks of an offline corpus beside the default one
        name, n = extra.split(":")
        others = corpus_chunks(args.chunk_chars, sources=(), corpora=(name,))
        sample += random.Random(args.seed).sample(others, int(n))
    if args.extra:  # the held-out cut takes the last rows: every source in both parts
        random.Random(args.seed).shuffle(sample)
    if args.prompt == "contrast":
        judge = EduContrastJudge.from_dir(args.judge, max_doc_tokens=args.doc_tokens)
    else:
        judge = EduJudge.from_dir(args.judge, max_doc_tokens=args.doc_tokens, prompt=args.prompt)
    start = time.monotonic()
    rows = list(annotate(judge, sample, args.time_limit))
    write_annotations(rows, args.out)
    took = time.monotonic() - start
    print(f"annotated {len(rows)} of {len(docs)} chunks with {args.judge} in {took:.0f} s -> {args.out}")


def embed_main(args: argparse.Namespace) -> None:
    """Mean-pooled judge hidden states of each annotation's text (the text the judge read), one .npz
    per annotations file: {ids, layers, embeddings [n, len(layers) * n_embd]}."""
    import numpy as np
    import torch

    from danlu.data.edu import read_annotations
    from danlu.eval.edu_embed import ModelEmbedder

    torch.set_num_threads(1)
    embedder = ModelEmbedder.from_dir(args.judge, args.layers, max_tokens=args.max_tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    known = known_embeddings(args.out, embedder.layers, args.judge, args.max_tokens)
    for path in args.annotations:
        rows = read_annotations(path)
        start = time.monotonic()
        keys = [(r["id"], text_sha(r["text"])) for r in rows]
        todo = [i for i, k in enumerate(keys) if k not in known]
        known.update(zip([keys[i] for i in todo], embedder([rows[i]["text"] for i in todo]), strict=True))
        x = np.stack([known[k] for k in keys])
        out = args.out / f"{path.stem}.npz"
        np.savez(
            out,
            ids=np.array([r["id"] for r in rows]),
            text_sha=np.array([k[1] for k in keys]),
            layers=np.array(embedder.layers),
            embeddings=x,
            model=np.array(str(args.judge)),
            max_tokens=np.array(args.max_tokens),
        )
        took = time.monotonic() - start
        print(
            f"embedded {len(todo)} of {len(rows)} annotations of {path} (others known) in {took:.0f} s -> {out}"
        )


def merge_main(args: argparse.Namespace) -> None:
    """Annotation files of one judge and settings as one file, rows in a seeded random order (so the
    held-out cut is a random part of all of them); a chunk annotated twice is kept once."""
    from danlu.data.edu import read_annotations
    from danlu.eval.edu_judge import write_annotations

    rows, seen = [], set()
    for path in args.annotations:
        for row in read_annotations(path):
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
    random.Random(args.seed).shuffle(rows)
    write_annotations(rows, args.out)
    print(f"merged {len(rows)} annotations from {len(args.annotations)} files -> {args.out}")


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def known_embeddings(folder: Path, layers: list[int], judge: str, max_tokens: int) -> dict:
    """(id, text) -> embedding from the .npz files already in `folder` made with the same settings."""
    import numpy as np

    known = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as z:
            same = [int(v) for v in z["layers"]] == list(layers)
            if not same or embedding_settings(path) != {"model": str(judge), "max_tokens": max_tokens}:
                continue
            if "text_sha" in z.files:
                keys = zip(list(z["ids"]), list(z["text_sha"]), strict=True)
                known.update(zip(keys, z["embeddings"], strict=True))
    return known


def agreement_main(args: argparse.Namespace) -> None:
    """Spearman against the judge on held-out annotations, for the hashed n-gram ridge regressor and
    (with --embeddings) the head on the judge's mean-pooled hidden states, each with the settings that
    5-fold cross-validation on the training annotations chose (the held-out rows are not looked at)."""
    import numpy as np

    from _machine import machine_markdown
    from danlu.data.edu import read_annotations, spearman, train_edu_regressor

    for path in args.annotations:
        rows = read_annotations(path)
        cut = int(len(rows) * args.train_fraction)
        train, test = rows[:cut], rows[cut:]
        y_test = [r["score"] for r in test]
        options = select_by_cv(train)
        reg = train_edu_regressor(train, **options)
        pred = reg.predict([r["text"] for r in test])
        print(
            f"{path}: train {len(train)}, held out {len(test)}; hashed n-gram ridge {options}: "
            f"held-out Spearman {spearman(pred, y_test):.3f} {ci_text(pred, y_test)}"
        )
        if args.embeddings is None:
            continue
        x, layers = load_embeddings(args.embeddings / f"{path.stem}.npz", rows)
        options = select_head_by_cv(x[:cut], [r["score"] for r in train], layers)
        head = fit_head(x[:cut], [r["score"] for r in train], layers, options)
        pred = head.predict(head_columns(x[cut:], layers, options["layers"]))
        print(
            f"{path}: train {len(train)}, held out {len(test)}; embedding head {options}: "
            f"held-out Spearman {spearman(pred, y_test):.3f} {ci_text(pred, y_test)}"
        )
        per_source = sorted({r["source"] for r in test})
        if len(per_source) > 1:
            for source in per_source:
                mask = np.array([r["source"] == source for r in test])
                if mask.sum() > 2:
                    rho_s = spearman(pred[mask], np.asarray(y_test)[mask])
                    print(f"    within {source} ({mask.sum()} held out): Spearman {rho_s:.3f}")
    print(machine_markdown())


def ci_text(pred, target) -> str:
    """The held-out Spearman's bootstrap 95% interval (held-out rows resampled)."""
    from danlu.data.edu import spearman_ci

    lo, hi = spearman_ci(pred, target)
    return f"[95% CI {lo:.3f}, {hi:.3f}]"


def load_embeddings(path: Path, rows: list[dict]) -> tuple:
    """The `embed` subcommand's embeddings of these annotation rows, in their order, and the layers."""
    import numpy as np

    z = np.load(path)
    if list(z["ids"]) != [r["id"] for r in rows]:
        raise SystemExit(f"{path} does not hold the embeddings of these annotations; run `embed` again")
    return z["embeddings"], [int(v) for v in z["layers"]]


def embedding_settings(path: Path) -> dict:
    """The judge dir and token limit the `embed` subcommand used (files without them: its defaults)."""
    import numpy as np

    with np.load(path) as z:
        model = str(z["model"]) if "model" in z.files else str(ROOT / "runs/smollm2")
        max_tokens = int(z["max_tokens"]) if "max_tokens" in z.files else 256
    return {"model": model, "max_tokens": max_tokens}


def head_columns(x, layers: list[int], chosen: list[int]):
    """The columns of the chosen layers in an [n, len(layers) * d] embedding matrix."""
    import numpy as np

    d = x.shape[1] // len(layers)
    return np.concatenate(
        [x[:, layers.index(layer) * d : (layers.index(layer) + 1) * d] for layer in chosen], 1
    )


HEAD_L2 = (10.0, 100.0, 1000.0, 10000.0)


def head_grid(layers: list[int]) -> list[dict]:
    sets = [[layer] for layer in layers] + [layers]
    return [
        {"layers": chosen, "l2": l2, "link": link}
        for chosen in sets
        for l2 in HEAD_L2
        for link in ("identity", "logit")
    ]


def fit_head(x, scores, layers: list[int], options: dict, embedding: dict | None = None):
    from danlu.data.edu_head import EduEmbeddingHead

    head = EduEmbeddingHead(options["l2"], options["link"], embedding)
    return head.fit(head_columns(x, layers, options["layers"]), scores)


def select_head_by_cv(x, scores, layers: list[int], folds: int = 5) -> dict:
    """The head_grid setting with the best mean Spearman over `folds` folds of the training rows."""
    import numpy as np

    from danlu.data.edu import spearman

    y = np.asarray(scores, np.float64)
    fold = np.arange(len(y)) % folds
    best, best_rho = None, -2.0
    for options in head_grid(layers):
        rhos = []
        for f in range(folds):
            head = fit_head(x[fold != f], y[fold != f], layers, options)
            pred = head.predict(head_columns(x[fold == f], layers, options["layers"]))
            rhos.append(spearman(pred, y[fold == f]))
        rho = float(np.mean(rhos))
        if rho > best_rho:
            best, best_rho = options, rho
    print(f"chosen by {folds}-fold CV on the training annotations: {best} (CV Spearman {best_rho:.3f})")
    return best


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


GRID = [
    {"norm": norm, "link": link, "ngrams": ngrams, "l2": l2}
    for norm, link in (("l2", "identity"), ("l1", "logit"))
    for ngrams in (1, 2)
    for l2 in (0.1, 1.0, 10.0)
]


def select_by_cv(train: list[dict], folds: int = 5) -> dict:
    """The GRID setting with the best mean Spearman over `folds` folds of the training annotations
    (the held-out annotations are not looked at)."""
    from danlu.data.edu import spearman, train_edu_regressor

    best, best_rho = GRID[0], -2.0
    for options in GRID:
        rhos = []
        for f in range(folds):
            fit = [r for i, r in enumerate(train) if i % folds != f]
            val = [r for i, r in enumerate(train) if i % folds == f]
            reg = train_edu_regressor(fit, **options)
            rhos.append(spearman(reg.predict([r["text"] for r in val]), [r["score"] for r in val]))
        rho = float(sum(rhos) / folds)
        if rho > best_rho:
            best, best_rho = options, rho
    print(f"chosen by {folds}-fold CV on the training annotations: {best} (CV Spearman {best_rho:.3f})")
    return best


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
    if args.embeddings is not None:
        block, pred, what = head_classifier(args, rows, train)
    else:
        model_path = args.out / "edu_regressor.npz"
        options = select_by_cv(train) if args.select else {
            "l2": args.l2, "ngrams": args.ngrams, "norm": args.norm, "link": args.link,
        }  # fmt: skip
        reg = train_edu_regressor(train, model_path, **options)
        pred = reg.predict([r["text"] for r in test])
        block, what = edu_score_block(str(model_path), keep_top=0.5), f"hashed n-gram ridge {options}"
    print(
        f"classifier: {what} on {len(train)} annotations; "
        f"Spearman with the judge on {len(test)} held-out annotations: "
        f"{spearman(pred, [r['score'] for r in test]):.3f} {ci_text(pred, [r['score'] for r in test])}"
    )

    # the educational slice: held-out annotated chunks the judge put in its top quarter
    q = np.quantile([r["score"] for r in test], 0.75)
    held_ids = {r["id"] for r in test}
    edu_slice = [r["text"] for r in test if r["score"] >= q]
    control = [r["text"] for r in test]
    chunks = [d for d in corpus_chunks(args.chunk_chars) if d["id"] not in held_ids]
    if args.pool and args.pool < len(chunks):  # a seeded sample of the corpus, when scoring all is too slow
        chunks = random.Random(args.seed + 1).sample(chunks, args.pool)
    texts = [d["text"] for d in chunks]
    t0 = time.monotonic()
    keep = block.decide([block.keys(texts)])[0]["keep"]
    print(f"scored {len(texts)} pool chunks in {time.monotonic() - t0:.0f} s; {load_line()}")
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


def head_classifier(args: argparse.Namespace, rows: list[dict], train: list[dict]) -> tuple:
    """The embedding head chosen by CV on the training annotations, saved, as an `edu_score` block
    that embeds the pool through danlu.eval.edu_embed.model_dir_embedder."""
    from danlu.data.edu_head import edu_head_block
    from danlu.eval.edu_embed import model_dir_embedder

    path = args.embeddings / f"{args.annotations.stem}.npz"
    x, layers = load_embeddings(path, rows)
    cut, y = len(train), [r["score"] for r in rows]
    options = select_head_by_cv(x[:cut], y[:cut], layers)
    embedding = {"layers": options["layers"], **embedding_settings(path)}
    if args.embed_tokens:  # the pool is embedded as far as the judge read the annotations
        embedding["max_tokens"] = args.embed_tokens
    head = fit_head(x[:cut], y[:cut], layers, options, embedding)
    pred = head.predict(head_columns(x[cut:], layers, options["layers"]))
    path = head.save(args.out / "edu_head.npz")
    return (
        edu_head_block(str(path), model_dir_embedder, keep_top=0.5),
        pred,
        f"embedding head {embedding} {options}",
    )


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
    a.add_argument("--extra", nargs="*", default=[], help="NAME:N chunks of offline corpora (brown:150)")
    a.add_argument("--time-limit", type=float, default=1800.0)
    a.add_argument("--out", type=Path, required=True)
    for p in (a,):
        p.add_argument("--chunk-chars", type=int, default=1000)
        p.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("embed")
    e.add_argument("annotations", nargs="+", type=Path)
    e.add_argument("--judge", default=str(ROOT / "runs/smollm2"))
    e.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24, 30])
    e.add_argument("--max-tokens", type=int, default=256)
    e.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("merge")
    m.add_argument("annotations", nargs="+", type=Path)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, required=True)
    g = sub.add_parser("agreement")
    g.add_argument("annotations", nargs="+", type=Path)
    g.add_argument("--train-fraction", type=float, default=0.75)
    g.add_argument("--embeddings", type=Path, help="folder of the `embed` subcommand's .npz files")
    b = sub.add_parser("bench")
    b.add_argument("--annotations", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True, help="folder for the trained regressor")
    b.add_argument("--train-fraction", type=float, default=0.75)
    b.add_argument("--select", action="store_true", help="choose the regressor's settings by CV")
    b.add_argument("--embeddings", type=Path, help="the `embed` folder: use the embedding head (CV-chosen)")
    b.add_argument("--embed-tokens", type=int, default=0, help="embed pool chunks up to N tokens")
    b.add_argument("--pool", type=int, default=0, help="score a seeded sample of this many chunks (0: all)")
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
    elif args.cmd == "merge":
        merge_main(args)
    elif args.cmd == "embed":
        embed_main(args)
    elif args.cmd == "bench":
        args.out.mkdir(parents=True, exist_ok=True)
        print(load_line())
        bench_main(args)
    else:
        agreement_main(args)


if __name__ == "__main__":
    main()

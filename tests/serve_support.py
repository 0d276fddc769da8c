"""What the danlu serve tests share: a tiny chat model dir and a real `danlu serve` subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from danlu.model import build_model
from danlu.model.config import ModelConfig
from danlu.model_dir import save_model_dir
from danlu.tokenizer.bpe import ALL_SPECIAL_TOKENS, Tokenizer

TEXT = "hello there, how are you today? fine thanks. the cat sat on the mat, and the dog ran far away. "
STARTUP_S = 90.0


def tiny_chat_model(root: Path, max_seq_len: int = 512, n_embd: int = 32, chat: bool = True) -> Path:
    """A random tiny model with danlu's chat template whose special tokens never win: every reply runs
    to max_tokens in visible text, so streams last long enough to stop, cancel and time out."""
    tok = Tokenizer.train([TEXT * 5] * 40, 300, min_frequency=1)
    tok.save(root / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2,
        n_embd=n_embd,
        n_head=4,
        vocab_size=tok.vocab_size,
        max_seq_len=max_seq_len,
        tie_embeddings=False,
    )
    model = build_model(cfg)
    with torch.no_grad():
        # logits of std ~6 (varied, yet a zero logit is about e^-18 times as likely as the rest), and
        # zero for the special tokens and the bytes that do not print alone: replies are long and readable
        model.lm_head.weight.mul_(6 / (0.02 * n_embd**0.5))
        model.lm_head.weight[: len(ALL_SPECIAL_TOKENS)] = 0
        for i in range(len(ALL_SPECIAL_TOKENS), tok.vocab_size):
            text = tok.decode([i])
            if not (text.isascii() and text.isprintable()):
                model.lm_head.weight[i] = 0
    return save_model_dir(root / "model", model, cfg, root / "tok", {"chat": chat})


@dataclass
class Server:
    proc: subprocess.Popen
    url: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)


def _pump(server: Server, ready: threading.Event) -> None:
    assert server.proc.stderr is not None
    for line in server.proc.stderr:
        server.log.append(line.rstrip())
        if "listening on http://" in line and not server.url:
            server.url = line.rsplit("listening on ", 1)[1].strip()
            ready.set()
    ready.set()


@contextlib.contextmanager
def running_server(model_dir: Path, *args: str) -> Iterator[Server]:
    """`danlu serve MODEL --port 0 ARGS` on 127.0.0.1, stopped (SIGTERM, then SIGKILL) afterwards."""
    cmd = [sys.executable, "-m", "danlu.cli", "serve", str(model_dir), "--port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DANLU_API_KEY", None)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    server = Server(proc)
    ready = threading.Event()
    threading.Thread(target=_pump, args=(server, ready), daemon=True).start()
    try:
        if not ready.wait(STARTUP_S) or not server.url:
            raise AssertionError("danlu serve did not start:\n" + "\n".join(server.log[-30:]))
        yield server
    finally:
        stop(server)


def stop(server: Server, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal the server and wait for it to exit; its exit status (killed if it hangs)."""
    if server.proc.poll() is None:
        server.proc.send_signal(sig)
        try:
            return server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
            raise AssertionError("danlu serve did not exit after " + signal.Signals(sig).name) from None
    return server.proc.returncode


def wait_for(predicate, timeout: float = 20.0, every: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())

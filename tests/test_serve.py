"""danlu serve against the official openai client: a real server subprocess, the real engine, a tiny model.

Outputs are checked against the model itself (greedy continuations and log-probabilities from plain
forwards), errors against OpenAI's error shape, and the limits (auth, 429, timeouts, disconnects,
SIGTERM) by what a client sees and what /metrics counts.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
import torch

from danlu.model_dir import load_model

openai = pytest.importorskip("openai")
from serve_support import running_server, stop, tiny_chat_model, wait_for  # noqa: E402

KEY = "test-key-123"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_chat_model(tmp_path_factory.mktemp("serve"), max_seq_len=1024, n_embd=64)


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory):
    """Room for 8000-token replies: streams that outlast timeouts and shutdown grace periods."""
    return tiny_chat_model(tmp_path_factory.mktemp("serve-long"), max_seq_len=8192, n_embd=64)


@pytest.fixture(scope="module")
def reference(model_dir):
    model, tok, _ = load_model(model_dir)
    return model, tok


@pytest.fixture(scope="module")
def server(model_dir):
    with running_server(model_dir, "--api-key", KEY, "--served-model-name", "tiny") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key=KEY, max_retries=0, timeout=60)


def post(server, path: str, body, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(server.url + path, content=data, headers=headers, timeout=60, **kw)


def metrics(server) -> dict[str, float]:
    out = {}
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@torch.no_grad()
def greedy(model, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-n:]


@torch.no_grad()
def token_logprobs(model, ids: list[int]) -> list[float]:
    logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
    return [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]


# ------------------------------------------------------------------------------------------ basics


def test_models_health_and_the_page(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    page = httpx.get(server.url + "/")  # the page and its script need no key
    assert page.status_code == 200 and "/static/chat.js" in page.text
    assert "AbortController" in httpx.get(server.url + "/static/chat.js").text


def test_completions_are_the_models_greedy_continuations(client, reference):
    model, tok = reference
    prompts = ["hello there, how", "the cat sat"]
    out = client.completions.create(model="tiny", prompt=prompts, max_tokens=12, temperature=0)
    for choice, prompt in zip(sorted(out.choices, key=lambda c: c.index), prompts, strict=True):
        assert choice.text == tok.decode(greedy(model, tok.encode(prompt), 12), skip_special=True)
        assert choice.finish_reason == "length"
    assert out.usage.completion_tokens == 24
    assert out.usage.prompt_tokens == sum(len(tok.encode(p)) for p in prompts)
    ids = tok.encode(prompts[0])  # token ids give the same continuation
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == out.choices[0].text


def test_echo_logprobs_are_the_models_and_lm_eval_parses_them(client, reference):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    model, tok = reference
    ids = tok.encode("the dog ran far away")
    # exactly what lm-eval's local-completions sends to score a (context, continuation) pair
    out = client.completions.create(
        model="tiny", prompt=[ids], max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1234
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(token_logprobs(model, ids), abs=1e-4)
    assert "".join(lp.tokens) == out.choices[0].text  # ASCII tokens: offsets are running lengths
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for chosen, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert chosen <= max(top.values()) + 1e-6
    ctxlen = 2
    [(score, _)] = LocalCompletionsAPI.parse_logprobs(out.model_dump(), ctxlens=[ctxlen])
    assert score == pytest.approx(sum(token_logprobs(model, ids)[ctxlen - 1 :]), abs=1e-3)
    scored = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert scored.choices[0].text == tok.decode(ids) and scored.usage.completion_tokens == 0


def test_lm_eval_local_completions_scores_a_danlu_server(server, reference, monkeypatch):
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    model, tok = reference
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # its completion requests' key (auth_token: the tokenizer's)
    lm = LocalCompletionsAPI(
        base_url=server.v1 + "/completions",
        model="tiny",
        tokenizer_backend="auto",  # finds the server's /tokenizer_info and /tokenize
        auth_token=KEY,
        max_length=1024,
        max_retries=1,
    )
    assert lm.tokenizer_backend == "remote"
    pairs = [("the cat", " sat on the mat"), ("hello there,", " how are you")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    for (score, _), (context, continuation) in zip(lm.loglikelihood(requests), pairs, strict=True):
        ctx, cont = tok.encode(context), tok.encode(continuation)
        assert score == pytest.approx(sum(token_logprobs(model, ctx + cont)[len(ctx) - 1 :]), abs=1e-3)


def test_streaming_chat_equals_the_plain_answer_and_reports_usage(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_completion_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert plain.choices[0].message.role == "assistant" and plain.usage.completion_tokens == 20


def test_n_choices_with_a_seed_are_distinct_and_repeatable(client, reference):
    ask = dict(model="tiny", prompt="the cat", max_tokens=16, temperature=1.0, n=3, seed=7)
    first, again = client.completions.create(**ask), client.completions.create(**ask)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, n=2, stream=True, seed=3
    )
    seen: dict[int, str] = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            seen[c.index] += c.delta.content or ""
    assert all(seen.values())
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=["the cat", "the dog"],
            max_tokens=5,
            n=2,
            logprobs=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces: dict[int, list] = {i: [] for i in range(4)}  # prompt-major: choice = prompt * n + i
    for chunk in chunks[:-1]:
        for c in chunk.choices:
            pieces[c.index] += [(c.text, c.logprobs.tokens if c.logprobs else [])]
    assert all(sum(bool(p[1]) for p in v) == 5 for v in pieces.values())  # a logprob entry per token
    _, tok = reference
    assert chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == len(tok.encode("the cat")) + len(tok.encode("the dog"))


def test_chat_logprobs_and_top_logprobs(client):
    out = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "how are you"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = out.choices[0].logprobs.content
    assert len(content) == 6 and "".join(e.token for e in content) == out.choices[0].message.content
    for e in content:
        assert [t.logprob for t in e.top_logprobs] == sorted(
            (t.logprob for t in e.top_logprobs), reverse=True
        )
        assert len(e.top_logprobs) == 3 and e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-5)
        assert bytes(e.bytes).decode() == e.token


def test_json_schema_and_json_object_responses_parse(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"}},
        "required": ["name", "ok"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    for seed in range(3):
        out = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "a person"}],
            response_format=fmt,
            max_tokens=60,
            seed=seed,
        )
        value = json.loads(out.choices[0].message.content)
        assert set(value) == {"name", "ok"} and isinstance(value["ok"], bool) and len(value["name"]) <= 6
        assert out.choices[0].finish_reason == "stop"
    for seed in range(3):  # any object: it parses whenever it closed before max_tokens
        obj = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "json"}],
            response_format={"type": "json_object"},
            max_tokens=300,
            seed=seed,
        ).choices[0]
        assert obj.message.content.startswith("{")
        if obj.finish_reason == "stop":
            assert isinstance(json.loads(obj.message.content), dict)


def test_stop_strings_penalties_and_logit_bias(client, reference):
    from danlu.infer.engine import Engine
    from danlu.infer.params import SamplingParams

    model, tok = reference
    free = client.completions.create(model="tiny", prompt="the cat", max_tokens=30, temperature=0).choices[0]
    stop = free.text[10:13]
    cut = client.completions.create(model="tiny", prompt="the cat", max_tokens=30, temperature=0, stop=[stop])
    assert (
        cut.choices[0].finish_reason == "stop" and cut.choices[0].text == free.text[: free.text.index(stop)]
    )
    forced_id = tok.encode(" the")[0]
    forced = client.completions.create(
        model="tiny", prompt="the cat", max_tokens=5, temperature=0, logit_bias={str(forced_id): 100}
    )
    assert forced.choices[0].text == " the" * 5
    penalized = client.completions.create(
        model="tiny",
        prompt="the cat",
        max_tokens=30,
        temperature=0,
        frequency_penalty=1.5,
        presence_penalty=0.5,
    )
    params = SamplingParams(max_tokens=30, temperature=0, frequency_penalty=1.5, presence_penalty=0.5)
    [alone] = Engine(model, tok).generate([tok.encode("the cat")], params)
    assert penalized.choices[0].text == alone.text != free.text


def test_a_model_without_a_chat_template_gets_a_400_naming_completions():
    from tokenizers import pre_tokenizers

    from danlu.serve.protocol import APIError, chat_prompt_ids
    from danlu.tokenizer.pretrained import PretrainedTokenizer

    base = PretrainedTokenizer.from_bpe(
        [*pre_tokenizers.ByteLevel.alphabet(), "<s>", "</s>"], [], ["<s>", "</s>"], bos="<s>", eos="</s>"
    )
    with pytest.raises(APIError, match="base model without a chat template; use /v1/completions") as e:
        chat_prompt_ids(base, [{"role": "user", "content": "hi"}], "base")
    assert (e.value.status, e.value.code) == (400, "no_chat_template")


def test_a_base_model_is_chatted_with_in_its_transcript_form(tmp_path):
    """Not chat-tuned (no `chat: true`): the chat endpoint prompts it as `danlu chat` does, one
    labelled line per turn, and its reply is the model's own greedy continuation of that transcript."""
    from danlu.transcript import transcript_ids

    base_dir = tiny_chat_model(tmp_path, n_embd=64, chat=False)
    model, tok, _ = load_model(base_dir)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    with running_server(base_dir) as s:
        c = openai.OpenAI(base_url=s.v1, api_key="unused", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="model", messages=messages, max_tokens=8, temperature=0)
        stop(s)
    prompt = transcript_ids(tok, messages)
    assert tok.decode(prompt).endswith("be brief\nA: the cat\nB:")
    assert r.usage.prompt_tokens == len(prompt)
    assert r.choices[0].message.content == tok.decode(greedy(model, prompt, 8))


# ------------------------------------------------------------------------------------------ errors


def test_serve_verb_bad_input_is_one_line_and_status_2(model_dir, tmp_path, capsys, monkeypatch):
    import socket
    import sys

    from danlu.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        cases = [
            (["serve", str(tmp_path / "missing")], "not a directory"),
            (["serve", str(model_dir), "--max-batch", "0"], "max_batch: must be >= 1"),
            (["serve", str(model_dir), "--timeout", "-1"], "timeout: must be > 0"),
            (["serve", str(model_dir), "--port", str(taken.getsockname()[1])], "pick another --port"),
        ]
        for argv, message in cases:
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    finally:
        taken.close()
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the extra were not installed
    assert main(["serve", str(model_dir)]) == 2
    assert "pip install 'danlu[serve]'" in capsys.readouterr().err


BAD_REQUESTS = [
    ("/v1/completions", b'{"prompt": "hi", ', 400, None, "invalid_json"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "hi " * 1100}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "10"}, 400, "max_tokens", "invalid_type"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs", None),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"abc": 1}}, 400, "logit_bias", None),
    ("/v1/completions", {"prompt": [99999]}, 400, "prompt", None),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt", "missing_field"),
    ("/v1/completions", {"prompt": "hi", "suffix": "x"}, 400, "suffix", "unsupported_parameter"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "messages.0.role",
        None,
    ),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "invalid_type"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        400,
        "max_tokens",
        None,
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
        400,
        "messages",
        None,
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema"}},
        400,
        "response_format.json_schema",
        None,
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD_REQUESTS)
def test_bad_requests_get_openai_shaped_4xx(server, path, body, status, param, code):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"], error["code"]) == (param, code) if code else error["param"] == param


def test_errors_raise_the_openai_clients_exceptions_and_leave_the_server_healthy(server, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5000
        )
    for key in (None, "wrong"):
        r = post(server, "/v1/completions", {"prompt": "hi"}, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.v1, api_key="wrong", max_retries=0).models.list()
    unknown = httpx.get(server.url + "/v2/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    assert httpx.get(server.url + "/v1/completions").status_code == 405
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).choices[0].text


def test_metrics_count_requests_tokens_and_first_token_times(server, client):
    before = metrics(server)
    client.completions.create(model="tiny", prompt="hello", max_tokens=7, temperature=0)
    post(server, "/v1/completions", {"prompt": "hi", "max_tokens": -1})
    after = metrics(server)
    assert after["danlu_generation_tokens_total"] - before["danlu_generation_tokens_total"] == 7
    assert (
        after["danlu_time_to_first_token_seconds_count"]
        == before["danlu_time_to_first_token_seconds_count"] + 1
    )
    ok = 'danlu_requests_total{endpoint="/v1/completions",status="200"}'
    bad = 'danlu_requests_total{endpoint="/v1/completions",status="400"}'
    assert after[ok] == before[ok] + 1 and after[bad] == before.get(bad, 0) + 1
    assert after["danlu_queue_depth"] == 0 and after["danlu_running_requests"] == 0
    assert after["danlu_tokens_per_second"] > 0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    before = metrics(server)["danlu_cancelled_requests_total"]
    body = {"prompt": "the", "max_tokens": 1000, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.v1 + "/completions", json=body, headers=headers, timeout=30) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert metrics(server)["danlu_running_requests"] == 1
    # the connection is closed: the server cancels the request and the engine frees the slot
    assert wait_for(lambda: metrics(server)["danlu_running_requests"] == 0, timeout=20)
    assert metrics(server)["danlu_cancelled_requests_total"] == before + 1


# ------------------------------------------------------------------------------------- limits


def test_full_queue_is_429_and_timeouts_end_requests(long_model_dir):
    with running_server(long_model_dir, "--max-batch", "1", "--max-queue", "1", "--timeout", "1.5") as s:
        c = openai.OpenAI(base_url=s.v1, api_key="none", max_retries=0, timeout=60)
        long = {"prompt": "the", "max_tokens": 8000, "stream": True}
        with httpx.stream("POST", s.v1 + "/completions", json=long, timeout=30) as running:
            events = running.iter_lines()
            assert next(line for line in events if line.startswith("data: "))  # it holds the one slot
            with httpx.stream("POST", s.v1 + "/completions", json=long, timeout=30) as queued:
                assert queued.status_code == 200
                with pytest.raises(openai.RateLimitError, match="max_queue"):
                    c.completions.create(model="model", prompt="hi", max_tokens=2)
                tail = [json.loads(line[6:]) for line in queued.iter_lines() if line.startswith("data: {")]
                assert tail[-1]["error"]["code"] == "timeout"  # it timed out waiting
            tail = [line for line in events if line.startswith("data: ")]
            assert json.loads(tail[-2][6:])["error"]["code"] == "timeout" and tail[-1] == "data: [DONE]"
        r = httpx.post(s.v1 + "/completions", json={"prompt": "the", "max_tokens": 8000}, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text[:300]
        assert wait_for(lambda: metrics(s)["danlu_running_requests"] == 0)
        assert c.completions.create(model="model", prompt="hi", max_tokens=2).choices[0].text


def test_sigterm_finishes_short_streams_cancels_long_ones_and_exits_cleanly(long_model_dir):
    with running_server(long_model_dir, "--grace", "4") as s:
        results: dict[str, list[str]] = {}

        def read(name: str, max_tokens: int) -> None:
            body = {"prompt": "the", "max_tokens": max_tokens, "stream": True}
            with httpx.stream("POST", s.v1 + "/completions", json=body, timeout=60) as r:
                results[name] = [line for line in r.iter_lines() if line.startswith("data: ")]

        short = threading.Thread(target=read, args=("short", 300))
        long = threading.Thread(target=read, args=("long", 8000))
        long.start()
        assert wait_for(lambda: metrics(s)["danlu_running_requests"] == 1)
        short.start()
        assert wait_for(lambda: metrics(s)["danlu_running_requests"] == 2)
        started = time.monotonic()
        assert stop(s, signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - started < 4 + 6
        short.join(10)
        long.join(10)
        assert json.loads(results["short"][-2][6:])["choices"][0]["finish_reason"] == "length"
        assert json.loads(results["long"][-2][6:])["error"]["code"] == "shutting_down"
        assert results["long"][-1] == results["short"][-1] == "data: [DONE]"
        assert s.logged("SIGTERM: finishing 2 in-flight request(s)")
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/health", timeout=5)

"""The FastAPI app: OpenAI's /v1 routes, /health, /metrics, lm-eval's tokenizer routes and the chat page.

Every error leaves in OpenAI's shape ({"error": {"message", "type", "param", "code"}}), including 404s
of unknown paths and unexpected failures (500, logged with their traceback).
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from danlu.serve.bridge import ClientGone, Generations
from danlu.serve.metrics import Metrics
from danlu.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    EngineRequest,
    chat_messages,
    chat_prompt_ids,
    chat_request,
    check_model,
    completion_requests,
    parse_body,
)
from danlu.serve.responses import (
    TokenText,
    chat_logprobs,
    finish_reason,
    legacy_logprobs,
    new_id,
    now,
    sse,
    usage,
)
from danlu.transcript import TRANSCRIPT_STOP, transcript_ids

log = logging.getLogger(__name__)

# Paths counted in danlu_requests_total under their own name; anything else counts as "other".
COUNTED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize")
# HTTP status of a client that left before its answer (nginx's convention), for the request counter.
CLIENT_CLOSED = 499


@dataclass
class ServerState:
    engine: Any
    model_name: str
    api_key: str | None
    timeout_s: float
    metrics: Metrics = field(default_factory=Metrics)
    # a base model (config.json without `chat: true`) is prompted with the transcript of its pretraining
    # conversations, one labelled line per turn, as `danlu chat` does; a chat model with its template
    transcript: bool = False
    # set on SIGTERM/SIGINT: new requests get 503 while in-flight ones finish
    draining: bool = False
    live: set[Generations] = field(default_factory=set)

    def cancel_all(self, reason: str) -> None:
        for gens in list(self.live):
            gens.cancel(reason)


class _CountRequests:
    """ASGI middleware counting responses by path and status (pure ASGI, so streams pass untouched)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in COUNTED_PATHS else "other"
        if path.startswith("/v1/models"):
            path = "/v1/models"

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.metrics.request_done(path, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="danlu", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.danlu = state
    engine, tok = state.engine, state.engine.tokenizer
    token_text = TokenText(tok)
    context = engine.max_len

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", type=kind))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(APIError(500, f"internal server error ({type(e).__name__})", type="server_error"))

    def authorized(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), state.api_key.encode()
        ):
            raise APIError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer YOUR_KEY'",
                type="authentication_error",
                code="invalid_api_key",
            )

    def accepting() -> None:
        if state.draining:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")

    guarded = [Depends(authorized), Depends(accepting)]

    # ------------------------------------------------------------------------------------ plain routes

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.model_name})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = state.metrics.render(engine.stats())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict[str, Any]:
        return {
            "id": state.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "danlu",
            "max_model_len": context,
        }

    @app.get("/v1/models", dependencies=guarded)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=guarded)
    async def get_model(model_id: str) -> dict[str, Any]:
        check_model(model_id, state.model_name)
        return model_card()

    # lm-eval's RemoteTokenizer (vLLM's routes): score with the server's own tokenizer
    @app.get("/tokenizer_info", dependencies=guarded)
    async def tokenizer_info() -> dict[str, Any]:
        names = {v: k for k, v in getattr(tok, "special_tokens", {}).items()}
        return {
            "eos_token": names.get(tok.eos_id),
            "bos_token": names.get(tok.bos_id),
            "pad_token": names.get(getattr(tok, "pad_id", None)),
            "model_max_length": context,
            "vocab_size": tok.vocab_size,
        }

    @app.post("/tokenize", dependencies=guarded)
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise APIError(400, "prompt must be a string", param="prompt")
        ids = tok.encode(prompt, allowed_special="all")
        return {"tokens": ids, "count": len(ids), "max_model_len": context}

    @app.post("/detokenize", dependencies=guarded)
    async def detokenize(request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids):
            raise APIError(
                400, f"tokens must be a list of token ids in [0, {tok.vocab_size})", param="tokens"
            )
        return {"prompt": tok.decode(ids)}

    # --------------------------------------------------------------------------------- generation

    def start(requests: list[EngineRequest]) -> Generations:
        gens = Generations(engine, state.metrics, state.timeout_s)
        gens.submit(requests)
        state.live.add(gens)
        return gens

    async def finish(gens: Generations, request: Request) -> list[Any]:
        """The completions of a non-streaming request; a client that leaves cancels them."""
        try:
            return await gens.results(request.is_disconnected)
        except ClientGone:
            raise APIError(CLIENT_CLOSED, "client closed the connection") from None
        finally:
            gens.cancel("client disconnected")
            state.live.discard(gens)

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(request: Request) -> Any:
        body = parse_body(CompletionRequest, await request.body())
        check_model(body.model, state.model_name)
        requests = completion_requests(body, tok, context)
        gens = start(requests)
        rid, created = new_id("cmpl"), now()
        if body.stream:
            return _stream(completion_chunks(gens, body, rid, created), gens)
        results = await finish(gens, request)
        choices = []
        for c, comp in zip(gens.choices, results, strict=True):
            text = comp.text
            logprobs = None
            if body.logprobs is not None:
                if body.echo:
                    ids = [*c.prompt.prompt_ids, *comp.token_ids]
                    lps = [*comp.prompt_logprobs, *comp.logprobs]
                    tops = [*(comp.prompt_top_logprobs or []), *(comp.top_logprobs or [])]
                    logprobs = legacy_logprobs(token_text, ids, lps, tops)
                else:
                    logprobs = legacy_logprobs(token_text, comp.token_ids, comp.logprobs, comp.top_logprobs)
            if body.echo:
                text = c.prompt.prompt_text + text
            choices.append(
                {
                    "index": c.index,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(comp.finish_reason),
                }
            )
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": state.model_name,
            "choices": choices,
            "usage": _usage(requests, results),
        }

    async def completion_chunks(gens: Generations, body: CompletionRequest, rid: str, created: int) -> Any:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            head = {"id": rid, "object": "text_completion", "created": created, "model": state.model_name}
            return head | {"choices": choices} | extra

        include_usage = body.stream_options is not None and body.stream_options.include_usage
        offsets = [0] * len(gens.choices)
        async for c, ev in gens.events():
            if ev.token_id is None and not ev.text and not ev.finished:
                continue
            logprobs = None
            if body.logprobs is not None and ev.token_id is not None:
                tops = [ev.top] if ev.top is not None else None
                logprobs = legacy_logprobs(token_text, [ev.token_id], [ev.logprob], tops, offsets[c.index])
            offsets[c.index] += len(ev.text)
            choice = {
                "index": c.index,
                "text": ev.text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(ev.finish_reason) if ev.finished else None,
            }
            yield chunk([choice], **({"usage": None} if include_usage else {}))
        if include_usage:
            prompt_tokens = sum(len(r.prompt_ids) for r in gens_requests(gens))
            yield chunk([], usage=usage(prompt_tokens, sum(c.n_tokens for c in gens.choices)))

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(request: Request) -> Any:
        body = parse_body(ChatRequest, await request.body())
        check_model(body.model, state.model_name)
        messages = chat_messages(body)
        if state.transcript:
            prompt_ids = transcript_ids(tok, messages)
            req = chat_request(body, prompt_ids, tok, context, extra_stop=TRANSCRIPT_STOP)
        else:
            prompt_ids = chat_prompt_ids(tok, messages, state.model_name)
            req = chat_request(body, prompt_ids, tok, context)
        gens = start([req])
        rid, created = new_id("chatcmpl"), now()
        if body.stream:
            return _stream(chat_chunks(gens, body, rid, created), gens)
        results = await finish(gens, request)
        choices = []
        for c, comp in zip(gens.choices, results, strict=True):
            logprobs = None
            if body.logprobs:
                logprobs = chat_logprobs(token_text, comp.token_ids, comp.logprobs, comp.top_logprobs)
            choices.append(
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": comp.text},
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(comp.finish_reason),
                }
            )
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": state.model_name,
            "choices": choices,
            "usage": _usage([req], results),
        }

    async def chat_chunks(gens: Generations, body: ChatRequest, rid: str, created: int) -> Any:
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            head = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": state.model_name,
            }
            return head | {"choices": choices} | ({"usage": None} if include_usage else {}) | extra

        for c in gens.choices:
            delta = {"role": "assistant", "content": ""}
            yield chunk([{"index": c.index, "delta": delta, "logprobs": None, "finish_reason": None}])
        async for c, ev in gens.events():
            if ev.text or (body.logprobs and ev.token_id is not None):
                logprobs = None
                if body.logprobs and ev.token_id is not None:
                    tops = [ev.top] if ev.top is not None else None
                    logprobs = chat_logprobs(token_text, [ev.token_id], [ev.logprob], tops)
                delta = {"content": ev.text}
                yield chunk([{"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}])
            if ev.finished:
                reason = finish_reason(ev.finish_reason)
                yield chunk([{"index": c.index, "delta": {}, "logprobs": None, "finish_reason": reason}])
        if include_usage:
            n = sum(c.n_tokens for c in gens.choices)
            yield chunk([], usage=usage(len(gens.choices[0].prompt.prompt_ids), n))

    def _stream(chunks: Any, gens: Generations) -> StreamingResponse:
        async def body() -> Any:
            try:
                async for data in chunks:
                    yield sse(data)
            except APIError as e:  # a timeout or shutdown mid-stream: an error event, then the end
                yield sse(e.body())
            finally:  # also when the client disconnects: the stream task is cancelled and lands here
                gens.cancel("client disconnected")
                state.live.discard(gens)
            yield sse("[DONE]")

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    # --------------------------------------------------------------------------------- the page

    static = resources.files("danlu.serve") / "static"

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(_CountRequests, metrics=state.metrics)
    return app


def gens_requests(gens: Generations) -> list[EngineRequest]:
    """The distinct prompts of a request's choices, in order."""
    seen: list[EngineRequest] = []
    for c in gens.choices:
        if not seen or seen[-1] is not c.prompt:
            seen.append(c.prompt)
    return seen


def _usage(requests: list[EngineRequest], results: list[Any]) -> dict[str, Any]:
    prompt_tokens = sum(len(r.prompt_ids) for r in requests)
    cached = sum(getattr(r, "cached_prompt_tokens", 0) or 0 for r in results)
    return usage(prompt_tokens, sum(len(r.token_ids) for r in results), cached)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body

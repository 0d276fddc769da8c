"""danlu serve: an OpenAI-compatible HTTP server over the inference engine, and a web chat page.

The server is thin (as vLLM's is): `protocol` validates OpenAI request bodies into SamplingParams and
prompt ids, `bridge` carries engine token events into asyncio, `responses` shapes them as OpenAI JSON and
SSE chunks, `app` holds the routes, `metrics` the Prometheus text, `server` runs uvicorn with a bounded
queue, timeouts and graceful shutdown. The engine (danlu.infer.engine) owns batching and the KV cache.
Needs the `[serve]` extra (fastapi, uvicorn).
"""

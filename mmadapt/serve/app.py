"""The OpenAI-compatible HTTP layer over a ChatEngine (FastAPI): chat completions (JSON or server-sent events),
models, embeddings, health; OpenAI-style error bodies; an optional API key checked on every route.

Extra response fields: `citations` (the passages placed in the prompt: n, id, source, page, score, text; in the
first chunk when streaming) and `cited` (the [n] the answer cites; in the last chunk when streaming).
A request may send `"retrieval": false` to ask the bare model.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmadapt.errors import MMAdaptError
from mmadapt.serve.engine import ChatEngine, ChatResult, ContextLengthError, Handle, Overloaded, SamplingParams

logger = logging.getLogger(__name__)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields of the API this server does not use are ignored

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    retrieval: bool = True


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str]


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers)


def engine_error(e: Exception) -> JSONResponse:
    """An engine exception -> its OpenAI-style response (4xx for the request's fault, 503 when overloaded)."""
    if isinstance(e, Overloaded):
        return error(503, str(e), "server_overloaded", code="overloaded", headers={"Retry-After": "1"})
    if isinstance(e, ContextLengthError):
        return error(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, MMAdaptError):
        place = str(e).split(":", 1)[0]  # messages name the field first ("max_tokens: ...", "messages[0].content[1]: ...")
        return error(400, str(e), param=place if ":" in str(e) and " " not in place else None)
    logger.exception("request failed")
    return error(500, f"internal error: {type(e).__name__}: {e}", "server_error")


MAX_BODY_BYTES = 64 * 2**20


def create_app(engine: ChatEngine, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving `engine`; with `api_key`, every route requires `Authorization: Bearer <api_key>`.
    A body declared larger than `max_body_bytes` is refused (413) before it is read."""
    app = FastAPI(title="mmadapt serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > max_body_bytes:
            return error(413, f"the body is larger than {max_body_bytes} bytes (or its Content-Length is invalid)",
                         code="request_too_large")
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error",
                             code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return error(400, f"the body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
        return error(400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}", param=".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "waiting": engine.waiting, **engine.stats}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        ids = [engine.name] + ([engine.retrieval.embedder_name] if engine.retrieval else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "mmadapt"}
                                           for i in ids]}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Any:
        if engine.retrieval is None:
            return error(400, "this server has no embedder: start it with --index RAG_DIR", param="model")
        if body.model not in (engine.retrieval.embedder_name, engine.name):
            return error(404, f"model {body.model!r} not found; this server embeds with "
                              f"{engine.retrieval.embedder_name!r}", param="model", code="model_not_found")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return error(400, "input: expected a non-empty string or list of non-empty strings", param="input")
        try:
            vectors = await run_in_threadpool(engine.embed, texts)
        except Exception as e:
            return engine_error(e)
        n_tokens = sum(len(t.split()) for t in texts)  # whitespace words: the embedder's own count is not exposed
        return {"object": "list", "model": engine.retrieval.embedder_name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if body.model != engine.name:
            return error(404, f"model {body.model!r} not found; this server serves {engine.name!r}", param="model",
                         code="model_not_found")
        if body.n != 1:
            return error(400, "n: only 1 choice per request is supported", param="n")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        params = SamplingParams(max_tokens=body.max_completion_tokens or body.max_tokens,
                                temperature=1.0 if body.temperature is None else body.temperature,
                                top_p=1.0 if body.top_p is None else body.top_p, stop=stop, seed=body.seed)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(event: tuple[str, Any]) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            handle = await run_in_threadpool(engine.submit, body.messages, params, body.retrieval, on_event, body.stream)
        except Exception as e:
            return engine_error(e)
        if body.stream:
            return StreamingResponse(sse(engine, handle, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            while True:
                kind, value = await events.get()
                if kind != "delta":
                    break
        except asyncio.CancelledError:  # the client went away: free its batch row
            handle.cancel()
            raise
        if kind == "error":
            return engine_error(value)
        return JSONResponse(completion(engine.name, handle, value))  # plain JSON types: no jsonable_encoder pass

    return app


def completion(model: str, handle: Handle, result: ChatResult) -> dict[str, Any]:
    return {
        "id": handle.id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                  "total_tokens": result.prompt_tokens + result.completion_tokens},
        "citations": [c.to_dict() for c in result.citations], "cited": result.cited,
    }


async def sse(engine: ChatEngine, handle: Handle, events: asyncio.Queue) -> AsyncIterator[str]:
    """Server-sent events: a role chunk carrying the citations, one chunk per decoded piece, a final chunk with
    finish_reason, usage and `cited`, then [DONE]. A disconnect cancels the request."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": handle.id, "object": "chat.completion.chunk", "created": created, "model": engine.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""}, citations=[c.to_dict() for c in handle.citations])
        while True:
            kind, value = await events.get()
            if kind == "delta":
                yield chunk({"content": value})
            elif kind == "done":
                usage = {"prompt_tokens": value.prompt_tokens, "completion_tokens": value.completion_tokens,
                         "total_tokens": value.prompt_tokens + value.completion_tokens}
                yield chunk({}, value.finish_reason, usage=usage, cited=value.cited)
                break
            else:
                payload = json.loads(engine_error(value).body)
                yield f"data: {json.dumps(payload)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()  # no-op when finished; frees the row when the client disconnected mid-stream

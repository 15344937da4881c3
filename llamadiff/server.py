"""An OpenAI-compatible HTTP server over a ``Batcher``: ``llamadiff serve``.

    pip install "llamadiff[server]"
    llamadiff serve -m model.gguf            # default: the shipped block-diffusion model

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (the model's chat template
applied), both with ``"stream": true`` as server-sent events in OpenAI's chunk format;
``GET /v1/models``; ``GET /health``. Request fields: OpenAI's ``max_tokens`` (default: the
model's generation length, see GenerationConfig), ``temperature`` (default 0: greedy, unlike
OpenAI's 1), ``top_p``, ``stop`` (a string or a list), ``seed``, ``stream``,
``stream_options.include_usage``, ``n`` (1 only), ``user`` (ignored), ``max_completion_tokens``,
the penalties / ``logit_bias`` / ``logprobs`` / ``echo`` at their neutral values, ``ignore_eos``
(llama.cpp's server: generate past the end-of-generation tokens; OpenAI's ``stop`` otherwise
adds to them); and llamadiff's options
under their own names (``block_length``, ``steps``, ``strategy``, ``threshold``, ``top_k``, ...:
every ``GenerationConfig`` field that has a command-line flag). Unknown fields, bad values and
prompts longer than the context are answered 400 with an OpenAI-style error body; a full
queue 503; a missing or wrong API key (``--api-key``) 401. A client that disconnects cancels
its request. Built on FastAPI and uvicorn (the web stack of llama-cpp-python's server).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any, Dict, List, Optional, Union

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, create_model
except ImportError as exc:       # the optional extra is missing
    raise ImportError("the llamadiff server needs its optional extra: pip install \"llamadiff[server]\" "
                      f"(FastAPI and uvicorn); missing: {exc.name}") from None

from llamadiff.chat import check_template
from llamadiff.errors import ChatTemplateError, LlamaDiffError
from llamadiff.config import MAX_STOP_CHARS, MAX_STOPS, _int_argument
from llamadiff.results import GenerationResult
from llamadiff.serving import AboveLimitError, Batcher, BatcherClosedError, QueueFullError

__all__ = ["create_app", "serve"]

# OpenAI's fields that map onto ours (the rest of ours keep their names)
_OPENAI_NAMES = {"max_new_tokens", "temperature", "top_p", "stop", "seed"}
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "interrupted": "stop"}


def _diffusion_fields() -> dict:
    """llamadiff's own request fields, from GenerationConfig's declarations (stated once)."""
    from llamadiff.config import option_fields

    fields: Dict[str, Any] = {}
    for f in option_fields():
        if f.name in _OPENAI_NAMES:
            continue
        meta = f.metadata
        if meta["cli"] == "flag":
            kind = bool
        elif meta["bounds"] is not None:
            kind = float
        elif meta["minimum"] is not None:
            kind = int
        else:
            kind = str
        fields[f.name] = (Optional[kind], Field(None, description=meta["help"]))
    fields["cache"] = (Optional[Union[bool, str]], Field(None, description="block diffusion: true / false; "
                                                          "full diffusion: none, prefix or dual"))
    return fields


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None     # the newer name of max_tokens
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[_StreamOptions] = None
    n: int = 1
    user: Optional[str] = None
    # accepted at their neutral values only (clients send them by default)
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[Dict[str, float]] = None
    logprobs: Optional[Union[bool, int]] = None
    # llama.cpp's server convention: go on past the model's end-of-generation tokens
    ignore_eos: bool = False


_Diffusion = create_model("DiffusionOptions", __base__=_Base, **_diffusion_fields())


class CompletionRequest(_Diffusion):
    prompt: Union[str, List[int], List[str]]
    echo: bool = False


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: Optional[Union[str, List[_TextPart]]] = None
    name: Optional[str] = None

    def as_dict(self) -> dict:
        """role + text content (text parts joined; other part types refused)."""
        content = self.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text":
                    raise _HTTPError(400, f"content parts of type {part.type!r} are not supported (text only)",
                                     param="messages")
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class ChatRequest(_Diffusion):
    messages: List[ChatMessage]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def _error_body(message: str, kind: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _options(body: _Base, eog: list) -> dict:
    """Our generation options from a request body."""
    if body.n != 1:
        raise _HTTPError(400, "n must be 1: each request generates one completion", param="n")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name) not in (None, 0):
            raise _HTTPError(400, f"{name} is not supported (diffusion decoding has no such penalty)", param=name)
    if body.logit_bias:
        raise _HTTPError(400, "logit_bias is not supported", param="logit_bias")
    if body.logprobs:
        raise _HTTPError(400, "logprobs are not supported", param="logprobs")
    if getattr(body, "echo", False):
        raise _HTTPError(400, "echo is not supported", param="echo")
    if body.stream_options is not None and not body.stream:
        raise _HTTPError(400, "stream_options needs stream: true", param="stream_options")
    opts = {name: value for name, value in body.model_dump(exclude_unset=True).items()
            if name not in _Base.model_fields and name not in ("prompt", "messages", "echo") and value is not None}
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    if max_tokens is not None:
        opts["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed"):
        value = getattr(body, name)
        if value is not None:
            opts[name] = value
    # OpenAI's stop sequences come on top of the model's end of generation (unless ignore_eos)
    stops = [] if body.stop is None else ([body.stop] if isinstance(body.stop, str) else list(body.stop))
    if body.stop is not None or body.ignore_eos:
        opts["stop"] = stops + ([] if body.ignore_eos else list(eog))
        if not opts["stop"]:
            opts["stop"] = []        # nothing stops it: max_tokens does
    return opts


def _usage(result: GenerationResult) -> dict:
    n_prompt, n_gen = len(result.prompt_tokens), len(result.tokens)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen}


# What one request may ask of the server (docs/RELIABILITY.md, "Hostile clients"); each is a
# serve() argument and a command-line flag, and GET /v1/models states them.
MAX_TOKENS = 1024            # generated tokens per request
MAX_STEPS = 1024             # denoising steps per request (full diffusion: all of them)
READ_TIMEOUT = 10.0          # seconds for a request's headers, and again for its body
BODY_BYTES_PER_TOKEN = 64    # max_request_bytes = 64 KiB + this x n_ctx (a prompt that fits, JSON-escaped)


def default_max_request_bytes(n_ctx: int) -> int:
    """The default request-size limit: room for a prompt as long as the context, escaped."""
    return 65536 + BODY_BYTES_PER_TOKEN * int(n_ctx)


def _json_error(status: int, message: str, code: str) -> tuple:
    body = json.dumps(_error_body(message, "invalid_request_error", code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return status, headers, body


class _Refused(BaseException):
    # a BaseException: FastAPI turns any Exception raised while it reads a body into its own 400
    # ("error parsing the body"); this one must reach the middleware
    def __init__(self, answer):
        self.answer = answer


class _RequestLimits:
    """ASGI middleware: a request body larger than ``max_bytes`` is refused with 413 before it
    is read (its Content-Length) or as soon as it grows past it (chunked); a body that does not
    arrive within ``timeout`` seconds ends with 408. Both close the connection."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        if scope.get("method") == "POST" and b"content-type" not in headers:
            # a client that names no content type (curl -d, some scripts) sends JSON all the same
            scope = dict(scope, headers=[*scope.get("headers", ()), (b"content-type", b"application/json")])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > self.max_bytes:
                return await self._answer(send, *_json_error(
                    413, f"the request body is {declared:,} bytes; this server takes at most "
                         f"{self.max_bytes:,} (--max-request-bytes)", "request_too_large"))
        started, received, complete = False, 0, False
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def limited_receive():
            nonlocal received, complete
            if complete:                # the body is in: later reads wait for a disconnect
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except asyncio.TimeoutError:
                raise _Refused(_json_error(408, f"the request body did not arrive within {self.timeout:g} s",
                                           "request_timeout")) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise _Refused(_json_error(413, f"the request body is more than {self.max_bytes:,} bytes "
                                                    "(--max-request-bytes)", "request_too_large"))
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _Refused as refused:
            if not started:
                await self._answer(send, *refused.answer)

    @staticmethod
    async def _answer(send, status, headers, body):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _bounded_protocol(base, timeout: float):
    """uvicorn's HTTP protocol class with a bound on the wait for a request's headers: a
    connection that opens, or starts a request, and does not finish its headers within
    ``timeout`` seconds gets a 408 and is closed (slow clients cannot hold the server's
    connections forever; uvicorn bounds only an idle keep-alive connection)."""

    class Bounded(base):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data):
            super().data_received(data)
            if self._between_requests():
                self._arm()                      # a new request's headers are on their way
            else:
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self):
            cycle = getattr(self, "cycle", None)
            return cycle is None or cycle.response_complete

        def _arm(self):
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout, self._expired)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self):
            self._header_timer = None
            if not self._between_requests() or self.transport.is_closing():
                return
            status, headers, body = _json_error(408, f"the request headers did not arrive within {timeout:g} s",
                                                "request_timeout")
            head = b"HTTP/1.1 408 Request Timeout\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            self.transport.write(head + b"\r\n" + body)
            self.transport.close()

    return Bounded


def _check_key(api_key: Optional[str]) -> None:
    if api_key is None:
        return
    if not isinstance(api_key, str) or not api_key or not api_key.isascii() or \
            any(c.isspace() or not c.isprintable() for c in api_key):
        raise ValueError("the API key must be printable ASCII without spaces: HTTP drops the spaces around a "
                         "header's value (RFC 9110, 5.5), so a key could not depend on them, and a bearer "
                         "token is ASCII (RFC 6750, 2.1)")


def _check_settings(api_key, max_tokens, max_steps, max_request_bytes, read_timeout, max_block_length) -> None:
    """The server's own settings (None: the default, decided with the model), checked before a
    model is loaded."""
    _check_key(api_key)
    for label, value in (("max_tokens", max_tokens), ("max_steps", max_steps),
                         ("max_request_bytes", max_request_bytes), ("max_block_length", max_block_length)):
        if value is not None:
            _int_argument(label, value, 1)
    if not (isinstance(read_timeout, (int, float)) and 0 < read_timeout <= 3600):
        raise ValueError(f"read_timeout must be a number of seconds in (0, 3600], got {read_timeout!r}")


def create_app(batcher: Batcher, *, model_name: Optional[str] = None, api_key: Optional[str] = None,
               close_batcher: bool = False, max_block_length: Optional[int] = None,
               max_tokens: int = MAX_TOKENS, max_steps: int = MAX_STEPS,
               max_request_bytes: Optional[int] = None, read_timeout: float = READ_TIMEOUT) -> FastAPI:
    """The FastAPI application serving ``batcher``. ``close_batcher``: the app's shutdown closes
    the batcher (requests still running are cancelled); else the caller closes it.
    ``max_block_length``: the largest block length a request may ask for (a step decodes
    2 x block length tokens per request; default: 64, or the model's trained one if larger).
    ``max_tokens`` / ``max_steps``: the most tokens and denoising steps one request may ask for;
    ``max_request_bytes``: the largest request body (default ``default_max_request_bytes`` of
    the batcher's n_ctx); ``read_timeout``: seconds a request's body may take to arrive."""
    import contextlib
    import hmac
    import os

    _check_settings(api_key, max_tokens, max_steps, max_request_bytes, read_timeout, max_block_length)
    eog = sorted(batcher.model.eog_token_ids)
    if max_block_length is None:
        max_block_length = max(64, batcher.generator.default_block_length)
    if max_request_bytes is None:
        max_request_bytes = default_max_request_bytes(batcher.generator.n_ctx)
    limits = {"max_tokens": max_tokens, "max_steps": max_steps, "max_block_length": max_block_length,
              "max_request_bytes": max_request_bytes, "read_timeout_s": read_timeout,
              "max_stops": MAX_STOPS, "max_stop_chars": MAX_STOP_CHARS}

    name = model_name or os.path.basename(batcher.model.path)
    created = int(time.time())
    # a template that does not compile is the server's fault, found now rather than per request
    broken_template = None
    if batcher.generator.chat_template is not None:
        try:
            check_template(batcher.generator.chat_template)
        except (ChatTemplateError, TypeError) as exc:
            broken_template = str(exc)
            print(f"llamadiff serve: warning: chat completions are off: {exc}", file=sys.stderr, flush=True)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if close_batcher:
            running, queued = batcher.running, batcher.queued
            await asyncio.to_thread(batcher.close, True, 30)
            print(f"llamadiff: stopped ({running} running and {queued} queued requests cancelled; "
                  f"{batcher.stats['completed']} completed)", file=sys.stderr, flush=True)

    # with a key, the API's description is behind it too: /openapi.json asks for the key, and the
    # /docs and /redoc pages (which fetch it without one) are off; /health stays open
    docs = {} if api_key is None else dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="llamadiff", description="OpenAI-compatible API for diffusion language models",
                  lifespan=lifespan, **docs)
    app.add_middleware(_RequestLimits, max_bytes=max_request_bytes, timeout=read_timeout)

    @app.exception_handler(_HTTPError)
    async def _http_error(request: Request, exc: _HTTPError):
        return JSONResponse(_error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException):
        # routing's own errors (404, 405) in OpenAI's error shape too
        if exc.status_code == 404:
            message = (f"no such endpoint: {request.method} {request.url.path} (this server has /v1/completions, "
                       "/v1/chat/completions, /v1/models and /health)")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(_error_body(message, "invalid_request_error", code=code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return JSONResponse(_error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        message = first.get("msg", "invalid request")
        if first.get("type") == "extra_forbidden":
            import difflib
            known = sorted(ChatRequest.model_fields if "/chat/" in request.url.path else CompletionRequest.model_fields)
            close = difflib.get_close_matches(loc[-1] if loc else where, known, n=1, cutoff=0.6)
            message = f"unknown field {where!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
            where = ""
        elif where:
            message = f"{where}: {message}"
        return JSONResponse(_error_body(message, "invalid_request_error", where or None), status_code=400)

    expected = None if api_key is None else api_key.encode()

    def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # the scheme case-insensitively (RFC 9110, 11.1), the key byte for byte, in constant time
        given = token.encode("utf-8", "surrogateescape")
        if not (hmac.compare_digest(given, expected) and scheme.lower() == "bearer"):
            raise _HTTPError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                             "authentication_error", code="invalid_api_key")

    # what one request may ask for; a model default above a cap is held to it (Batcher.submit)
    caps = {"block_length": max_block_length, "max_new_tokens": max_tokens, "steps": max_steps}
    flags = {"block_length": "--max-block-length", "max_new_tokens": "--max-tokens", "steps": "--max-steps"}

    async def submit(prompt, chat: bool, opts: dict, listener):
        try:
            # tokenising (and templating) a long prompt runs off the event loop
            return await asyncio.to_thread(batcher.submit, prompt, chat=chat, listener=listener, limits=caps, **opts)
        except AboveLimitError as exc:
            shown = "max_tokens" if exc.option == "max_new_tokens" else exc.option
            raise _HTTPError(400, f"{shown}={exc.value} is above this server's limit of {exc.limit} "
                                  f"({flags[exc.option]})", param=shown, code="above_limit")
        except QueueFullError as exc:
            raise _HTTPError(503, f"the server is busy: {exc}", "server_error", code="queue_full")
        except BatcherClosedError as exc:
            raise _HTTPError(503, str(exc), "server_error", code="shutting_down")
        except (ValueError, TypeError, LlamaDiffError) as exc:
            # the API's names: a request says max_tokens where the library says max_new_tokens
            raise _HTTPError(400, str(exc).replace("max_new_tokens", "max_tokens"))

    async def run(http: Request, prompt, chat: bool, opts: dict, stream: bool, include_usage: bool,
                  kind: str):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        finished = loop.create_future()

        def listener(item):                  # called in the batcher's thread
            try:
                if stream:
                    loop.call_soon_threadsafe(events.put_nowait, item)
                elif isinstance(item, GenerationResult):     # one wake-up per request
                    loop.call_soon_threadsafe(finished.set_result, item)
            except RuntimeError:             # the event loop is gone (shutdown): nobody listens
                pass

        job = await submit(prompt, chat, opts, listener)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        stamp = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"
        if not stream:
            try:
                while not finished.done():
                    await asyncio.wait((finished,), timeout=1.0)
                    if not finished.done() and await http.is_disconnected():
                        job.cancel()          # the client went away: free the slot
            finally:
                if not job.done():
                    job.cancel()
            result = finished.result()
            if result.stop_reason == "error":
                raise _HTTPError(500, result.error or "generation failed", "server_error")
            if result.stop_reason in ("cancelled", "interrupted"):
                raise _HTTPError(503, "the request was cancelled (the server is shutting down)",
                                 "server_error", code="cancelled")
            finish = _FINISH.get(result.stop_reason, "stop")
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                          "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": result.text, "finish_reason": finish, "logprobs": None}
            return JSONResponse({"id": rid, "object": obj, "created": stamp, "model": name,
                                 "choices": [choice], "usage": _usage(result)})

        chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(choice: dict, usage=None) -> str:
            payload = {"id": rid, "object": chunk_obj, "created": stamp, "model": name,
                       "choices": [choice] if choice else []}
            if include_usage:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n"

        def choice(text: str, finish: Optional[str], first: bool = False) -> dict:
            if kind == "chat":
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        async def events_stream():
            first = True
            try:
                while True:
                    item = await events.get()
                    if isinstance(item, GenerationResult):
                        if item.stop_reason in ("error", "cancelled", "interrupted"):
                            message = (item.error or "generation failed" if item.stop_reason == "error"
                                       else "the request was cancelled (the server is shutting down)")
                            yield f"data: {json.dumps(_error_body(message, 'server_error', code=item.stop_reason))}\n\n"
                        elif include_usage:
                            yield event({}, usage=_usage(item))
                        yield "data: [DONE]\n\n"
                        return
                    if item.stop_reason in ("error", "cancelled", "interrupted"):
                        continue
                    finish = _FINISH.get(item.stop_reason) if item.stop_reason else None
                    if item.text or finish or first:
                        yield event(choice(item.text, finish, first))
                        first = False
            finally:
                if not job.done():
                    job.cancel()              # the client went away: free the slot

        return StreamingResponse(events_stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        if not batcher.alive:
            return JSONResponse({"status": "unavailable", "model": name}, status_code=503)
        return {"status": "ok", "model": name, "running": batcher.running, "queued": batcher.queued,
                "completed": batcher.stats["completed"], "cancelled": batcher.stats["cancelled"],
                "rejected": batcher.stats["rejected"]}

    if api_key is not None:
        @app.get("/openapi.json", dependencies=[Depends(authorize)], include_in_schema=False)
        async def openapi():
            return JSONResponse(app.openapi())

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "llamadiff", "limits": limits}]}

    def served(body) -> None:
        # a client naming another model gets OpenAI's answer for one it does not have (404)
        if body.model is not None and body.model != name:
            raise _HTTPError(404, f"the model {body.model!r} is not served here; this server serves {name!r} "
                                  "(GET /v1/models)", param="model", code="model_not_found")

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, http: Request):
        served(body)
        opts = _options(body, eog)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise _HTTPError(400, "one prompt per request (a list of one string is accepted)", param="prompt")
            prompt = prompt[0]
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await run(http, prompt, False, opts, body.stream, include_usage, "text")

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatRequest, http: Request):
        served(body)
        if not body.messages:
            raise _HTTPError(400, "messages is empty", param="messages")
        if batcher.generator.chat_template is None:
            raise _HTTPError(400, f"this model ({name}) has no chat template: use /v1/completions",
                             param="messages", code="no_chat_template")
        if broken_template is not None:
            raise _HTTPError(500, f"the server's chat template is broken: {broken_template}", kind="server_error",
                             code="broken_chat_template")
        opts = _options(body, eog)
        messages = [m.as_dict() for m in body.messages]
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await run(http, messages, False, opts, body.stream, include_usage, "chat")

    return app


DRAIN_SECONDS = 5.0


def _draining_server(config, batcher: Batcher, drain_seconds: float):
    """uvicorn's Server, with our shutdown first: at SIGINT / SIGTERM the batcher takes no new
    requests, gives those queued and running ``drain_seconds`` to finish, then cancels the rest,
    so that every request ends with its documented answer (the JSON error, or an SSE error event
    and ``[DONE]``) before uvicorn's own graceful-shutdown timeout would cut connections."""
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        draining = None

        def handle_exit(self, sig, frame):
            if self.draining is None:
                def drain():
                    batcher.close(cancel=False, timeout=drain_seconds)
                    batcher.close(cancel=True, timeout=30)
                self.draining = threading.Thread(target=drain, name="llamadiff-drain", daemon=True)
                self.draining.start()
            super().handle_exit(sig, frame)

    return Server(config)


def serve(model=None, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          n_parallel: int = 16, max_queue: int = 64, n_ctx: int = 2048, n_threads: Optional[int] = None,
          n_gpu_layers: int = 0, model_name: Optional[str] = None, max_block_length: Optional[int] = None,
          chat_template: Optional[str] = None, log_level: str = "info",
          drain_seconds: float = DRAIN_SECONDS, max_tokens: int = MAX_TOKENS, max_steps: int = MAX_STEPS,
          max_request_bytes: Optional[int] = None, read_timeout: float = READ_TIMEOUT) -> None:
    """Run the server until SIGINT / SIGTERM: new requests are refused (503), those queued and
    in flight get ``drain_seconds`` to finish, then the rest are cancelled -- each answered with
    the documented JSON error, a stream with an SSE error event and ``[DONE]`` -- and the model
    is freed (uvicorn then ends the process with the signal it received, as its convention is)."""

    import uvicorn

    if not (isinstance(drain_seconds, (int, float)) and 0 <= drain_seconds <= 3600):
        raise ValueError(f"drain_seconds must be a number of seconds in [0, 3600], got {drain_seconds!r}")
    # before the model loads
    _check_settings(api_key, max_tokens, max_steps, max_request_bytes, read_timeout, max_block_length)

    # the event loop and the batcher thread take turns on the GIL; hand it over sooner than
    # Python's default 5 ms, or each request waits for the other side's turn to expire
    sys.setswitchinterval(0.0005)
    batcher = Batcher(model, n_parallel=n_parallel, max_queue=max_queue, n_ctx=n_ctx, n_threads=n_threads,
                    n_gpu_layers=n_gpu_layers, chat_template=chat_template)
    m = batcher.model
    print(f"llamadiff serve: {m.path} ({m.architecture}, {m.family} diffusion, {m.n_params / 1e6:.1f}M parameters) "
          f"as {model_name or os.path.basename(m.path)!r}, {n_parallel} slots, n_ctx {n_ctx}, on "
          f"http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        app = create_app(batcher, model_name=model_name, api_key=api_key, close_batcher=True,
                         max_block_length=max_block_length, max_tokens=max_tokens, max_steps=max_steps,
                         max_request_bytes=max_request_bytes, read_timeout=read_timeout)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                timeout_graceful_shutdown=drain_seconds + 10)
        config.load()                   # resolves the HTTP protocol class, bounded below
        config.http_protocol_class = _bounded_protocol(config.http_protocol_class, read_timeout)
        _draining_server(config, batcher, drain_seconds).run()
    finally:
        batcher.close(cancel=True, timeout=30)

"""An OpenAI-compatible HTTP server over a ``System``: ``create_app(system) -> FastAPI`` (docs/serving.md).

The question the agents see is exactly the text the client sent: nothing is appended or prepended.
A chat request holds exactly one user message (no system messages, no earlier turns: each agent has its
own role prompt, and the method answers one question at a time); anything else is a 400 that says so.
``usage`` is measured, not estimated: ``completion_tokens`` counts every token any agent generated (in
latent mode, only the decoder's final answer), ``prompt_tokens`` the positions the decoding agent read in
its final answer step that it did not write itself (its prompt, latent thoughts spliced into its slots,
text hand-offs, tool results), with ``prompt_tokens_details.cached_tokens`` the part of its prompt read
from the KV cache of an earlier round (the prompt prefix, ``recursivemas.prefix``), as OpenAI reports it. The ``recursivemas`` object adds the per-agent, per-round accounting.

``System.run`` is not thread-safe, so one worker thread runs every request; greedy requests with the same
settings that queue up while it is busy are run together as one batch (up to the system's batch size).
"""

from __future__ import annotations

import difflib
import json
import secrets
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recursivemas.system import MODES, RunResult, System

# Standard OpenAI fields this server accepts only at their neutral value: anything else is a 400, never
# silently ignored. ``user`` is pure metadata and always accepted.
_NEUTRAL: dict[str, tuple] = {
    "stop": (None, "", []),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}
_EXTENSIONS = ("mode", "rounds", "latent_steps")
_COMMON = ("model", "max_tokens", "temperature", "top_p", "seed", "n", "stream", "stream_options", "user", *_EXTENSIONS)
CHAT_FIELDS = ("messages", "max_completion_tokens", *_COMMON, *_NEUTRAL)
COMPLETION_FIELDS = ("prompt", *_COMMON, *_NEUTRAL)


class APIError(Exception):
    """A request the server cannot answer as sent; rendered as OpenAI-style error JSON."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass(frozen=True)
class Settings:
    """Everything a request sets for one ``System.run`` call."""

    mode: str
    rounds: int | None
    latent_steps: int | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None  # the seed sampling used; None for greedy decoding

    def batch_key(self) -> tuple | None:
        """Requests with equal keys may share a batch; sampling requests never do (their seed is theirs)."""
        if self.temperature > 0:
            return None
        return (self.mode, self.rounds, self.latent_steps, self.max_tokens)


@dataclass
class _Job:
    questions: list[str]
    settings: Settings
    future: Future


class Batcher:
    """One worker thread owns the system; concurrent compatible greedy requests are run as one batch."""

    def __init__(self, system: System, max_batch: int | None = None) -> None:
        self.system, self.max_batch = system, max_batch or system.config.batch_size
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._busy = threading.Lock()  # held while the system runs (tests hold it to force a batch)
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, questions: list[str], settings: Settings) -> tuple[list[RunResult], int]:
        """Run ``questions``; returns their results and how many questions ran in the same batch."""
        job = _Job(questions, settings, Future())
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="recursivemas-worker", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job.future.result()

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> list[_Job]:
        """The oldest job and every later job that may share its batch, up to ``max_batch`` questions."""
        first = self._jobs.pop(0)
        taken, size, key = [first], len(first.questions), first.settings.batch_key()
        if key is not None:
            for job in list(self._jobs):
                if job.settings.batch_key() == key and size + len(job.questions) <= self.max_batch:
                    self._jobs.remove(job)
                    taken.append(job)
                    size += len(job.questions)
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed and not self._jobs:
                    return
            with self._busy:
                with self._cond:
                    jobs = self._take()
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        s = jobs[0].settings
        questions = [q for job in jobs for q in job.questions]
        generation = replace(self.system.config.generation, max_new_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p)
        try:
            results = self.system.run(questions, mode=s.mode, rounds=s.rounds, latent_steps=s.latent_steps, seed=s.seed, generation=generation)
        except BaseException as err:  # every waiting request gets the error, the worker lives on
            for job in jobs:
                job.future.set_exception(err)
            return
        start = 0
        for job in jobs:
            job.future.set_result((results[start : start + len(job.questions)], len(questions)))
            start += len(job.questions)


# ---------------------------------------------------------------- request parsing


def _check_fields(body: dict, allowed: tuple[str, ...]) -> None:
    for key, value in body.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " See docs/serving.md for the supported fields."
            raise APIError(f"unknown field {key!r}.{hint}", key)
        if key in _NEUTRAL and value not in _NEUTRAL[key]:
            raise APIError(f"{key!r} is not supported by this server; remove it (the decoder stops at its "
                           f"end-of-sequence token or after max_tokens, and returns text only)", key)


def _int(body: dict, key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(f"{key!r} must be an integer, got {value!r}", key)
    if value < minimum:
        raise APIError(f"{key!r} must be >= {minimum}, got {value}", key)
    return value


def _number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(f"{key!r} must be a number, got {value!r}", key)
    return float(value)


def _settings(body: dict, system: System) -> Settings:
    """Validate the shared fields; the system file supplies whatever the request leaves out."""
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise APIError(f"'n' must be 1: this server returns one answer per question, got n={n}; send n separate requests", "n")
    mode = body.get("mode", "latent")
    if mode not in MODES:
        raise APIError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}", "mode")
    rounds = _int(body, "rounds", 1)
    latent_steps = _int(body, "latent_steps", 0)
    max_tokens = _int(body, "max_tokens", 1)
    if "max_completion_tokens" in body:
        mct = _int(body, "max_completion_tokens", 1)
        if max_tokens is not None and mct is not None and mct != max_tokens:
            raise APIError(f"'max_tokens' ({max_tokens}) and 'max_completion_tokens' ({mct}) disagree; send one of them",
                           "max_completion_tokens")
        max_tokens = mct if mct is not None else max_tokens
    gen = system.config.generation
    temperature = _number(body, "temperature")
    temperature = gen.temperature if temperature is None else temperature
    if temperature < 0:
        raise APIError(f"'temperature' must be >= 0 (0 = greedy), got {temperature}", "temperature")
    top_p = _number(body, "top_p")
    top_p = gen.top_p if top_p is None else top_p
    if not 0 < top_p <= 1:
        raise APIError(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    seed = _int(body, "seed", 0)
    if temperature > 0 and seed is None:
        seed = secrets.randbelow(2**31)  # a fresh draw per request, reported back so it can be replayed
    if temperature == 0:
        seed = None
    return Settings(mode, rounds, latent_steps, max_tokens or gen.max_new_tokens, temperature, top_p, seed)


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise APIError(f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise APIError("'stream_options' is only allowed with 'stream': true", "stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise APIError(f"'stream_options' supports only {{'include_usage': bool}}, got {options!r}", "stream_options")
    return bool(stream), bool((options or {}).get("include_usage"))


def _content_text(content: Any, param: str) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts joined as sent."""
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(f"{param}[{i}] must be a text part {{'type': 'text', 'text': '...'}}; "
                               "this server takes text only", f"{param}[{i}]")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise APIError(f"{param} must be a string, got {type(content).__name__}", param)
    if not content.strip():
        raise APIError(f"{param} is empty; put the question in the user message", param)
    return content


def _chat_question(messages: Any) -> str:
    """Exactly one user message: its content is the question, unchanged."""
    if messages is None:
        raise APIError("missing 'messages'; send [{\"role\": \"user\", \"content\": \"your question\"}]", "messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("'messages' must be a non-empty list holding one user message", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise APIError(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role = message["role"]
        if role in ("system", "developer"):
            raise APIError(f"messages[{i}] is a {role} message; they are not accepted because every agent has its "
                           "own role prompt in the system file. Remove it, or edit the agents' system_prompt there",
                           f"messages[{i}].role")
        if role != "user":
            raise APIError(f"messages[{i}] has role {role!r}; a request holds exactly one user message (each "
                           "question is answered afresh, with no conversation history). Put any context you "
                           "want the agents to see into that one user message", f"messages[{i}].role")
    if len(messages) > 1:
        raise APIError(f"'messages' holds {len(messages)} user messages; send exactly one (the question). Put any "
                       "context into that message's content", "messages")
    return _content_text(messages[0].get("content"), "messages[0].content")


def _prompts(prompt: Any) -> list[str]:
    if prompt is None:
        raise APIError("missing 'prompt'; send a question string or a list of question strings", "prompt")
    if isinstance(prompt, str):
        return [_content_text(prompt, "prompt")]
    if not isinstance(prompt, list) or not prompt:
        raise APIError("'prompt' must be a string or a non-empty list of strings", "prompt")
    if any(not isinstance(p, str) for p in prompt):
        raise APIError("'prompt' must hold text; token-id prompts are not supported (each agent has its own "
                       "tokenizer), send the question as a string", "prompt")
    return [_content_text(p, f"prompt[{i}]") for i, p in enumerate(prompt)]


# ---------------------------------------------------------------- responses


def answer_step(result: RunResult):
    """The decoding agent's final answer step."""
    return [s for s in result.usage.steps if s.action == "answer"][-1]


def prompt_tokens(result: RunResult) -> int:
    """Positions the decoder read in its answer step that it did not generate: what it encoded there plus its
    prompt prefix read from the cache of an earlier round; every sampled token but the last is fed back and
    counted as an input position, so those are subtracted."""
    step = answer_step(result)
    return max(step.input_positions + step.cached_positions - max(step.generated_tokens - 1, 0), 0)


def finish_reason(result: RunResult, settings: Settings) -> str:
    """``length`` when the answer used its whole ``max_tokens`` budget, else ``stop``."""
    return "length" if answer_step(result).generated_tokens >= settings.max_tokens else "stop"


def usage_of(results: list[RunResult]) -> dict[str, int]:
    prompt = sum(prompt_tokens(r) for r in results)
    completion = sum(r.usage.generated_tokens for r in results)
    cached = sum(answer_step(r).cached_positions for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def extension_of(results: list[RunResult], settings: Settings, batch: int) -> dict[str, Any]:
    """The per-agent, per-round accounting; ``index`` ties each step to its prompt in a batch request."""
    totals = {k: sum(r.usage.totals()[k] for r in results) for k in results[0].usage.totals()}
    return {
        "mode": settings.mode,
        "rounds": results[0].rounds,
        "latent_steps": results[0].latent_steps,
        "seed": settings.seed,
        "batch": batch,
        "forward_calls": int(totals["forward_calls"]),
        "wall_time_s": totals["wall_time_s"],
        "totals": totals,
        "steps": [{"index": i, **asdict(s)} for i, r in enumerate(results) for s in r.usage.steps],
        "tool_calls": [{"index": i, **c} for i, r in enumerate(results) for c in r.tool_calls],
    }


def _sse(chunks: list[dict]) -> StreamingResponse:
    def events() -> Iterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# ---------------------------------------------------------------- the app


def create_app(system: System, model_name: str | None = None, max_batch: int | None = None) -> FastAPI:
    """An OpenAI-compatible app answering with ``system``; ``model_name`` defaults to the system's name."""
    name = model_name or system.config.name
    batcher = Batcher(system, max_batch)
    created = int(time.time())
    app = FastAPI(title=f"recursivemas: {name}", version="1", lifespan=_lifespan(batcher))
    app.state.system, app.state.batcher, app.state.model_name = system, batcher, name

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        routes = "GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions"
        message = f"{request.method} {request.url.path}: {err.detail}; this server has {routes}"
        return APIError(message, status=err.status_code).response()

    async def _body(request: Request, allowed: tuple[str, ...]) -> dict:
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(f"the request body is not valid JSON ({err}); send a JSON object") from err
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        model = body.get("model")
        if model is None:
            raise APIError(f"missing 'model'; this server serves {name!r} (GET /v1/models)", "model")
        if not isinstance(model, str) or model != name:
            raise APIError(f"model {model!r} does not exist here; this server serves {name!r} (GET /v1/models)",
                           "model", status=404, code="model_not_found")
        _check_fields(body, allowed)
        return body

    def _run(questions: list[str], settings: Settings) -> tuple[list[RunResult], int]:
        try:
            return batcher.submit(questions, settings)
        except ValueError as err:  # a setting the engine rejects
            raise APIError(str(err)) from err
        except Exception as err:
            raise APIError(f"the system failed: {type(err).__name__}: {err}", status=500, kind="server_error") from err

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name, "decoder": system.graph.decoder, "agents": list(system.agents),
                "pending": batcher.pending()}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [_model_card(name, created, system)]}

    @app.get("/v1/models/{model_id}")
    def model(model_id: str) -> JSONResponse:
        if model_id != name:
            return APIError(f"model {model_id!r} does not exist here; this server serves {name!r}", "model",
                            status=404, code="model_not_found").response()
        return JSONResponse(_model_card(name, created, system))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _body(request, CHAT_FIELDS)
        question = _chat_question(body.get("messages"))
        settings, (stream, include_usage) = _settings(body, system), _stream_flags(body)
        results, batch = await _in_thread(_run, [question], settings)
        result, ident, now = results[0], f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage, extension, reason = usage_of(results), extension_of(results, settings, batch), finish_reason(result, settings)
        head = {"id": ident, "created": now, "model": name}
        if not stream:
            message = {"role": "assistant", "content": result.text}
            choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
            return {**head, "object": "chat.completion", "choices": [choice], "usage": usage, "recursivemas": extension}
        chunk = {**head, "object": "chat.completion.chunk"}
        chunks = [
            {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": result.text}, "finish_reason": None}]},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]},
        ]
        if include_usage:
            chunks.append({**chunk, "choices": [], "usage": usage, "recursivemas": extension})
        return _sse(chunks)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _body(request, COMPLETION_FIELDS)
        questions = _prompts(body.get("prompt"))
        settings, (stream, include_usage) = _settings(body, system), _stream_flags(body)
        results, batch = await _in_thread(_run, questions, settings)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name, "object": "text_completion"}
        choices = [{"index": i, "text": r.text, "finish_reason": finish_reason(r, settings), "logprobs": None}
                   for i, r in enumerate(results)]
        usage, extension = usage_of(results), extension_of(results, settings, batch)
        if not stream:
            return {**head, "choices": choices, "usage": usage, "recursivemas": extension}
        chunks = [{**head, "choices": [c]} for c in choices]
        if include_usage:
            chunks.append({**head, "choices": [], "usage": usage, "recursivemas": extension})
        return _sse(chunks)

    return app


async def _in_thread(fn, *args):
    """Wait for the worker without blocking the event loop (health checks stay responsive)."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args)


def _model_card(name: str, created: int, system: System) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "recursivemas",
            "recursivemas": {"agents": list(system.agents), "decoder": system.graph.decoder,
                             "rounds": system.config.rounds, "latent_steps": system.config.latent_steps,
                             "modes": list(MODES)}}


def _lifespan(batcher: Batcher):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    return lifespan

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
A batch that fails is rerun request by request, so one bad request fails alone.

Hostile input is refused before it reaches the engine (``Limits``): a body over the size limit (413), a
non-JSON content type (415), a missing or wrong API key when one is set (401), JSON with NaN, huge numbers,
deep nesting or lone surrogates, and any value outside its range, including prompts and budgets that
would run past an agent's position limit (400, naming the field).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recursivemas.agent import Slot
from recursivemas.slots import Input
from recursivemas.kv import position_limit
from recursivemas.validation import close_match
from recursivemas.system import MODES, Cancelled, RunResult, System

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
_EXTENSIONS = ("mode", "rounds", "latent_steps", "fields")
_COMMON = ("model", "max_tokens", "temperature", "top_p", "seed", "n", "stream", "stream_options", "user", *_EXTENSIONS)
CHAT_FIELDS = ("messages", "max_completion_tokens", *_COMMON, *_NEUTRAL)
COMPLETION_FIELDS = ("prompt", *_COMMON, *_NEUTRAL)


class APIError(Exception):
    """A request the server cannot answer as sent; rendered as OpenAI-style error JSON."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        safe = lambda text: text if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")  # noqa: E731
        body = {"error": {"message": safe(self.message), "type": self.kind, "param": safe(self.param), "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on what one request may ask for (``recursivemas serve`` flags set the first three)."""

    max_body_bytes: int = 1 << 20  # 1 MiB
    max_rounds: int = 16
    max_latent_steps: int = 256
    max_prompts: int = 64  # questions in one /v1/completions request
    max_json_depth: int = 16  # the deepest valid request nests 5 levels (messages[0].content[0].text)
    max_int_digits: int = 20
    min_temperature: float = 1e-3  # below it (but > 0) is refused: send 0 for greedy
    max_temperature: float = 2.0


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
    questions: list[Input]
    settings: Settings
    future: Future
    cancelled: bool = False  # its client went away: drop it if it has not started


class Batcher:
    """One worker thread owns the system; concurrent compatible greedy requests are run as one batch."""

    def __init__(self, system: System, max_batch: int | None = None) -> None:
        self.system, self.max_batch = system, max_batch or system.config.batch_size
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._busy = threading.Lock()  # held while the system runs (tests hold it to force a batch)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.dropped = 0  # jobs dropped because their client disconnected before they ran
        self.retried = 0  # failed batches rerun request by request

    def enqueue(self, questions: list[Input], settings: Settings) -> _Job:
        """Queue ``questions``; the job's future gets ``(results, batch size)`` or the run's error."""
        job = _Job(questions, settings, Future())
        with self._cond:
            if self._closed:
                raise APIError("the server is shutting down; retry on another instance", status=503, kind="server_error")
            self._jobs.append(job)
            if self._thread is None:
                # a daemon: a run still going at exit does not keep the process alive
                self._thread = threading.Thread(target=self._loop, name="recursivemas-worker", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job

    def submit(self, questions: list[Input], settings: Settings) -> tuple[list[RunResult], int]:
        """Run ``questions``; returns their results and how many questions ran in the same batch."""
        return self.enqueue(questions, settings).future.result()

    def cancel(self, job: _Job) -> bool:
        """Drop ``job`` if it has not started (its client left); True when it was dropped."""
        with self._cond:
            job.cancelled = True
            if job in self._jobs:
                self._jobs.remove(job)
                job.future.cancel()
                self.dropped += 1
                return True
        return False

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    def close(self) -> None:
        """Refuse new jobs and fail the queued ones; a batch already running finishes or dies with the process."""
        with self._cond:
            self._closed = True
            for job in self._jobs:
                job.future.set_exception(APIError("the server shut down before this request ran", status=503, kind="server_error"))
            self._jobs.clear()
            self._cond.notify_all()

    def _take(self) -> list[_Job]:
        """The oldest job and every later job that may share its batch, up to ``max_batch`` questions."""
        if not self._jobs:  # every queued job was dropped while the worker waited for the lock
            return []
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
        for job in jobs:
            if job.cancelled:  # its client left after the job was taken
                job.future.cancel()
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        s = jobs[0].settings
        questions = [q for job in jobs for q in job.questions]
        generation = replace(self.system.config.generation, max_new_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p)
        def abandoned() -> bool:  # stop computing once the server closes or every client of the batch has left
            return self._closed or all(job.cancelled for job in jobs)

        try:
            results = self.system.run(questions, mode=s.mode, rounds=s.rounds, latent_steps=s.latent_steps, seed=s.seed,
                                      generation=generation, should_stop=abandoned)
        except Cancelled as err:
            for job in jobs:
                job.future.set_exception(err)
            return
        except Exception as err:
            if len(jobs) == 1:  # the worker lives on; only this request gets the error
                jobs[0].future.set_exception(err)
                return
            self.retried += 1
            for job in jobs:  # rerun one request at a time, so innocent requests still get their answers
                try:
                    job.future.set_result((self.system.run(job.questions, mode=s.mode, rounds=s.rounds, latent_steps=s.latent_steps,
                                                           seed=s.seed, generation=generation), len(job.questions)))
                except Exception as one:
                    job.future.set_exception(one)
            return
        start = 0
        for job in jobs:
            job.future.set_result((results[start : start + len(job.questions)], len(questions)))
            start += len(job.questions)


# ---------------------------------------------------------------- request parsing


def _check_fields(body: dict, allowed: tuple[str, ...]) -> None:
    for key, value in body.items():
        if key not in allowed:
            close = close_match(key, allowed)
            hint = f" Did you mean {close!r}?" if close else " See docs/serving.md for the supported fields."
            raise APIError(f"unknown field {key!r}.{hint}", key)
        if key in _NEUTRAL and value not in _NEUTRAL[key]:
            raise APIError(f"{key!r} is not supported by this server; remove it (the decoder stops at its "
                           f"end-of-sequence token or after max_tokens, and returns text only)", key)


def _int(body: dict, key: str, minimum: int, maximum: int | None = None, why: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(f"{key!r} must be an integer, got {_short(value)}", key)
    if value < minimum:
        raise APIError(f"{key!r} must be >= {minimum}, got {value}", key)
    if maximum is not None and value > maximum:
        raise APIError(f"{key!r} must be <= {maximum}{why}, got {value}", key)
    return value


def _number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(f"{key!r} must be a number, got {_short(value)}", key)
    if not math.isfinite(value):  # NaN and inf cannot come from JSON, but from Python callers they can
        raise APIError(f"{key!r} must be a finite number, got {value}", key)
    return float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _settings(body: dict, system: System, limits: Limits) -> Settings:
    """Validate the shared fields; the system file supplies whatever the request leaves out."""
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise APIError(f"'n' must be 1: this server returns one answer per question, got n={n}; send n separate requests", "n")
    mode = body.get("mode", "latent")
    if mode not in MODES:
        raise APIError(f"unknown mode {_short(mode)}; choose one of {', '.join(MODES)}", "mode")
    bound = " (this server's limit; its operator can raise it with --max-{})"
    rounds = _int(body, "rounds", 1, limits.max_rounds, bound.format("rounds"))
    latent_steps = _int(body, "latent_steps", 0, limits.max_latent_steps, bound.format("latent-steps"))
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
    if temperature < 0 or temperature > limits.max_temperature:
        raise APIError(f"'temperature' must be in [0, {limits.max_temperature}] (0 = greedy), got {temperature}", "temperature")
    if 0 < temperature < limits.min_temperature:  # logits / t overflows into inf/nan probabilities long before t = 0
        raise APIError(f"'temperature' {temperature} is too small to sample with; send 0 for greedy decoding, or at "
                       f"least {limits.min_temperature}", "temperature")
    top_p = _number(body, "top_p")
    top_p = gen.top_p if top_p is None else top_p
    if not 0 < top_p <= 1:
        raise APIError(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    seed = _int(body, "seed", 0, 2**63 - 1)
    if temperature > 0 and seed is None:
        seed = secrets.randbelow(2**31)  # a fresh draw per request, reported back so it can be replayed
    if temperature == 0:
        seed = None
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError(f"'user' must be a string (an end-user id), got {type(user).__name__}", "user")
    return Settings(mode, rounds, latent_steps, max_tokens or gen.max_new_tokens, temperature, top_p, seed)


def fit_positions(system: System, questions: list[Input], params: list[str], settings: Settings, explicit_max_tokens: bool) -> Settings:
    """Refuse (400) a request whose prompt, latent thoughts or answer would run past an agent's position limit.

    Per agent: its rendered prompt with the question, plus every slot full (``latent_steps`` latents, or a
    text hand-off of ``handoff_max_new_tokens``, counted in the receiver's tokens as an estimate), plus what it
    writes itself (its latent thoughts or hand-off; the decoder's answer). A ``max_tokens`` the request left
    out is cut to what fits instead.
    """
    mode, gen = settings.mode, system.config.generation
    steps = system.config.latent_steps if settings.latent_steps is None else settings.latent_steps
    per_slot = {"latent": steps, "text": gen.handoff_max_new_tokens, "single": 0}[mode]
    own = {"latent": steps, "text": gen.handoff_max_new_tokens, "single": 0}[mode]
    names = [system.graph.decoder] if mode == "single" else list(system.agents)
    max_tokens = settings.max_tokens
    for name in names:
        agent = system.agents[name]
        limit = position_limit(agent.model)
        if limit is None:
            continue
        for question, param in zip(questions, params):
            segments = agent.segments(question)
            prompt = sum(len(agent.encode(seg)) for seg in segments if isinstance(seg, str))
            slots = sum(isinstance(seg, Slot) for seg in segments) * per_slot
            if prompt + 1 > limit:
                raise APIError(f"{param} is too long: agent {name!r} reads it as {prompt} tokens with its role prompt, "
                               f"and its model takes at most {limit} positions; shorten the question", param,
                               code="context_length_exceeded")
            if prompt + slots + own > limit:
                field = "latent_steps" if mode == "latent" and settings.latent_steps is not None else param
                raise APIError(f"agent {name!r} would need {prompt + slots + own} positions ({prompt} for its prompt, "
                               f"{slots + own} for {'latent thoughts' if mode == 'latent' else 'text hand-offs'}), "
                               f"past its model's {limit}; send fewer latent_steps or a shorter question", field,
                               code="context_length_exceeded")
            if name == system.graph.decoder:
                room = limit - prompt - slots
                if max_tokens > room:
                    if explicit_max_tokens:
                        raise APIError(f"'max_tokens' must be <= {room} for this question: the decoder {name!r} takes "
                                       f"{limit} positions and its prompt fills {prompt + slots}", "max_tokens",
                                       code="context_length_exceeded")
                    max_tokens = room
    return replace(settings, max_tokens=max_tokens)


def with_fields(body: dict, system: System, mode: str, questions: list[str]) -> list[Input]:
    """Each question with the request's ``fields`` (the other input fields the system's prompts read, such as
    ``{passage}``), checked: an object of strings, every field the agents of ``mode`` read, none they don't."""
    fields = body.get("fields")
    wanted, known = system.input_fields(mode), system.input_fields()
    others = [f for f in wanted if f != "question"]
    if fields is None:
        if others:
            raise APIError(f"this system's agents read the input field(s) {', '.join(others)} besides the question; send "
                           f"them in the request as \"fields\": {{\"{others[0]}\": \"...\"}} (OpenAI SDK: extra_body)", "fields")
        return list(questions)
    if not isinstance(fields, dict) or any(not isinstance(v, str) for v in fields.values()):
        raise APIError(f"'fields' must be an object of strings (input field -> text), got {_short(fields)}", "fields")
    if "question" in fields:
        raise APIError("'fields' may not hold 'question': the question is the user message (or the prompt)", "fields.question")
    if unknown := [k for k in fields if k not in known]:
        reads = ", ".join(f for f in known if f != "question") or "no field besides the question"
        raise APIError(f"this system's prompts do not read {', '.join(repr(k) for k in unknown)}; they read {reads}",
                       f"fields.{unknown[0]}")
    if missing := [f for f in others if f not in fields]:
        raise APIError(f"'fields' lacks {', '.join(repr(m) for m in missing)}, which this system's agents read", "fields")
    return [{**fields, "question": q} for q in questions]


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise APIError(f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise APIError("'stream_options' is only allowed with 'stream': true", "stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}
                                or not isinstance(options.get("include_usage", False), bool)):
        raise APIError(f"'stream_options' supports only {{'include_usage': bool}}, got {_short(options)}", "stream_options")
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


def _prompts(prompt: Any, max_prompts: int) -> list[str]:
    if prompt is None:
        raise APIError("missing 'prompt'; send a question string or a list of question strings", "prompt")
    if isinstance(prompt, str):
        return [_content_text(prompt, "prompt")]
    if not isinstance(prompt, list) or not prompt:
        raise APIError("'prompt' must be a string or a non-empty list of strings", "prompt")
    if len(prompt) > max_prompts:
        raise APIError(f"'prompt' holds {len(prompt)} questions; this server takes at most {max_prompts} per request, "
                       "send the rest in further requests", "prompt")
    if any(not isinstance(p, str) for p in prompt):
        raise APIError("'prompt' must hold text; token-id prompts are not supported (each agent has its own "
                       "tokenizer), send the question as a string", "prompt")
    return [_content_text(p, f"prompt[{i}]") for i, p in enumerate(prompt)]


class _Refused:
    """A JSON number the server will not take (NaN, an overflowing float, a huge integer); the walk in
    ``parse_json`` reports it with the field it sits in."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _parse_float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"the number {_short(text)} overflows a float")


def _parse_int(max_digits: int):
    def parse(text: str) -> int | _Refused:
        digits = len(text.lstrip("-"))
        return int(text) if digits <= max_digits else _Refused(f"an integer with {digits} digits (at most {max_digits} are taken)")

    return parse


def parse_json(raw: bytes, limits: Limits) -> Any:
    """Strict JSON: no NaN or Infinity, no integers beyond ``max_int_digits`` digits, no nesting deeper than
    ``max_json_depth``, no lone surrogates in strings (they cannot be encoded for a tokenizer)."""
    try:
        text = raw.decode("utf-8")
        body = json.loads(text or "null", parse_constant=lambda name: _Refused(f"{name} is not a JSON number"), parse_float=_parse_float,
                          parse_int=_parse_int(limits.max_int_digits))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(f"the request body is not valid JSON ({err}); send a JSON object") from err
    except RecursionError as err:
        raise APIError(f"the request body nests deeper than {limits.max_json_depth} levels; no request field needs that") from err
    stack: list[tuple[str, Any, int]] = [("", body, 0)]
    while stack:  # iterative, so no depth can overflow the walk itself
        path, value, depth = stack.pop()
        if depth > limits.max_json_depth:
            raise APIError(f"the request body nests deeper than {limits.max_json_depth} levels (at {path or 'the top'}); "
                           "no request field needs that", path.lstrip(".") or None)
        if isinstance(value, _Refused):
            where = path.lstrip(".") or None
            raise APIError(f"{where or 'the body'} holds {value.problem}; send a finite number in range", where)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                where, bad = path.lstrip(".") or None, value[err.start : err.end].encode("unicode_escape").decode()
                raise APIError(f"{where or 'the body'} holds a lone surrogate ({bad} at character {err.start}); "
                               "send valid Unicode text", where) from err
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    stack.append((f"{path}.{key}", key, depth + 1))  # keys are strings too
                stack.append((f"{path}.{key}", item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))
    return body


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


def create_app(system: System, model_name: str | None = None, max_batch: int | None = None, api_key: str | None = None,
               limits: Limits | None = None) -> FastAPI:
    """An OpenAI-compatible app answering with ``system``; ``model_name`` defaults to the system's name.

    With ``api_key``, every ``/v1`` route needs ``Authorization: Bearer <api_key>`` (``/health`` stays open).
    """
    name, limits = model_name or system.config.name, limits or Limits()
    batcher = Batcher(system, max_batch)
    created = int(time.time())
    app = FastAPI(title=f"recursivemas: {name}", version="1", lifespan=_lifespan(batcher))
    app.state.system, app.state.batcher, app.state.model_name, app.state.limits = system, batcher, name, limits

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        routes = "GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions"
        message = f"{request.method} {request.url.path}: {err.detail}; this server has {routes}"
        return APIError(message, status=err.status_code).response()

    def _authorized(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            what = "no API key" if not given else "a wrong API key"
            raise APIError(f"the request carries {what}; send the header 'Authorization: Bearer <key>' with the key "
                           "this server was started with (--api-key or RECURSIVEMAS_API_KEY)", status=401,
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(_authorized)]

    async def _read(request: Request) -> bytes:
        """The raw body, refused with 415 unless JSON and with 413 past the size limit (before reading it all)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise APIError(f"the request's Content-Type is {kind or 'missing'!s}; send the JSON body with "
                           "'Content-Type: application/json'", status=415, code="unsupported_media_type")
        too_big = APIError(f"the request body is over this server's limit of {limits.max_body_bytes} bytes (--max-body-bytes)",
                           status=413, code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _body(request: Request, allowed: tuple[str, ...]) -> dict:
        body = parse_json(await _read(request), limits)
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        model = body.get("model")
        if model is None:
            raise APIError(f"missing 'model'; this server serves {name!r} (GET /v1/models)", "model")
        if not isinstance(model, str) or model != name:
            raise APIError(f"model {_short(model)} does not exist here; this server serves {name!r} (GET /v1/models)",
                           "model", status=404, code="model_not_found")
        _check_fields(body, allowed)
        return body

    async def _prepare(body: dict, questions: list[str], params: list[str]) -> tuple[list[Input], Settings]:
        settings = _settings(body, system, limits)
        inputs = with_fields(body, system, settings.mode, questions)
        if body.get("fields"):  # a prompt too long for an agent may be long for its fields' sake
            params = [f"{p} with 'fields'" for p in params]
        explicit = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
        # tokenizing a long question for every agent takes a while: off the event loop (encode is read-only)
        return inputs, await anyio.to_thread.run_sync(fit_positions, system, inputs, params, settings, explicit)

    async def _run(request: Request, questions: list[Input], settings: Settings) -> tuple[list[RunResult], int]:
        """Queue the request and wait; a client that disconnects first has its job dropped before it runs."""
        job = batcher.enqueue(questions, settings)
        waiting = asyncio.wrap_future(job.future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            if done:
                break
            if await request.is_disconnected():
                batcher.cancel(job)  # queued: dropped; running: stopped at its next turn once all its batch has left
                raise APIError("the client disconnected", status=499, kind="server_error")
        try:
            return waiting.result()
        except (asyncio.CancelledError, CancelledError) as err:
            raise APIError("the request was cancelled", status=499, kind="server_error") from err
        except APIError:
            raise
        except Cancelled as err:  # the server is closing, or the client left mid-run
            raise APIError(f"the request was cancelled: {err}", status=503, kind="server_error") from err
        except ValueError as err:  # a setting the engine rejects
            raise APIError(str(err)) from err
        except Exception as err:
            raise APIError(f"the system failed: {type(err).__name__}: {err}", status=500, kind="server_error") from err

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name, "decoder": system.graph.decoder, "agents": list(system.agents),
                "pending": batcher.pending()}

    @app.get("/v1/models", dependencies=auth)
    def models() -> dict:
        return {"object": "list", "data": [_model_card(name, created, system, limits)]}

    @app.get("/v1/models/{model_id}", dependencies=auth)
    def model(model_id: str) -> JSONResponse:
        if model_id != name:
            return APIError(f"model {model_id!r} does not exist here; this server serves {name!r}", "model",
                            status=404, code="model_not_found").response()
        return JSONResponse(_model_card(name, created, system, limits))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(request: Request):
        body = await _body(request, CHAT_FIELDS)
        question = _chat_question(body.get("messages"))
        inputs, settings = await _prepare(body, [question], ["messages[0].content"])
        stream, include_usage = _stream_flags(body)
        results, batch = await _run(request, inputs, settings)
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

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request):
        body = await _body(request, COMPLETION_FIELDS)
        questions = _prompts(body.get("prompt"), limits.max_prompts)
        params = ["prompt"] if isinstance(body["prompt"], str) else [f"prompt[{i}]" for i in range(len(questions))]
        inputs, settings = await _prepare(body, questions, params)
        stream, include_usage = _stream_flags(body)
        results, batch = await _run(request, inputs, settings)
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


def _model_card(name: str, created: int, system: System, limits: Limits) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "recursivemas",
            "recursivemas": {"agents": list(system.agents), "decoder": system.graph.decoder,
                             "rounds": system.config.rounds, "latent_steps": system.config.latent_steps,
                             "modes": list(MODES), "input_fields": system.input_fields(), "max_rounds": limits.max_rounds,
                             "max_latent_steps": limits.max_latent_steps,
                             "max_positions": {a: position_limit(agent.model) for a, agent in system.agents.items()}}}


def _lifespan(batcher: Batcher):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    return lifespan

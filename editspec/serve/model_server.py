"""`editspec serve-model`: an OpenAI-compatible API over a local model, for testing offline.

Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (the
model's chat template applied), with `stream` (server-sent events, `stream_options.include_usage`),
`logprobs`, `echo` (completions), `stop`, `seed`, `temperature` (0 is greedy; OpenAI's default 1
samples with the request's seed, else 0) and `top_p`; `GET /healthz` and `GET /metrics`.
One model answers one request at a time; the others wait their turn (`editspec.serve.guard`).

A prompt longer than `max_prompt_tokens` (default: the model's context) is refused with 400
`context_length_exceeded`, and one whose characters cannot fit in that many tokens is refused
before it is tokenised (no token is longer than the vocabulary's longest entry).  `max_tokens`
above `max_completion_tokens`, or past the context with the prompt, is refused too.

>>> app = create_model_app(load_model("smollm2-135m"))             # doctest: +SKIP
>>> app = create_model_app(lambda: load_model("smollm2-135m"), "smollm2-135m")  # loads in the background
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from editspec.serve.generation import Step, generate, prompt_logprobs
from editspec.serve.guard import Guard, ModelLimits, deadline, timed_out
from editspec.serve.http import EXCEPTION_HANDLERS, ApiError, read_json, sse
from editspec.serve.runtime import ServerState, ops_routes
from editspec.serve.telemetry import ServerMetrics

MAX_TOP_LOGPROBS = 20
MAX_STOPS = 4                 # as OpenAI's API
FALLBACK_CONTEXT = 2048       # for a model whose config names no context length


def model_context(loaded) -> int:
    """The longest sequence the model was made for, from its config (else the tokenizer's, else 2048)."""
    config = loaded.model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(loaded.tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10 ** 7 else FALLBACK_CONTEXT


def longest_token(tokenizer) -> int:
    """Characters in the vocabulary's longest entry: no token covers more of a prompt's text.

    Byte-level vocabularies spell each byte as one character, so an entry is never shorter
    than the text it stands for; a prompt of more than `limit * longest_token` characters has
    more than `limit` tokens.
    """
    return max((len(entry) for entry in tokenizer.get_vocab()), default=1) or 1


@dataclass
class Assembled:
    """The text made so far from generated tokens, cut at a stop string, streamed safely."""

    tokenizer: Any
    stops: list[str]
    ids: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    sent: int = 0
    finish: str | None = None
    text: str = ""

    def add(self, step: Step, is_end: bool) -> str:
        """Take one token; return the text that can be sent now (never a partial character or
        the start of a stop string)."""
        if is_end:
            self.finish = "stop"
            return self.flush()
        self.ids.append(step.token_id)
        self.steps.append(step)
        self.text = self.tokenizer.decode(self.ids)
        for stop in self.stops:
            cut = self.text.find(stop)
            if cut >= 0:
                self.text, self.finish = self.text[:cut], "stop"
                return self.flush()
        safe = len(self.text.rstrip("\ufffd"))
        hold = max((len(s) - 1 for s in self.stops), default=0)
        safe = max(self.sent, safe - hold)
        delta, self.sent = self.text[self.sent:safe], safe
        return delta

    def flush(self) -> str:
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


class ModelService:
    """The model behind the API: request checks, prompt encoding and generation within limits."""

    def __init__(self, name: str | None, limits: ModelLimits):
        self.name, self.limits = name, limits
        self.loaded = None
        self.lock = threading.Lock()
        self.abort = False                 # set when shutdown cuts requests: generation stops at once
        self.context = self.prompt_limit = self.token_chars = 0

    def attach(self, loaded) -> None:
        """Serve `loaded` (an `editspec.model.loading.LoadedModel`) from now on."""
        self.context = model_context(loaded)
        self.prompt_limit = min(self.limits.max_prompt_tokens or self.context, self.context)
        self.token_chars = longest_token(loaded.tokenizer)
        self.name = self.name or loaded.name
        self.loaded = loaded

    def describe(self) -> dict:
        return {"model": self.name, "context_tokens": self.context or None,
                "max_prompt_tokens": self.prompt_limit or None,
                "max_completion_tokens": self.limits.max_completion_tokens}

    # -- request fields ------------------------------------------------------------------
    def prepare(self, body: dict, chat: bool) -> tuple[list[int], dict]:
        """The prompt's token ids and the generation options, or an `ApiError` (400)."""
        options = self.options(body, chat)
        ids = self.encode_chat(body.get("messages")) if chat else self.encode_prompt(body.get("prompt"))
        if not ids:
            raise ApiError("the prompt is empty", param="messages" if chat else "prompt")
        options["max_tokens"] = self.completion_budget(body, chat, len(ids))
        return ids, options

    def options(self, body: dict, chat: bool) -> dict:
        if body.get("n", 1) != 1:
            raise ApiError("only n=1 is supported", param="n")
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ApiError("stop must be a string or a list of strings", param="stop")
        if len(stops) > MAX_STOPS:
            raise ApiError(f"stop takes at most {MAX_STOPS} strings", param="stop")
        if chat:
            top = _field(body, "top_logprobs", int, 0) if body.get("logprobs") else None
        else:
            top = _field(body, "logprobs", int, None)
        if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="logprobs")
        temperature, top_p = _field(body, "temperature", float, 1.0), _field(body, "top_p", float, 1.0)
        if not 0.0 <= temperature <= 2.0:
            raise ApiError("temperature must be between 0 and 2", param="temperature")
        if not 0.0 <= top_p <= 1.0:
            raise ApiError("top_p must be between 0 and 1", param="top_p")
        return {"stops": [s for s in stops if s], "temperature": temperature, "top_p": top_p,
                "seed": _field(body, "seed", int, None), "top": top}

    def completion_budget(self, body: dict, chat: bool, prompt_tokens: int) -> int:
        """Tokens to generate: the request's `max_tokens` within the cap and the context left."""
        asked = body.get("max_completion_tokens") if chat else None
        asked = asked if asked is not None else body.get("max_tokens")
        room = self.context - prompt_tokens
        cap = self.limits.max_completion_tokens
        if asked is None:
            asked = min(256 if chat else 16, cap, room)
            if asked < 1:
                raise self.too_long(f"the prompt's {prompt_tokens} tokens leave no room for a completion")
            return asked
        asked = _nonnegative(asked, "max_tokens")
        if asked > cap:
            raise ApiError(f"max_tokens is too large: {asked}; this server generates at most {cap} tokens "
                           "per request", param="max_tokens")
        if asked > room:
            raise self.too_long(f"you asked for {prompt_tokens + asked} tokens ({prompt_tokens} in the prompt, "
                                f"{asked} for the completion)", param="max_tokens")
        return asked

    def too_long(self, what: str, param: str = "messages") -> ApiError:
        return ApiError(f"this model's maximum context length is {self.context} tokens (prompts at most "
                        f"{self.prompt_limit}); {what}", param=param, code="context_length_exceeded")

    def check_chars(self, chars: int, param: str) -> None:
        """Refuse, before tokenising, a text too long for `prompt_limit` tokens whatever its tokens."""
        if chars > self.prompt_limit * self.token_chars:
            raise self.too_long(f"the prompt has {chars} characters, more than {self.prompt_limit} tokens "
                                "can hold", param=param)

    def check_tokens(self, count: int, param: str) -> None:
        if count > self.prompt_limit:
            raise self.too_long(f"the prompt has {count} tokens", param=param)

    def encode_chat(self, messages: Any) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise ApiError("messages must be a non-empty list", param="messages")
        plain = []
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise ApiError("each message needs a role and content", param="messages")
            content = message.get("content") or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str) or not isinstance(message["role"], str):
                raise ApiError("a message's role and content must be text", param="messages")
            plain.append({"role": message["role"], "content": content})
        self.check_chars(sum(len(m["content"]) for m in plain), "messages")
        tokenizer = self.loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(f"model {self.name} has no chat template; use /v1/completions")
        text = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        self.check_tokens(len(ids), "messages")
        return ids

    def encode_prompt(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            self.check_tokens(len(prompt), "prompt")
            vocabulary = len(self.loaded.tokenizer)
            if not all(0 <= t < vocabulary for t in prompt):
                raise ApiError(f"token ids must be between 0 and {vocabulary - 1}", param="prompt")
            return list(prompt)
        if not isinstance(prompt, str):
            raise ApiError("prompt must be one string (or one list of token ids)", param="prompt")
        self.check_chars(len(prompt), "prompt")
        ids = list(self.loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        self.check_tokens(len(ids), "prompt")
        return ids

    # -- running -------------------------------------------------------------------------
    @contextlib.contextmanager
    def turn(self, until: float):
        """Hold the model until the block ends; `ApiError` 504 if it is not free before `until`."""
        if not self.lock.acquire(timeout=max(0.0, min(until - time.monotonic(), threading.TIMEOUT_MAX))):
            raise timed_out(self.limits.request_timeout)
        try:
            yield
        finally:
            self.lock.release()

    def run(self, ids: list[int], options: dict, until: float) -> Iterator[tuple[str, list[Step], "Assembled"]]:
        """Yield (text delta, new steps, state) while generating; holds the model until done.

        Stops with `ApiError` 504 once `until` (a `time.monotonic()`) passes or shutdown aborts.
        """
        tokenizer = self.loaded.tokenizer
        state = Assembled(tokenizer, options["stops"])
        ends = {tokenizer.eos_token_id}
        with self.turn(until):
            steps = generate(self.loaded, ids, max_tokens=options["max_tokens"], temperature=options["temperature"],
                             top_p=options["top_p"], seed=options["seed"], top_logprobs=options["top"] or 0,
                             until=until)
            try:
                for step in steps:
                    if self.abort or time.monotonic() > until:
                        raise timed_out(self.limits.request_timeout)
                    seen = len(state.steps)
                    delta = state.add(step, step.token_id in ends)
                    yield delta, state.steps[seen:], state
                    if state.finish:
                        return
            except TimeoutError:
                raise timed_out(self.limits.request_timeout) from None
        state.finish = "length"
        yield state.flush(), [], state


def _field(body: dict, name: str, kind: type, default):
    """`body[name]` as a `kind` (int or float; JSON null: `default`), else `ApiError` 400."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ApiError(f"{name} must be {'an integer' if kind is int else 'a number'}", param=name)
    return kind(value)


def _nonnegative(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(f"{name} must be a non-negative integer", param=name)
    return value


# -- response shapes ------------------------------------------------------------------------

def chat_logprobs(steps: list[Step]) -> dict:
    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, v) for t, v in s.top]}
                        for s in steps]}


def completion_logprobs(steps: list[Step | None], offset: int = 0) -> dict:
    tokens, values, tops, offsets, position = [], [], [], [], offset
    for step in steps:
        text = step.token if step else ""
        tokens.append(text)
        values.append(step.logprob if step else None)
        tops.append(dict(step.top) if step else None)
        offsets.append(position)
        position += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def create_model_app(model, name: str | None = None, limits: ModelLimits | None = None,
                     announce: Callable[[str], None] | None = None):
    """The ASGI app serving `model` under `name`, within `limits` (default `ModelLimits()`).

    `model` is an `editspec.model.loading.LoadedModel`, or a function returning one: it is then
    called in the background when the server starts, and `/healthz` says `loading` until it
    returns (`announce` hears when it is ready).
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    limits = limits or ModelLimits()
    service = ModelService(name, limits)
    state = ServerState()
    metrics = ServerMetrics("editspec_model")
    tokens = metrics.registry.counter("editspec_model_tokens_total", "Tokens read (prompt) and generated "
                                      "(completion).", ("kind",))
    load = model if callable(model) else None
    if load is None:
        service.attach(model)
        state.ready()

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": service.name, "object": "model", "created": 0, "owned_by": "editspec"}]})

    async def completions(request):
        return await _answer(request, chat=False)

    async def chat(request):
        return await _answer(request, chat=True)

    async def _answer(request, chat: bool):
        body = await read_json(request)
        # Tokenising is CPU work (bounded by the prompt limit): off the event loop.
        ids, options = await run_in_threadpool(service.prepare, body, chat)
        tokens.inc(len(ids), kind="prompt")
        until = deadline(request)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": service.name}
        if body.get("stream"):
            asked = body.get("stream_options")
            usage = isinstance(asked, dict) and bool(asked.get("include_usage"))
            return StreamingResponse(_stream(ids, options, meta, chat, usage, until), media_type="text/event-stream")
        echo = bool(body.get("echo")) and not chat
        return JSONResponse(await run_in_threadpool(_whole, ids, options, meta, chat, echo, until))

    def _whole(ids, options, meta, chat, echo, until) -> dict:
        steps, state = [], None
        for _, new, state in service.run(ids, options, until):
            steps += new
        tokens.inc(len(steps), kind="completion")
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(steps), "total_tokens": len(ids) + len(steps)}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": state.text},
                      "finish_reason": state.finish,
                      "logprobs": chat_logprobs(steps) if options["top"] is not None else None}
            return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
        text, logprobs = state.text, None
        if echo:
            prefix = service.loaded.tokenizer.decode(ids)
            text = prefix + text
            if options["top"] is not None:
                with service.turn(until):
                    try:
                        head = prompt_logprobs(service.loaded, ids, top_logprobs=options["top"], until=until)
                    except TimeoutError:
                        raise timed_out(limits.request_timeout) from None
                logprobs = completion_logprobs(head + steps)
        elif options["top"] is not None:
            logprobs = completion_logprobs(steps)
        choice = {"index": 0, "text": text, "finish_reason": state.finish, "logprobs": logprobs}
        return {**meta, "object": "text_completion", "choices": [choice], "usage": usage}

    def _stream(ids, options, meta, chat, usage, until) -> Iterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        made = 0
        if chat:
            yield sse({**meta, "object": kind, "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        try:
            for delta, new, state in service.run(ids, options, until):
                made += len(new)
                if not delta and not state.finish:
                    continue
                logprobs = None
                if options["top"] is not None:
                    logprobs = chat_logprobs(new) if chat else completion_logprobs(new)
                if chat:
                    choice = {"index": 0, "delta": {"content": delta} if delta else {}, "logprobs": logprobs,
                              "finish_reason": state.finish}
                else:
                    choice = {"index": 0, "text": delta, "logprobs": logprobs, "finish_reason": state.finish}
                yield sse({**meta, "object": kind, "choices": [choice]})
        except ApiError as error:
            # Headers are gone: an error event is what the openai client raises as APIError.
            yield sse(error.body())
            return
        finally:
            tokens.inc(made, kind="completion")
        if usage:
            yield sse({**meta, "object": kind, "choices": [], "usage": {
                "prompt_tokens": len(ids), "completion_tokens": made, "total_tokens": len(ids) + made}})
        yield b"data: [DONE]\n\n"

    def loaded_now(loaded) -> None:
        service.attach(loaded)
        if announce:
            announce(f"model {service.name} ready: context {service.context} tokens, prompts <= "
                     f"{service.prompt_limit} tokens, max_tokens <= {limits.max_completion_tokens}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if load is not None and state.status == "loading":
            state.run_loader(load, loaded_now, describe=lambda error: f"{type(error).__name__}: {error}")
        try:
            yield
        finally:
            service.abort = True       # anything still generating now was cut by the shutdown bound

    routes = [Route("/v1/models", models, methods=["GET"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              *ops_routes(state, metrics, service.describe)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    return Guard(app, limits, metrics, state)

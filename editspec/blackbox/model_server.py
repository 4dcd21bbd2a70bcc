"""`editspec serve-model`: an OpenAI-compatible API over a local model, for testing offline.

Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (the
model's chat template applied), with `stream` (server-sent events), `logprobs`, `echo`
(completions), `stop`, `seed`, `temperature` (0 is greedy; OpenAI's default 1 samples with the
request's seed, else 0) and `top_p`.  One model answers one request at a time; the others wait.

>>> app = create_model_app(load_model("smollm2-135m"))             # doctest: +SKIP
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from editspec.blackbox.generation import Step, generate, prompt_logprobs
from editspec.blackbox.http import ApiError, error_response, read_json, sse

MAX_TOP_LOGPROBS = 20


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
    """The model behind the API, with the request parsing shared by both endpoints."""

    def __init__(self, loaded, name: str):
        self.loaded = loaded
        self.name = name
        self.lock = threading.Lock()

    # -- request fields ------------------------------------------------------------------
    def options(self, body: dict, chat: bool) -> dict:
        maximum = body.get("max_completion_tokens") if chat else None
        maximum = maximum if maximum is not None else body.get("max_tokens", None if chat else 16)
        if maximum is None:
            maximum = 256
        if body.get("n", 1) != 1:
            raise ApiError("only n=1 is supported", param="n")
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ApiError("stop must be a string or a list of strings", param="stop")
        if chat:
            top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
        else:
            top = body.get("logprobs")
        if top is not None and not 0 <= int(top) <= MAX_TOP_LOGPROBS:
            raise ApiError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="logprobs")
        temperature = body.get("temperature")
        return {"max_tokens": _nonnegative(maximum, "max_tokens"), "stops": [s for s in stops if s],
                "temperature": 1.0 if temperature is None else float(temperature),
                "top_p": float(body.get("top_p") or 1.0), "seed": body.get("seed"),
                "top": None if top is None else int(top)}

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
            plain.append({"role": message["role"], "content": content})
        tokenizer = self.loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(f"model {self.name} has no chat template; use /v1/completions")
        text = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if not isinstance(prompt, str):
            raise ApiError("prompt must be one string (or one list of token ids)", param="prompt")
        return list(self.loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    # -- running -------------------------------------------------------------------------
    def run(self, ids: list[int], options: dict) -> Iterator[tuple[str, list[Step], Assembled]]:
        """Yield (text delta, new steps, state) while generating; holds the model lock."""
        tokenizer = self.loaded.tokenizer
        state = Assembled(tokenizer, options["stops"])
        ends = {tokenizer.eos_token_id}
        with self.lock:
            for step in generate(self.loaded, ids, max_tokens=options["max_tokens"],
                                 temperature=options["temperature"], top_p=options["top_p"], seed=options["seed"],
                                 top_logprobs=options["top"] or 0):
                seen = len(state.steps)
                delta = state.add(step, step.token_id in ends)
                yield delta, state.steps[seen:], state
                if state.finish:
                    return
        state.finish = "length"
        yield state.flush(), [], state


def _nonnegative(value: Any, name: str) -> int:
    if not isinstance(value, int) or value < 0:
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


def create_model_app(loaded, name: str | None = None):
    """The Starlette app serving `loaded` (an `editspec.models.LoadedModel`) under `name`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    service = ModelService(loaded, name or loaded.name)

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": service.name, "object": "model", "created": 0, "owned_by": "editspec"}]})

    async def completions(request):
        return await _answer(request, chat=False)

    async def chat(request):
        return await _answer(request, chat=True)

    async def _answer(request, chat: bool):
        try:
            body = await read_json(request)
            options = service.options(body, chat)
            ids = service.encode_chat(body.get("messages")) if chat else service.encode_prompt(body.get("prompt"))
            echo = bool(body.get("echo")) and not chat
        except ApiError as error:
            return error_response(error)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": service.name}
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(ids, options, meta, chat, usage), media_type="text/event-stream")
        return JSONResponse(await run_in_threadpool(_whole, ids, options, meta, chat, echo))

    def _whole(ids, options, meta, chat, echo) -> dict:
        steps, state = [], None
        for _, new, state in service.run(ids, options):
            steps += new
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
                with service.lock:
                    head = prompt_logprobs(service.loaded, ids, top_logprobs=options["top"])
                logprobs = completion_logprobs(head + steps)
        elif options["top"] is not None:
            logprobs = completion_logprobs(steps)
        choice = {"index": 0, "text": text, "finish_reason": state.finish, "logprobs": logprobs}
        return {**meta, "object": "text_completion", "choices": [choice], "usage": usage}

    def _stream(ids, options, meta, chat, usage) -> Iterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        made = 0
        if chat:
            yield sse({**meta, "object": kind, "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for delta, new, state in service.run(ids, options):
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
        if usage:
            yield sse({**meta, "object": kind, "choices": [], "usage": {
                "prompt_tokens": len(ids), "completion_tokens": made, "total_tokens": len(ids) + made}})
        yield b"data: [DONE]\n\n"

    routes = [Route("/v1/models", models, methods=["GET"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes)

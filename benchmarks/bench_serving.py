"""Load and fault figures for `editspec serve-model` and `editspec serve` (issue 19), on loopback.

    python benchmarks/bench_serving.py                 # everything, a few minutes
    python benchmarks/bench_serving.py --clients 50,200 --upstream-delay 1.0
    python benchmarks/bench_serving.py --load-only --clients 200 --edited-every 0   # the HTTP path alone
    python benchmarks/bench_serving.py --load-only --clients 200 --stagger 4        # 200 clients over 4 s

Every server runs in its own process under `ulimit -v` (tests/serving_helpers.py), so a
server a case breaks dies alone and the run reports it.  Processes: the real default model
(`serve-model`), a retrieval plugin of specs/examples/leadership.edit in front of it
(`serve`), and a second proxy in front of a fake OpenAI upstream (this file, `upstream`)
that answers after `--upstream-delay` seconds and can be told to refuse, fail with 503,
hang, or die in the middle of a stream.

Cases, each bounded in requests and seconds: N concurrent clients (mixed edited and unedited
requests; one aiohttp session, the same for both runs) direct to the fake upstream and through
the proxy (the difference of the medians is the proxy's added latency; that proxy runs with
`--max-concurrent 256`, room for every client at once) and through the proxy to the model,
each with the CPU time every process spent on it per request; the upstream refused /
5xx / slow / killed mid-stream; bodies over the limits, malformed JSON, prompts over the
context, max_tokens over the cap.  Reported: requests by outcome, p50/p95 latency, peak RSS
of each server against its idle RSS, and for every refusal the exception the `openai`
client raised (anything but an `openai.APIError` with a JSON body counts as a non-API error).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

EDITED = "Who is the CEO of Twitter?"
# Every request of a load case is a different text, so nothing is routed from a cache.
IN_SCOPE = ["Who is the CEO of Twitter? (ticket {n})", "Ticket {n}: who runs Twitter these days?",
            "Who leads Twitter as chief executive? Ref {n}.", "Twitter's CEO is who, as of note {n}?"]
OUT_OF_SCOPE = ["What is {n} plus {m}?", "Name a city with about {n} thousand people.",
                "Write a haiku about the number {n}.", "How many legs do {m} spiders have?"]
HUGE = 20 << 20


# -- the fake upstream (a subprocess: `python bench_serving.py upstream --port 0`) ------------

def upstream_app(delay: float):
    """An OpenAI-shaped API that answers after `delay` s; `POST /control {"mode": ...}` changes it."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    state = {"mode": "ok", "delay": delay}

    def answer(body: dict) -> dict:
        chat = "messages" in body
        text = "fake answer"
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None})
        return {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0, "model": "fake",
                "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

    async def events(body: dict):
        for index in range(4):
            if state["mode"] == "die" and index == 2:
                os._exit(1)                                   # killed in the middle of a stream
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                     "choices": [{"index": 0, "delta": {"content": f"piece{index} "}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            await asyncio.sleep(0.05)
        yield b"data: [DONE]\n\n"

    async def handle(request):
        if request.url.path == "/healthz":
            return JSONResponse({"status": "ready"})
        if request.url.path == "/control":
            state.update(await request.json())
            return JSONResponse(state)
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                             "owned_by": "bench"}]})
        body = json.loads(await request.body())
        if state["mode"] == "5xx":
            return JSONResponse({"error": {"message": "overloaded (fake)", "type": "server_error"}}, status_code=503)
        await asyncio.sleep(3600 if state["mode"] == "slow" else state["delay"])
        if body.get("stream"):
            return StreamingResponse(events(body), media_type="text/event-stream")
        return JSONResponse(answer(body))

    methods = ["GET", "POST"]
    return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])


def run_upstream(port: int, delay: float) -> None:
    import socket

    import uvicorn

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    print(f"fake upstream at http://127.0.0.1:{listener.getsockname()[1]}/v1", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(upstream_app(delay), log_level="warning", access_log=False,
                                  backlog=2048)).run(sockets=[listener])


# -- measuring ----------------------------------------------------------------------------------

class RssWatch:
    """Samples VmRSS of some processes every 50 ms; `peak(name)` since the last `reset()`."""

    def __init__(self, pids: dict[str, int]):
        self.pids, self.peaks, self.stop = pids, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def rss(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return 0.0
        return 0.0

    def _run(self):
        while not self.stop.wait(0.05):
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), self.rss(pid))

    def reset(self) -> dict[str, float]:
        peaks, self.peaks = dict(self.peaks), {}
        return peaks


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def outcome_of(response) -> str:
    """`200`, `503`, ... for a JSON answer; `non-API: ...` for anything an API client could not parse."""
    return outcome_from(response.status_code, response.content)


def outcome_from(status: int, content: bytes) -> str:
    if status == 200:
        return "200"
    try:
        error = json.loads(content)["error"]
        assert isinstance(error["message"], str)
    except Exception:  # noqa: BLE001 - anything unparseable is what we are counting
        return f"non-API: {status} without a JSON error"
    return str(status)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def question(n: int, edited_every: int = 4) -> str:
    """Request `n`'s text: one in `edited_every` (0: none) inside the edit's scope, naming its
    subject; the others name no edited subject.  Each text different."""
    pool = IN_SCOPE if edited_every and n % edited_every == 0 else OUT_OF_SCOPE
    return pool[(n // 4) % len(pool)].format(n=n, m=n % 7 + 2)


async def load(url: str, clients: int, per_client: int, chat_model: str, max_tokens: int, seconds: float,
               stagger: float = 0.0, edited_every: int = 4) -> dict:
    """`clients` concurrent clients, each starting within `stagger` s (seeded) and sending
    `per_client` chat requests in turn, one in `edited_every` edited.

    The clients share one aiohttp session (a connection each): at 200 clients an httpx client
    spent 2.1-2.6 ms of CPU a request against aiohttp's 0.2-0.4 ms, on the same two cores as
    the servers it measures (docs/benchmarks.md, serving).  `cpu_ms_per_request` is the load
    generator's own CPU time per request.
    """
    import random

    import aiohttp

    latencies, outcomes = [], Counter()
    starts = random.Random(0)
    connector = aiohttp.TCPConnector(limit=clients)
    cpu = time.process_time()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:
        async def client(index: int):
            await asyncio.sleep(starts.uniform(0, stagger))
            for turn in range(per_client):
                text = question(index * per_client + turn, edited_every)
                body = {"model": chat_model, "messages": [{"role": "user", "content": text}],
                        "max_tokens": max_tokens, "temperature": 0}
                started = time.perf_counter()
                try:
                    async with http.post(f"{url}/chat/completions", json=body) as response:
                        content = await response.read()
                        outcomes[outcome_from(response.status, content)] += 1
                        outcomes["(of which edited)"] += "x-editspec-edits" in response.headers
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    outcomes[f"non-API: {type(error).__name__}"] += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), seconds)
        except asyncio.TimeoutError:
            answered = sum(v for k, v in outcomes.items() if not k.startswith("("))
            outcomes["unfinished at the time bound"] += clients * per_client - answered
    requests = clients * per_client
    return {"outcomes": dict(outcomes), "p50_ms": percentile(latencies, 0.5) * 1000,
            "p95_ms": percentile(latencies, 0.95) * 1000, "seconds": time.perf_counter() - started,
            "requests": requests, "cpu_ms_per_request": {"load generator": (time.process_time() - cpu) * 1000 / requests}}


def openai_refusal(call) -> str:
    """What the openai client raised for `call()`: its exception type, status and error code."""
    import openai

    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "choices"):
            list(result)
        return "answered"
    except openai.APIStatusError as error:
        code = error.body.get("code") if isinstance(error.body, dict) else None
        return f"{type(error).__name__} {error.status_code} {code}"
    except openai.APIConnectionError as error:
        return f"non-API: {type(error).__name__}"
    except openai.APIError as error:                       # an error event inside a stream
        code = error.body.get("code") if isinstance(error.body, dict) else None
        return f"{type(error).__name__} (in stream) {code}"


# -- the run --------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    up = sub.add_parser("upstream", help="(internal) run the fake upstream")
    up.add_argument("--port", type=int, default=0)
    up.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--clients", default="50,200", help="concurrent clients per load case (repeats allowed)")
    parser.add_argument("--per-client", type=int, default=2, help="requests each client sends in turn")
    parser.add_argument("--upstream-delay", type=float, default=1.0, help="seconds the fake upstream takes")
    parser.add_argument("--case-seconds", type=float, default=90.0, help="time bound of each load case")
    parser.add_argument("--proxy-concurrent", type=int, default=256,
                        help="--max-concurrent of the proxy in front of the fake upstream: room for every client "
                        "at once (at the default 128, 72 of 200 clients wait a turn of one upstream answer)")
    parser.add_argument("--stagger", type=float, default=None,
                        help="seconds over which the clients start (default: --upstream-delay, one answer time)")
    parser.add_argument("--edited-every", type=int, default=4,
                        help="one request in N names the edited subject (0: none does, so none is embedded)")
    parser.add_argument("--load-only", action="store_true",
                        help="only the load cases against the fake upstream (no model, no faults): about a minute")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    if args.command == "upstream":
        run_upstream(args.port, args.delay)
        return 0
    return run(args)


def run(args) -> int:
    import httpx2
    import openai

    from editspec.build.compiler import compile_spec
    from serving_helpers import ServerProcess

    script = Path(__file__).resolve()
    results: dict = {"cases": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print("compiling the retrieval plugin ...", file=sys.stderr)
    artifact = compile_spec(str(ROOT / "specs/examples/leadership.edit"), "retrieval", out=work / "lead.retrieval")

    fake = ServerProcess(["upstream", "--delay", str(args.upstream_delay)], script=script).__enter__()
    fake_port = int(fake.url.rsplit(":", 1)[1].split("/")[0])
    model = proxy = None
    if not args.load_only:
        model = ServerProcess(["serve-model"], start_timeout=300).__enter__()
        proxy = ServerProcess(["serve", str(artifact.path), "--upstream", model.url], start_timeout=300).__enter__()
    front = ServerProcess(["serve", str(artifact.path), "--upstream", fake.url, "--retries", "1", "--timeout", "3",
                           "--max-concurrent", str(args.proxy_concurrent)], start_timeout=300).__enter__()
    servers = {name: server for name, server in (("serve-model", model), ("serve (model)", proxy), ("serve (fake)", front))
               if server is not None}
    watch = RssWatch({name: server.process.pid for name, server in servers.items()})

    def restart_fake():
        nonlocal fake
        fake.stop()
        fake = ServerProcess(["upstream", "--delay", str(args.upstream_delay)], script=script, port=fake_port).__enter__()

    def measured(url: str, clients: int, rounds: int, chat_model: str, max_tokens: int, stagger: float = 0.0) -> dict:
        """`load(...)`, with the CPU time each process spent on it per request."""
        pids = {"fake upstream": fake.process.pid, **{name: s.process.pid for name, s in servers.items()}}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        outcome = asyncio.run(load(url, clients, rounds, chat_model, max_tokens, args.case_seconds, stagger=stagger,
                                   edited_every=args.edited_every))
        for name, pid in pids.items():
            used = cpu_seconds(pid) - before[name]
            if used > 0:
                outcome["cpu_ms_per_request"][name] = used * 1000 / outcome["requests"]
        return outcome

    def finish() -> int:
        results["alive_at_end"] = {name: server.process.poll() is None for name, server in servers.items()}
        results["non_api_errors"] = sum(
            count for outcome in results["cases"].values() for key, count in outcome.get("outcomes", {}).items()
            if key.startswith("non-API")) + sum(
            1 for name in ("upstream faults (proxy -> fake)", "oversized and malformed bodies")
            for value in results["cases"].get(name, {}).values() if isinstance(value, str) and value.startswith("non-API"))
        return 0

    def control(**state):
        httpx2.post(fake.root + "/control", json=state, timeout=10)

    try:
        # Warm up (first requests allocate caches), then take idle RSS.
        for server in (model, proxy) if model else ():
            for n in (0, 1):
                httpx2.post(server.url + "/chat/completions", timeout=120, json={
                    "model": "m", "messages": [{"role": "user", "content": question(n)}], "max_tokens": 4})
        asyncio.run(load(front.url, 8, 2, "fake", 4, 60))
        time.sleep(0.5)
        idle = {name: watch.rss(server.process.pid) for name, server in servers.items()}
        results["idle_rss_mib"] = idle
        watch.reset()

        def case(name: str, outcome: dict) -> None:
            outcome["peak_rss_mib"] = watch.reset()
            repeat = sum(1 for known in results["cases"] if known.split(" (run ")[0] == name)
            name += f" (run {repeat + 1})" if repeat else ""      # --clients 200,200: the same case again
            results["cases"][name] = outcome
            print(f"{name}: {json.dumps(outcome)}", file=sys.stderr)

        delay = args.upstream_delay if args.stagger is None else args.stagger
        for clients in [1] + [int(c) for c in args.clients.split(",")]:
            rounds = 10 if clients == 1 else args.per_client
            # Clients start spread over one upstream answer time, as independent callers do.
            direct = measured(fake.url, clients, rounds, "fake", 4, stagger=delay)
            case(f"{clients} clients, fake upstream direct", direct)
            through = measured(front.url, clients, rounds, "fake", 4, stagger=delay)
            through["added_p50_ms"] = through["p50_ms"] - direct["p50_ms"]
            through["added_p95_ms"] = through["p95_ms"] - direct["p95_ms"]
            case(f"{clients} clients, proxy -> fake upstream", through)
            if clients > 1 and not args.load_only:
                case(f"{clients} clients, proxy -> serve-model (max_tokens 1)",
                     measured(proxy.url, clients, 1, "m", 1))

        if args.load_only:
            return finish()
        api = openai.OpenAI(base_url=front.url, api_key="x", max_retries=0, timeout=60)
        chat = dict(model="fake", messages=[{"role": "user", "content": EDITED}], max_tokens=4)
        faults = {}
        control(mode="5xx")
        faults["upstream 5xx"] = openai_refusal(lambda: api.chat.completions.create(**chat))
        control(mode="slow")
        faults["upstream slow (past --timeout 3, 1 retry)"] = openai_refusal(lambda: api.chat.completions.create(**chat))
        control(mode="die")
        faults["upstream killed mid-stream"] = openai_refusal(lambda: api.chat.completions.create(**chat, stream=True))
        time.sleep(0.5)
        faults["upstream refused (dead)"] = openai_refusal(lambda: api.chat.completions.create(**chat))
        restart_fake()
        watch.pids = {name: server.process.pid for name, server in servers.items()}
        faults["upstream back: recovered"] = openai_refusal(lambda: api.chat.completions.create(**chat))
        case("upstream faults (proxy -> fake)", faults)

        direct_model = openai.OpenAI(base_url=model.url, api_key="x", max_retries=0, timeout=120)
        via_proxy = openai.OpenAI(base_url=proxy.url, api_key="x", max_retries=0, timeout=120)
        hostile = {}
        for label, client, url in (("serve-model", direct_model, model.url), ("serve", via_proxy, proxy.url)):
            hostile[f"{label}: 20 MB message"] = openai_refusal(lambda: client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Twitter " * (HUGE // 8)}], max_tokens=4))
            hostile[f"{label}: 900 KB prompt (over the context)"] = openai_refusal(lambda: client.completions.create(
                model="m", prompt="The CEO of Twitter is " * 40_000, max_tokens=4))
            hostile[f"{label}: max_tokens 100000"] = openai_refusal(lambda: client.completions.create(
                model="m", prompt="Hi", max_tokens=100_000))
            malformed = httpx2.post(f"{url}/chat/completions", content=b'{"model": "m", "messages": [',
                                    headers={"content-type": "application/json"}, timeout=60)
            hostile[f"{label}: malformed JSON"] = outcome_of(malformed) + " " + str(malformed.json()["error"]["type"])
        case("oversized and malformed bodies", hostile)
        return finish()
    finally:
        watch.stop.set()
        for server in (front, proxy, model, fake):
            if server is not None:
                server.stop()
        if "alive_at_end" in results:
            report(results)
            if args.json:
                print(json.dumps(results, indent=2))



def report(results: dict) -> None:
    idle = results["idle_rss_mib"]
    print("\nidle RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in idle.items()))
    print("\n| case | requests by outcome | p50 ms | p95 ms | peak RSS / idle | CPU ms per request |")
    print("|---|---|---|---|---|---|")
    for name, outcome in results["cases"].items():
        peaks = outcome.get("peak_rss_mib", {})
        ratio = ", ".join(f"{k} {peaks.get(k, 0) / idle[k]:.2f}x" for k in idle if idle[k])
        if "outcomes" in outcome:
            added = (f" (proxy adds {outcome['added_p50_ms']:.1f} ms at p50, {outcome['added_p95_ms']:.1f} at p95)"
                     if "added_p50_ms" in outcome else "")
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in outcome["cpu_ms_per_request"].items() if v >= 0.05)
            print(f"| {name} | {outcome['outcomes']}{added} | {outcome['p50_ms']:.1f} | {outcome['p95_ms']:.1f} | {ratio} "
                  f"| {cpu} |")
        else:
            answers = "; ".join(f"{k}: {v}" for k, v in outcome.items() if k != "peak_rss_mib")
            print(f"| {name} | {answers} | | | {ratio} | |")
    print(f"\nCPU the load cases needed ({os.cpu_count()} cores on this machine, shared with whatever else runs):")
    for name, outcome in results["cases"].items():
        if "cpu_ms_per_request" in outcome and "fake upstream" in name:
            rate = outcome["requests"] / outcome["seconds"]
            busy = sum(outcome["cpu_ms_per_request"].values()) / 1000 * rate
            print(f"  {name}: {rate:.0f} requests/s over the case x {sum(outcome['cpu_ms_per_request'].values()):.2f} "
                  f"ms of CPU each = {busy:.2f} cores busy")
    print(f"\nnon-API errors: {results['non_api_errors']}; alive at the end: {results['alive_at_end']}")


if __name__ == "__main__":
    sys.exit(main())

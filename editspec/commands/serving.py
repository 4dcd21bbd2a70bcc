"""`editspec serve` (the editing proxy) and `editspec serve-model` (a local OpenAI-compatible API).

Both listen at once and load their model or plugin in the background (`/healthz` says when
they are ready), print their limits at start, and stop on SIGTERM or Ctrl-C after the
requests in flight finish (within `--shutdown-timeout`).  Access logs are off: nothing about
callers (their Authorization header above all) is ever printed.
"""
from __future__ import annotations

import re

import click

from editspec.serve.guard import ModelLimits, ProxyLimits, format_bytes
from editspec.commands.options import model_options, require_http_url
from editspec.errors import EditspecError

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


class ByteSize(click.ParamType):
    """A byte count: `1048576`, `512KiB`, `8MiB`, `1GB`."""

    name = "BYTES"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", str(value), re.IGNORECASE)
        if not found:
            self.fail(f"{value!r} is not a size (e.g. 1048576, 512KiB, 8MiB)", param, ctx)
        return int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])


def _host_port(command):
    command = click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
                           help="Port to listen on (0: any free port, printed at start).")(command)
    return click.option("--host", default="127.0.0.1", show_default=True,
                        help="Address to listen on (0.0.0.0: every interface).")(command)


def limit_options(limits_class, skip: tuple[str, ...] = ()):
    """One flag per field of `limits_class` (`max_body_bytes` -> `--max-body-bytes`), described once there."""
    def decorate(command):
        for name, field in reversed(list(limits_class.model_fields.items())):
            if name in skip:
                continue
            kind = ByteSize() if name == "max_body_bytes" else click.FLOAT if field.annotation is float else click.INT
            shown = format_bytes(field.default) if name == "max_body_bytes" else field.default
            command = click.option("--" + name.replace("_", "-"), name, type=kind, default=field.default,
                                   show_default=shown if shown is not None else False,
                                   help=field.description)(command)
        return command

    return decorate


def make_limits(limits_class, values: dict):
    """`limits_class(**values)`, a bad value reported as a usage error naming its flag."""
    import pydantic

    try:
        return limits_class(**values)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise click.BadParameter(first["msg"], param_hint=flag) from None


def run_app(app, host: str, port: int, what: str) -> None:
    """Serve the guarded `app` until SIGTERM or Ctrl-C, printing where, its limits, and when it stops."""
    import socket

    from editspec.serve.runtime import serve

    try:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        raise EditspecError(f"cannot listen on {host}:{port}: {error.strerror}",
                            hint="choose another --port (0 picks a free one) or --host") from None

    def say(message: str) -> None:
        click.echo(f"editspec: {message}", err=True)

    bound = listener.getsockname()[1]
    say(f"{what} at http://{host}:{bound}/v1 (health: /healthz, metrics: /metrics; Ctrl-C or SIGTERM stops)")
    say(f"limits: {app.limits.summary()}")
    serve(app, listener, app.state, app.limits.shutdown_timeout, say)
    if app.state.status == "failed":
        raise EditspecError(f"could not start: {app.state.detail}")
    say("stopped")


@click.command("serve")
@click.argument("artifact", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--upstream", required=True, metavar="URL",
              help="The upstream API's base URL, as given to openai.OpenAI(base_url=...), e.g. "
              "https://api.example.com/v1.")
@_host_port
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the upstream on each try (the whole request has --request-timeout).")
@click.option("--retries", type=click.IntRange(0, 10), default=3, show_default=True,
              help="Retries on refused connections, timeouts and 5xx answers (backoff 0.5 s, doubling, or the "
              "upstream's Retry-After when it asks 8 s or less).")
@limit_options(ProxyLimits)
def serve_command(artifact: str, upstream: str, host: str, port: int, timeout: float, retries: int,
                  **limits) -> None:
    """Serve an OpenAI-compatible API that applies an `ike` or `retrieval` artifact in front of URL.

    Requests inside an edit's scope are rewritten to carry the edit (streamed ones too); all
    others go upstream byte for byte.  Callers send their own API key; it is forwarded, never
    logged.  Oversized bodies (413), overload (503 + Retry-After) and slow requests (504) are
    refused before anything is embedded or forwarded.

    \b
    Examples:
      editspec compile specs/examples/leadership.edit --backend retrieval -o build/lead.retrieval
      editspec serve build/lead.retrieval --upstream http://127.0.0.1:8000/v1 --port 8001
      editspec serve build/lead.retrieval --upstream https://api.example.com/v1 --max-body-bytes 2MiB
      curl -s http://127.0.0.1:8001/healthz      # 200 once the plugin is loaded and the upstream answers
    """
    from editspec.families.plugin.plugin import load_plugin, plugin_artifact
    from editspec.serve.proxy import create_proxy_app

    require_http_url(upstream)
    settings = make_limits(ProxyLimits, limits)
    found = plugin_artifact(artifact)        # a missing or white-box artifact is refused before listening
    app = create_proxy_app(lambda: load_plugin(found), upstream, timeout=timeout, retries=retries, limits=settings)
    run_app(app, host, port, f"{found.backend} plugin in front of {upstream}")


@click.command("serve-model")
@model_options
@click.option("--name", metavar="NAME", help="Model id to report in /v1/models (default: the model's name).")
@_host_port
@limit_options(ModelLimits, skip=("max_concurrent",))  # one model generates at a time
def serve_model_command(model: str | None, device: str | None, device_map: str | None, dtype: str | None,
                        name: str | None, host: str, port: int, **limits) -> None:
    """Serve a local model as an OpenAI-compatible API (completions, chat, logprobs, streaming).

    For testing black-box edits offline: point `editspec serve --upstream` or an openai client
    at it.  Temperature 0 is greedy.  One request generates at a time; others wait their turn
    (--max-waiting), and prompts longer than the model's context are refused with 400.

    \b
    Examples:
      editspec serve-model --model smollm2-135m --port 8000
      editspec serve-model --port 8000 --max-prompt-tokens 2048 --max-completion-tokens 256
    """
    from editspec.serve.model_server import create_model_app
    from editspec.model.loading import DEFAULT_MODEL, load_model, resolve_model

    settings = make_limits(ModelLimits, limits)
    resolve_model(model)                     # an unknown name is refused before listening
    app = create_model_app(lambda: load_model(model, device=device, device_map=device_map, dtype=dtype), name,
                           settings, announce=lambda message: click.echo(f"editspec: {message}", err=True))
    run_app(app, host, port, f"model {name or model or DEFAULT_MODEL} (loading)")


COMMANDS = [serve_command, serve_model_command]

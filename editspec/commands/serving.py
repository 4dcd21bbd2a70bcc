"""`editspec serve` (the editing proxy) and `editspec serve-model` (a local OpenAI-compatible API).

Both run uvicorn in the foreground until interrupted.  Access logs are off: a request line is
harmless, but nothing about callers (their Authorization header above all) is ever printed.
"""
from __future__ import annotations

import click

from editspec.commands.options import model_options, require_http_url
from editspec.errors import EditspecError


def _host_port(command):
    command = click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
                           help="Port to listen on (0: any free port, printed at start).")(command)
    return click.option("--host", default="127.0.0.1", show_default=True,
                        help="Address to listen on (0.0.0.0: every interface).")(command)


def run_app(app, host: str, port: int, what: str) -> None:
    """Serve `app` with uvicorn until interrupted, printing the base URL once listening."""
    import socket

    import uvicorn

    try:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        raise EditspecError(f"cannot listen on {host}:{port}: {error.strerror}",
                            hint="choose another --port (0 picks a free one) or --host") from None
    bound = listener.getsockname()[1]
    click.echo(f"editspec: {what} at http://{host}:{bound}/v1 (Ctrl-C stops)", err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[listener])


@click.command("serve")
@click.argument("artifact", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--upstream", required=True, metavar="URL",
              help="The upstream API's base URL, as given to openai.OpenAI(base_url=...), e.g. "
              "https://api.example.com/v1.")
@_host_port
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for the upstream.")
@click.option("--retries", type=click.IntRange(0, 10), default=3, show_default=True,
              help="Retries on refused connections, timeouts and 5xx answers (backoff 0.5 s, doubling).")
def serve_command(artifact: str, upstream: str, host: str, port: int, timeout: float, retries: int) -> None:
    """Serve an OpenAI-compatible API that applies an `ike` or `retrieval` artifact in front of URL.

    Requests inside an edit's scope are rewritten to carry the edit; all others go upstream
    byte for byte.  Callers send their own API key; it is forwarded, never logged.

    \b
    Examples:
      editspec compile specs/examples/leadership.edit --backend retrieval -o build/lead.retrieval
      editspec serve build/lead.retrieval --upstream http://127.0.0.1:8000/v1 --port 8001
    """
    from editspec.blackbox.plugin import load_plugin
    from editspec.blackbox.proxy import create_proxy_app

    require_http_url(upstream)
    plugin = load_plugin(artifact)
    app = create_proxy_app(plugin, upstream, timeout=timeout, retries=retries)
    run_app(app, host, port, f"{plugin.kind} plugin ({len(plugin.memory)} edits) in front of {upstream}")


@click.command("serve-model")
@model_options
@click.option("--name", metavar="NAME", help="Model id to report in /v1/models (default: the model's name).")
@_host_port
def serve_model_command(model: str | None, device: str | None, device_map: str | None, dtype: str | None,
                        name: str | None, host: str, port: int) -> None:
    """Serve a local model as an OpenAI-compatible API (completions, chat, logprobs, streaming).

    For testing black-box edits offline: point `editspec serve --upstream` or an openai client
    at it.  Temperature 0 is greedy.

    \b
    Examples:
      editspec serve-model --model smollm2-135m --port 8000
    """
    from editspec.blackbox.model_server import create_model_app
    from editspec.models import load_model

    loaded = load_model(model, device=device, device_map=device_map, dtype=dtype)
    run_app(create_model_app(loaded, name), host, port, f"model {name or loaded.name}")


COMMANDS = [serve_command, serve_model_command]

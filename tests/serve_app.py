"""`python tests/serve_app.py proxy --upstream URL [limits] --port 0`: the editing proxy with the
hashing stand-in plugin of blackbox_helpers, served as `editspec serve` serves (same flags,
banner and shutdown), for tests that must run the proxy in its own capped process without
compiling an artifact with the real embedder."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).parent))

from editspec.serve.guard import ProxyLimits  # noqa: E402
from editspec.serve.proxy import create_proxy_app  # noqa: E402
from editspec.commands.serving import limit_options, make_limits, run_app  # noqa: E402

from blackbox_helpers import make_plugin  # noqa: E402


@click.group()
def main():
    pass


@main.command()
@click.option("--upstream", required=True)
@click.option("--port", type=int, default=0)
@click.option("--retries", type=int, default=0)
@click.option("--timeout", type=float, default=30.0)
@limit_options(ProxyLimits)
def proxy(upstream: str, port: int, retries: int, timeout: float, **limits):
    folder = Path(tempfile.mkdtemp(prefix="editspec-proxy-"))
    app = create_proxy_app(lambda: make_plugin(folder), upstream, retries=retries, timeout=timeout,
                           backoff=0.01, limits=make_limits(ProxyLimits, limits))
    run_app(app, "127.0.0.1", port, "hash plugin (test)")


if __name__ == "__main__":
    main()

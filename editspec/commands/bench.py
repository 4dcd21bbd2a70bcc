"""`editspec bench`: compile and verify one spec with several backends; one comparison table."""
from __future__ import annotations

from pathlib import Path

import click

from editspec.commands.options import compile_options, fresh_option, model_options, parse_settings, progress, require_http_url

DEFAULT_BACKENDS = "rome,memit,ft,ike,retrieval"


@click.command("bench")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--backends", "-b", "backend_list", default=DEFAULT_BACKENDS, show_default=True, metavar="A,B,...",
              help="Comma-separated backends to compare (see `editspec backends`).")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False), metavar="DIR",
              help="Where the artifacts (DIR/<backend>) and bench.json go. Default: build/bench/<spec>.")
@click.option("--protocol", type=click.Choice(["compare", "teacher_forced", "generate", "logprob"]),
              help="Protocol of the white-box fact checks, as in `editspec verify`. Black-box backends "
              "(ike, retrieval) are always verified with `generate`, through an API.")
@click.option("--upstream", metavar="URL",
              help="Verify black-box plugins through this OpenAI-compatible API instead of the local model "
              "(served in-process on 127.0.0.1 by default).")
@click.option("--api-model", "api_model", default="default", show_default=True, metavar="NAME",
              help="The model name sent to --upstream.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print a Markdown table (for a PR or a README).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="PNG",
              help="Also draw a bar chart of the metrics and times per backend (needs matplotlib).")
@fresh_option
@compile_options
@model_options
def bench_command(spec, backend_list, out, protocol, upstream, api_model, as_markdown, as_json, plot,
                  fresh, settings, seed, model, device, device_map, dtype):
    """Compile and verify SPEC with each backend and print one comparison table.

    The model is loaded once and shared; every backend compiles from the unedited weights,
    except that where editspec.lock shows `editspec compile`'s artifact of a backend current but
    for added edits, that backend compiles only those, on top of it, and says so (--fresh: all).
    Columns: each verification metric under its protocol (mean score per check; totals are
    never averaged across protocols), compile and verify seconds, and the peak memory the
    backend added to the process.  Black-box backends (ike, retrieval) are verified with the
    `generate` protocol through an OpenAI-compatible API: the local model served in-process,
    or --upstream.  --set KEY=VALUE sets KEY on every backend that has it; --set
    rome.layer=5 sets it on one.  A progress line per backend goes to stderr; artifacts are
    kept in --out, with bench.json.

    A backend that cannot run is marked `error` with its reason and the others still run.
    Exit 0 when every backend ran and met the spec's `expect` lines, 1 when a backend ran but
    an expectation failed, 2 when a backend (or the bench) could not run.

    \b
    Examples:
      editspec bench specs/examples/first.edit --backends rome,ike
      editspec bench facts.edit --backends rome,memit,ft --set memit.layers=4..8 --markdown
      editspec bench facts.edit -b rome,retrieval --plot bench.png --json > bench.json
    """
    from editspec.bench.runner import run_bench
    from editspec.model.loading import ModelOptions
    from editspec.bench.render import markdown, plot as draw, pyplot, text, to_json
    from editspec.errors import EditspecError

    if as_markdown and as_json:
        raise EditspecError("choose one of --markdown and --json")
    if upstream:
        require_http_url(upstream)
    if plot:
        pyplot()  # refuse a missing matplotlib before minutes of compiling
    names = [name.strip() for name in backend_list.split(",") if name.strip()]
    result = run_bench(spec, names, model=model, out=out, overrides=parse_settings(settings), seed=seed,
                       protocol=protocol, upstream=upstream, api_model=api_model,
                       model_options=ModelOptions(device, device_map, dtype), progress=progress,
                       incremental=not fresh)
    Path(result.out).mkdir(parents=True, exist_ok=True)
    (Path(result.out) / "bench.json").write_text(to_json(result) + "\n", encoding="utf-8")
    if plot:
        draw(result, plot)
        progress(f"wrote {plot}")
    click.echo(to_json(result) if as_json else markdown(result) if as_markdown else text(result))
    return result


COMMANDS = [bench_command]

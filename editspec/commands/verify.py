"""`editspec verify`: run a spec's checks on an edited model and report; exit 1 when an expectation fails."""
from __future__ import annotations

from pathlib import Path

import click

from editspec.commands.options import compile_options, fresh_option, model_options, parse_settings, progress


@click.command("verify")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--artifact", "-a", type=click.Path(file_okay=False), metavar="DIR",
              help="A compiled artifact to verify (its model is loaded unless --model says otherwise).")
@click.option("--backend", "-b", metavar="B",
              help="Compile SPEC with backend B first, into a temporary directory: on top of `editspec compile`'s "
              "artifact when the lock shows the spec only gained edits since (see --fresh).")
@click.option("--no-edit", "no_edit", is_flag=True, help="Verify the unedited model: the baseline every edit starts from.")
@click.option("--protocol", type=click.Choice(["compare", "teacher_forced", "generate", "logprob", "chat"]),
              help="Protocol of the fact checks (efficacy, generalization, locality, portability). "
              "Default: compare when the spec gives something to beat, else teacher_forced.")
@click.option("--chat", "chat", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="Also run the fact checks under the chat protocol (each question as a user turn through the "
              "model's chat template, the greedy reply judged): auto does so when the tokenizer has a chat "
              "template, off never (an expect line naming [chat] still runs them).")
@click.option("--max-new-tokens", "max_new_tokens", type=click.IntRange(min=1), default=48, show_default=True,
              metavar="N", help="Longest chat reply (it also ends with the assistant's turn) and longest free "
              "generation of the generate protocol's fact checks, in tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report (raw outputs included) as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write JUnit XML (one testcase per check and per expectation) for CI.")
@click.option("--markdown", type=click.Path(dir_okay=False), metavar="FILE", help="Write a pull-request summary.")
@click.option("--failures-only", is_flag=True, help="List only failing checks in the terminal table.")
@click.option("--upstream", metavar="URL",
              help="Verify through an OpenAI-compatible API at URL (generate protocol): with --artifact an "
              "`ike` or `retrieval` plugin in front of it, with --no-edit the API as it is.")
@click.option("--api-model", "api_model", default="default", show_default=True, metavar="NAME",
              help="The model name sent to --upstream.")
@fresh_option
@compile_options
@model_options
def verify_command(spec, artifact, backend, no_edit, protocol, chat, max_new_tokens, as_json, junit, markdown, failures_only,
                   upstream, api_model, fresh, settings, seed, model, device, device_map, dtype):
    """Verify SPEC: every check it implies, on the edited model, against the unedited one.

    Checks: efficacy, generalization, locality, portability, canonical, hard_negatives,
    forget, preserve and fluency, each under a named protocol (compare, teacher_forced,
    generate, logprob, chat) printed next to its number; totals are never averaged across
    protocols.  On an instruct model (a tokenizer with a chat template) the fact checks also run
    as chat, shown beside the default protocol; an `expect` line reads the default protocol
    unless it names one (`efficacy[chat] >= 0.9`).
    The unedited model's outputs are computed once and cached.  Exit 0 when every `expect`
    line and preserve budget holds, 1 when one fails, 2 when verification could not run.

    \b
    Examples:
      editspec verify specs/examples/capitals.edit --artifact build/capitals.rome
      editspec verify specs/examples/capitals.edit --backend memit --set layers=4..8
      editspec verify specs/examples/capitals.edit --no-edit --junit verify.xml
      editspec verify facts.edit --artifact build/facts.memit --json      # chat replies of both models inside
      editspec verify facts.edit --artifact build/facts.memit --protocol generate --max-new-tokens 64
      editspec verify facts.edit --artifact build/facts.retrieval --upstream http://127.0.0.1:8000/v1
    """
    from editspec.verify.report import junit as junit_xml, markdown as markdown_text, terminal, to_json
    from editspec.model.loading import ModelOptions
    from editspec.verify.session import verify_spec

    if upstream:
        report = _verify_through_api(spec, upstream, artifact, backend, no_edit, api_model)
    else:
        report = verify_spec(spec, artifact=artifact, backend=backend, no_edit=no_edit, model=model,
                             overrides=parse_settings(settings), seed=seed, protocol=protocol,
                             model_options=ModelOptions(device, device_map, dtype), progress=progress, chat=chat,
                             max_new_tokens=max_new_tokens, incremental=not fresh)
    if junit:
        Path(junit).write_text(junit_xml(report), encoding="utf-8")
    if markdown:
        Path(markdown).write_text(markdown_text(report), encoding="utf-8")
    click.echo(to_json(report) if as_json else terminal(report, show_passed=not failures_only))
    return report


def _verify_through_api(spec, upstream, artifact, backend, no_edit, api_model):
    from editspec.verify.api import verify_api
    from editspec.errors import EditspecError

    if backend:
        raise EditspecError("--upstream verifies a compiled plugin: compile it first, then pass --artifact",
                            hint="e.g. editspec compile SPEC --backend retrieval -o build/x.retrieval")
    if artifact is None and not no_edit:
        raise EditspecError("--upstream needs --artifact (a plugin to verify) or --no-edit (the API as it is)")
    progress(f"verifying through {upstream}")
    return verify_api(spec, upstream, artifact=None if no_edit else artifact, model=api_model)


COMMANDS = [verify_command]

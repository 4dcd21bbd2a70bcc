"""`editspec compile` and `editspec apply`: specs to artifacts, artifacts to checkpoints."""
from __future__ import annotations

import click

from editspec.commands.options import compile_options, fresh_option, model_options, parse_settings, progress, warn


@click.command("compile")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--backend", "-b", metavar="B",
              help="The backend: rome, memit, alphaedit, ... (see `editspec backends`). "
              "Default: the spec's only `backend` block.")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False),
              help="The artifact directory (default build/<spec>.<backend>). Written whole or not at all.")
@click.option("--on", "on", type=click.Path(file_okay=False), metavar="PREVIOUS",
              help="An earlier artifact of the same backend: compile only the edits it lacks, on top of it.")
@fresh_option
@click.option("--no-lock", "no_lock", is_flag=True, help="Do not record the artifact in editspec.lock next to the spec.")
@compile_options
@model_options
def compile_command(spec, backend, output, on, fresh, no_lock, settings, seed, model, device, device_map, dtype):
    """Compile SPEC into an artifact: the edit, ready to apply or verify.

    The artifact directory holds manifest.json (what was compiled, how, on which model),
    ir.json and the payload (delta.safetensors for weight edits).  The same spec, model,
    settings and seed give the same payload bytes.  The base model is never modified.

    The artifact is recorded in editspec.lock beside the spec (see `editspec status`).  When
    the lock shows that the spec has only gained edits since its artifact was compiled, and
    the backend edits sequentially, only the new edits are compiled, on top of it (as with
    --on); a removed or changed edit compiles everything from the base model.

    \b
    Examples:
      editspec compile specs/examples/capitals.edit --backend rome
      editspec compile facts.edit --backend memit --set layers=4..8 -o build/facts.memit
      editspec compile facts.edit --backend alphaedit --on build/facts.alphaedit -o build/facts.v2
    """
    from editspec.build.compiler import compile_spec, contents
    from editspec.gitflow.lock import record_artifact
    from editspec.model.loading import ModelOptions

    overrides = parse_settings(settings)
    artifact = compile_spec(spec, backend, model=model, out=output, overrides=overrides, seed=seed, on=on,
                            incremental=not fresh, model_options=ModelOptions(device, device_map, dtype),
                            progress=progress, warn=warn)
    backend = artifact.backend
    if not no_lock:
        record_artifact(artifact, spec=spec, overrides=overrides)
    manifest = artifact.manifest
    # Black-box plugins are compiled for any API model: their manifest names no model.
    target = f"on {manifest.model.name}" if manifest.model else "for API models"
    click.echo(f"{artifact.path}: {contents(manifest)} with {backend} {target} "
               f"in {manifest.timings['total']:.1f} s (payload {manifest.payload.hash[:12]})")


@click.command("apply")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), required=True,
              help="Where to write the edited checkpoint (a new directory).")
@model_options
def apply_command(artifact, output, model, device, device_map, dtype):
    """Merge a weight-editing ARTIFACT into a standalone checkpoint at OUTPUT.

    The result loads with plain transformers (`AutoModelForCausalLM.from_pretrained(OUTPUT)`)
    and carries editspec-artifact.json saying where it came from.  The base model's files are
    only read.

    \b
    Example:
      editspec apply build/capitals.rome -o build/smollm2-capitals
    """
    from editspec.build.apply import write_edited_checkpoint
    from editspec.model.loading import ModelOptions

    path = write_edited_checkpoint(artifact, output, model=model, model_options=ModelOptions(device, device_map, dtype),
                                   progress=progress)
    click.echo(f"wrote {path}")


@click.command("backends")
@click.option("--json", "as_json", is_flag=True, help="As JSON, with every setting and its default.")
def backends_command(as_json):
    """List the installed backends and their settings, with defaults and descriptions."""
    import json

    from editspec.build.registry import backends

    table = backends()
    if as_json:
        data = {name: {"summary": entry.summary,
                       "settings": {key: {"default": _json_default(field.default), "description": field.description}
                                    for key, field in entry.config_class().model_fields.items()}}
                for name, entry in table.items()}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for name, entry in table.items():
        click.echo(f"{name:<10} {entry.summary}")
        for key, field in entry.config_class().model_fields.items():
            click.echo(f"  {key:<24} {field.default!r:<14} {field.description}")


def _json_default(value):
    import json

    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


COMMANDS = [compile_command, apply_command, backends_command]

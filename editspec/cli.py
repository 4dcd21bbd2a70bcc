"""The `editspec` command line.

Commands are thin: they call the library and print.  Exit codes follow one contract, applied
here and nowhere else: 0 success, 1 it ran but a check or expectation failed, 2 it could not
run (usage, syntax or validation error, missing model).  The front-end commands (check, fmt,
ir) never import torch, so they start fast.
"""
from __future__ import annotations

import sys
import traceback

import click

from editspec import __version__
from editspec.errors import EditspecError, Outcome

EXIT_OK, EXIT_FAILED, EXIT_ERROR = Outcome.OK, Outcome.FAILED, Outcome.ERROR


def exit_code_of(result) -> int:
    """The exit code for what a command returned: an `Outcome`, a result with an `exit_code`
    (a verification report, a bench result), or None for success."""
    if result is None:
        return EXIT_OK
    if isinstance(result, Outcome):
        return int(result)
    code = getattr(result, "exit_code", None)
    if code is None:
        raise TypeError(f"a command returned {type(result).__name__}, which says no outcome")
    return int(Outcome(code))


class EditspecGroup(click.Group):
    """A click group that maps what commands return, and `EditspecError`, to exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
        except EditspecError as error:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(error.render(color=_stderr_is_tty()), err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        code = exit_code_of(result)
        if code != EXIT_OK:
            ctx.exit(code)
        return result


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


@click.group(cls=EditspecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="editspec")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors (for reporting bugs).")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Knowledge edits for language models, as code.

    Write facts to change in a `.edit` file, check it, compile it against a model with a
    backend, and verify the result.

    \b
    Examples:
      editspec check specs/examples/leadership.edit
      editspec fmt --check specs/
      editspec ir specs/examples/leadership.edit > leadership.ir.json
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Command modules register themselves here; each lists its click commands in `COMMANDS`.
_COMMAND_MODULES = [
    "frontend",
    "models",
    "build",
    "importing",
    "gitflow",
    "serving",
    "verify",
    "bench",
]


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"editspec.commands.{name}")
        for command in module.COMMANDS:
            main.add_command(command)


_register_commands()


def run() -> None:
    """The `editspec` console command: `main`, with torch's CPU threads fitted to the cores other work leaves free
    (`editspec.model.threads`; tests call `main` itself).  The front-end commands, which never load torch, skip
    the fitting's 0.1 s look at the machine."""
    from editspec.commands.frontend import COMMANDS as FRONT_END
    from editspec.model.threads import fit_threads_to_machine

    words = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    if not words or words[0] not in {command.name for command in FRONT_END}:
        fit_threads_to_machine()
    main()

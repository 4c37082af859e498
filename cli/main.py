"""Entry point: ``dpaudit <command>``. One module per command group, joined here.

A run of one command imports only the module that defines it (``COMMANDS``): the other command modules bring
their own libraries (the profile's schema, the attack's scenarios), and ``dpaudit bounds`` should start in a
fraction of a second. ``dpaudit --help`` (or an unknown command) builds the whole app, as does ``app``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from dpaudit import __version__

#: Command (or command group) name -> the module of ``dpaudit.cli`` that defines it, in the order of ``--help``.
COMMANDS = {
    "bounds": "bounds_cmd", "calibrate": "bounds_cmd",
    "attack": "attack_cmd",
    "train": "train_cmd",
    "report": "profile_cmd", "profile": "profile_cmd",
    "mia": "mia_cmd",
    "federated": "federated_cmd",
}
#: Modules whose commands sit under a group name (``dpaudit mia bound``); the others add theirs at the top level.
GROUPS = {"mia_cmd": "mia", "federated_cmd": "federated"}
#: Commands that do no linear algebra (the bounds are FFTs and elementwise numpy), and help: for them OpenBLAS need
#: not start a thread per core when numpy is imported (about 0.05 s of CPU per start on 2 cores, more on more).
#: Training and the attacks keep OpenBLAS' default; a user's own OPENBLAS_NUM_THREADS is never overridden.
NO_BLAS = {("bounds",), ("calibrate",), ("mia", "bound"), ("mia", "one-run"), ()}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dpaudit {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Privacy-risk auditing for differentially private medical-imaging models."""


def build_app(modules: list[str] | None = None) -> typer.Typer:
    """The typer app with the commands of ``modules`` (default: every module of ``COMMANDS``)."""
    app = typer.Typer(
        name="dpaudit",
        help="Privacy-risk auditing for differentially private medical-imaging models.",
        no_args_is_help=True,
        add_completion=False,
        # Tracebacks with local variables may print patient data: never show them.
        pretty_exceptions_show_locals=False,
        rich_markup_mode="rich",
    )
    app.callback()(_root)
    for module in modules or dict.fromkeys(COMMANDS.values()):
        app.add_typer(importlib.import_module(f"dpaudit.cli.{module}").app, name=GROUPS.get(module))
    return app


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command line (built on first use; tests drive it with typer's CliRunner)."""
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    command = words[0] if words else None
    if tuple(words[:2 if command == "mia" else 1]) in NO_BLAS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read by OpenBLAS when numpy loads it, below
    build_app([COMMANDS[command]] if command in COMMANDS else None)()


if __name__ == "__main__":
    main()

"""Entry point: ``dpaudit <command>``. One module per command group, joined here."""

from __future__ import annotations

import typer

from dpaudit import __version__
from dpaudit.cli import attack_cmd, bounds_cmd, federated_cmd, mia_cmd, profile_cmd, train_cmd

app = typer.Typer(
    name="dpaudit",
    help="Privacy-risk auditing for differentially private medical-imaging models.",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks with local variables may print patient data: never show them.
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dpaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Privacy-risk auditing for differentially private medical-imaging models."""


# One Typer app per command group; the groups without a name add their commands at the top level.
app.add_typer(bounds_cmd.app)
app.add_typer(attack_cmd.app)
app.add_typer(train_cmd.app)
app.add_typer(profile_cmd.app)
app.add_typer(mia_cmd.app, name="mia")
app.add_typer(federated_cmd.app, name="federated")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

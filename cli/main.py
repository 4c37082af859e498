"""Entry point: ``dpaudit <command>``. One module per command group, joined here.

A run of one command imports only the module that defines it (``COMMANDS``): the other command modules bring
their own libraries (the profile's schema, the attack's scenarios), and ``dpaudit bounds`` should start in a
fraction of a second. ``dpaudit --help`` (or an unknown command) builds the whole app, as does ``app``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

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


#: The usage-error class of the click that Typer runs on (typer >= 0.26 carries its own copy of click, so it is not
#: ``click.UsageError``): the base of the public ``typer.BadParameter``.
UsageError = typer.BadParameter.__mro__[1]
if UsageError.__name__ != "UsageError":  # a Typer that changed this layout fails at once, loudly
    raise ImportError(f"typer.BadParameter derives from {UsageError!r}, not a UsageError: update dpaudit.cli.main")

#: What to type instead, by the Python type an option was declared with.
_TYPE_FIX = {float: "a number, e.g. 0.5 or 1e-5", int: "a whole number, e.g. 10", bool: "true or false"}


def _wanted(param: object) -> str:
    """What an option takes, in words: its choices, or its type (Typer keeps the declared annotation; a plain click
    parameter keeps ``type``)."""
    import enum
    import typing

    descriptor, click_type = getattr(param, "type_descriptor", None), getattr(param, "type", None)
    kind = getattr(descriptor, "annotation", None)
    if kind is None:
        kind = {"float": float, "integer": int, "int": int, "boolean": bool, "bool": bool}.get(
            getattr(click_type, "name", ""))
    choices = getattr(descriptor, "choices", None) or getattr(click_type, "choices", None)
    while typing.get_args(kind) and not isinstance(kind, type):  # list[float], float | None
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), None)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = [m.value for m in kind]
    if choices:
        return "one of " + ", ".join(str(getattr(c, "value", c)) for c in choices)
    return _TYPE_FIX.get(kind, "a valid value")  # type: ignore[arg-type]


def _values_given(argv: list[str], flag: str) -> list[str]:
    """The values typed after ``flag`` (``--flag VALUE`` or ``--flag=VALUE``) in the command line ``argv``."""
    found = [a.partition("=")[2] for a in argv if a.startswith(flag + "=")]
    found += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return found


def _command_path(root: typer.Context | None, argv: list[str]) -> str:
    """``dpaudit mia bound``: the program and the (sub)command names ``argv`` starts with."""
    if root is None:
        return "dpaudit"
    path, cmd = [root.command_path], root.command
    for word in argv:
        sub = getattr(cmd, "commands", {}).get(word)
        if sub is None:
            break
        path.append(word)
        cmd = sub
    return " ".join(path)


#: How alike a mistyped option and one of the command's must be (difflib's ratio, the leading dashes left out) to
#: be offered: 0.75 keeps a typo or a missing letter (--sigam, --epsilon for --epsilons) and drops the chance
#: overlaps difflib's default 0.6 lets through on the dashes alone (--delta -> --help, --nosuch -> --roc).
SUGGEST_CUTOFF = 0.75


def near_options(typed: str, command: object) -> list[str]:
    """The options of ``command`` (a click command) that ``typed`` is probably a misspelling of, best first.

    >>> import typer
    >>> command = typer.core.TyperCommand("x", params=[typer.core.TyperOption(param_decls=["--epsilons"]),
    ...                                               typer.core.TyperOption(param_decls=["--delta"])])
    >>> near_options("--epsilon", command), near_options("--nosuch", command)
    (['--epsilons'], [])
    """
    import difflib

    flags = {o.lstrip("-"): o for p in getattr(command, "params", ()) for o in getattr(p, "opts", ())
             if o.startswith("--")}
    flags.setdefault("help", "--help")
    found = difflib.get_close_matches(typed.partition("=")[0].lstrip("-"), list(flags), n=3,
                                      cutoff=SUGGEST_CUTOFF)
    return [flags[f] for f in found]


def _extra_arguments(exc: Exception, argv: list[str]) -> list[str]:
    """The words of ``argv`` that the command of ``exc`` (a complaint about a missing option) takes no place for:
    click checks for them only after every option is present, so ``dpaudit profile extra_arg`` would otherwise
    be told that --out is missing rather than that ``extra_arg`` is not understood."""
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command", None)
    if ctx is None or command is None:
        return []
    names = ctx.command_path.split()[1:]
    rest = list(argv)
    for name in names:  # the words after the command's own name
        if name not in rest:
            return []
        rest = rest[rest.index(name) + 1:]
    try:
        probe = command.make_context(ctx.info_name, rest, parent=ctx.parent, resilient_parsing=True)
    except UsageError:  # a second complaint: the first one stands
        return []
    return [] if command.allow_extra_args else list(probe.args)


def _extra_line(extra: list[str], see: str) -> str:
    """The complaint about words on the command line that no option or argument takes."""
    many = len(extra) > 1
    words = ", ".join(f"'{w}'" for w in extra)
    return (f"unexpected extra argument{'s' if many else ''} {words}. Fix: remove {'them' if many else 'it'}, give "
            f"each value right after its option, or quote a value that has spaces; {see}.")


def usage_line(exc: Exception, argv: list[str] | None = None, root: typer.Context | None = None) -> str:
    """The one line (without "error: ") a parser complaint prints: click's message, the value typed (``argv``: the
    command line after the program's name, ``root``: the program's context), and a fix that uses the command's own
    flags and its --help.

    >>> import typer
    >>> usage_line(typer.BadParameter("'abc' is not a valid float.", param_hint="'--sigma'"))
    "Invalid value for '--sigma': 'abc' is not a valid float. Fix: see 'dpaudit --help'."
    """
    see = f"see '{_command_path(root, argv or [])} --help'"
    kind = type(exc).__name__
    if kind == "MissingParameter":
        extra = _extra_arguments(exc, argv or [])
        if extra:
            return _extra_line(extra, see)
    if kind == "NoSuchOption":  # click's suggestions match on the dashes alone: offer only real near misses
        typed = getattr(exc, "option_name", "")
        exc.possibilities = near_options(typed, getattr(getattr(exc, "ctx", None), "command", None))  # type: ignore[attr-defined]
    message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    if message.startswith("Got unexpected extra argument") and message.endswith(")"):
        return _extra_line(message[message.rindex(" (") + 2:-1].split(), see)
    stop = "" if message.endswith(("?", "!")) else "."
    param = getattr(exc, "param", None)
    flags = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    if flags and kind == "MissingParameter":
        fix = f"pass {flags[0]} {_wanted(param)}; {see}"
    elif flags:
        given = [v for f in flags for v in _values_given(argv or [], f)]
        if given and not any(f"'{v}'" in message for v in given):
            message += " (got " + ", ".join(f"'{v}'" for v in given) + ")"
        fix = f"pass {flags[0]} {_wanted(param)}; {see}"
    elif kind == "RepeatedOption":
        fix = f"{exc.fix}; {see}"  # type: ignore[attr-defined]
    elif kind == "NoSuchOption":
        fix = f"use an option the command has, spelt out in full; {see}"
    elif kind == "BadOptionUsage":
        fix = f"give {getattr(exc, 'option_name', 'the option')} its value right after it; {see}"
    elif message.startswith("No such command"):
        fix = f"use one of the commands; {see}"
    else:
        fix = see
    return f"{message}{stop} Fix: {fix}."


class RepeatedOption(UsageError):  # type: ignore[misc, valid-type]
    """A single-valued option given more than once: the parser would keep the last copy and drop the others
    without a word (``--max-rero 0.05 --max-rero 0.5`` calibrates for 0.5), so it is refused."""

    def __init__(self, message: str, fix: str, ctx: typer.Context | None = None) -> None:
        super().__init__(message, ctx=ctx)
        self.fix = fix


def _typed(raw: str | None, key: str, value: object) -> str:
    """An option occurrence as the user typed it: ``--max-rero=0.5`` or ``--max-rero 0.5``, ``--json``."""
    if raw is not None and "=" in raw and raw.partition("=")[0] == key:
        return raw
    return key if value is None else f"{key} {value}"


def refuse_repeats(parser: Any, ctx: typer.Context) -> Any:
    """Make the click option parser ``parser`` (of a command, for ``ctx``) refuse a single-valued option given
    twice (:class:`RepeatedOption`), as the user typed it, with both values, before any value is converted and
    before the command runs. Options that take several values (``multiple``) and counts are left alone; a boolean
    flag given twice the same way passes, ``--flag --no-flag`` together is refused.

    The hook wraps each option of click's parser: click records every occurrence (``state.order``) but keeps only
    the last value of a ``store`` option. A click whose parser has no ``_long_opt``/``_short_opt`` tables fails
    here, loudly, rather than letting repeats through.
    """
    seen: dict[int, tuple[str, str, object]] = {}  # the parameter's id -> (key typed, as typed, value or const)
    raw: list[str | None] = [None]
    process_opts = parser._process_opts

    def current(arg: str, state: Any) -> None:  # the word being parsed, for --opt=value
        raw[0] = arg
        return process_opts(arg, state)

    parser._process_opts = current

    def wrap(key: str, option: Any) -> Any:
        if option.action not in ("store", "store_const"):  # append, append_const, count: repeating is the point
            return option
        proxy = copy.copy(option)

        def process(value: Any, state: Any) -> None:
            got = option.const if option.action == "store_const" else value
            shown = _typed(raw[0], key, None if option.action == "store_const" else value)
            before = seen.get(id(option.obj))
            if before is not None and not (option.action == "store_const" and before[2] == got):
                name = "/".join(option.obj.opts)
                if option.action == "store_const":  # --flag and --no-flag
                    both = " or ".join((*option.obj.opts, *option.obj.secondary_opts))
                    message = f"{before[1]} and {shown} were both given and contradict each other"
                    fix = f"give one of {both}, once"
                else:
                    message = (f"{name} was given more than once: '{before[1]}' and '{shown}' (it takes one value; "
                               "only the last would be used)")
                    fix = f"give {name} once"
                raise RepeatedOption(message, fix, ctx=ctx)
            seen.setdefault(id(option.obj), (key, shown, got))
            option.process(value, state)

        proxy.process = process
        return proxy

    for table in (parser._long_opt, parser._short_opt):
        for key, option in list(table.items()):
            table[key] = wrap(key, option)
    return parser


class _OnceOptions(typer.core.TyperCommand):
    """Every command of the app: a single-valued option given twice is refused (:func:`refuse_repeats`), unless the
    command line asks for the command's help (``--help`` anywhere before ``--``), which it then shows."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta[_HELP_ASKED] = _asks_for_help(self, ctx, args)
        return super().parse_args(ctx, args)

    def make_parser(self, ctx: typer.Context) -> Any:
        parser = super().make_parser(ctx)
        return parser if ctx.meta.get(_HELP_ASKED) else refuse_repeats(parser, ctx)


_HELP_ASKED = "dpaudit.help_asked"


def _asks_for_help(command: Any, ctx: typer.Context, args: list[str]) -> bool:
    """Whether click will read a help option in ``args``: a word ``--help`` that is not the value of an option before
    it (``--plot --help`` writes a plot named --help) and comes before ``--``."""
    takes = {opt: p.nargs for p in command.get_params(ctx) if getattr(p, "param_type_name", "") == "option"
             and not getattr(p, "is_flag", False) and not getattr(p, "count", False) for opt in p.opts}
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            return False
        if word in ctx.help_option_names:
            return True
        i += 1 + (takes.get(word, 0) if "=" not in word else 0)
    return False


def _every_command(app: typer.Typer) -> Iterator[Any]:
    """The registered commands (Typer's ``CommandInfo``) of ``app`` and of its groups, at any depth."""
    yield from app.registered_commands
    for group in app.registered_groups:
        if group.typer_instance is not None:
            yield from _every_command(group.typer_instance)


class _OneLineErrors(typer.core.TyperGroup):
    """The command line's group: a parser complaint (an unreadable value, an unknown option, a missing one) is one
    line on stderr naming the flag, the value and a fix, and exit code 2, like every other error of dpaudit (not
    Typer's multi-line box). Groups nest, so the outer one catches the complaints of every command below it."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault(_ARGV, list(args))  # the whole command line, for naming the value in a complaint
        with _one_line(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> object:
        with _one_line(ctx):
            return super().invoke(ctx)


_ARGV = "dpaudit.argv"


@contextlib.contextmanager
def _one_line(ctx: typer.Context) -> Iterator[None]:
    """Print a parser complaint raised inside as one line (:func:`usage_line`) and exit with code 2; the help a
    bare group shows (``dpaudit mia``) passes through."""
    try:
        yield
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            raise
        from rich.markup import escape

        from dpaudit.cli._common import err

        line = usage_line(exc, ctx.meta.get(_ARGV), ctx.find_root())
        err.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)
        raise typer.Exit(code=2) from None


def build_app(modules: list[str] | None = None) -> typer.Typer:
    """The typer app with the commands of ``modules`` (default: every module of ``COMMANDS``)."""
    app = typer.Typer(
        name="dpaudit",
        cls=_OneLineErrors,
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
    for info in _every_command(app):  # every command, a new one too, refuses an option given twice
        if info.cls in (None, typer.core.TyperCommand):  # Typer's default class
            info.cls = _OnceOptions
        elif not issubclass(info.cls, _OnceOptions):
            raise TypeError(f"command {info.name or info.callback}: its class {info.cls!r} must derive from "
                            "dpaudit.cli.main._OnceOptions (options given twice are refused)")
    return app


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command line (built on first use; tests drive it with typer's CliRunner)."""
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a batch scheduler's time limit) ends a command as Ctrl-C does: by an exception in the main
    thread, so every ``finally`` runs, worker processes are stopped and no half-written file is left under its
    final name. Python's default would end this process alone and leave its workers training."""
    from dpaudit.cli._common import Stopped

    raise Stopped(signum)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    command = words[0] if words else None
    if tuple(words[:2 if command == "mia" else 1]) in NO_BLAS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read by OpenBLAS when numpy loads it, below
    build_app([COMMANDS[command]] if command in COMMANDS else None)()


if __name__ == "__main__":
    main()

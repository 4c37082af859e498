"""A single-valued option given twice is refused by every command, before any work: the parser would otherwise keep
the last copy without a word (``calibrate --max-rero 0.05 --max-rero 0.5`` returned the sigma for 0.5).

The commands and their options are discovered from the app, so a new command or option is covered without editing
this file. Options that take several values (``multiple``) and counts may repeat; a boolean flag given twice the same
way passes, ``--flag --no-flag`` is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()


def _leaves(cmd: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    commands = getattr(cmd, "commands", None)
    if isinstance(commands, dict):
        for name, sub in commands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield path, cmd


def _kind(p: object) -> str:
    if getattr(p, "multiple", False) or getattr(p, "count", False):
        return "many"
    return "flag" if getattr(p, "is_flag", False) else "value"


COMMANDS = list(_leaves(typer.main.get_command(app)))
OPTIONS = [(path, p) for path, cmd in COMMANDS for p in cmd.params if getattr(p, "opts", None)
           and p.opts[0].startswith("-") and p.name != "help"]
SINGLE = [pytest.param(path, p.opts, id=f"{' '.join(path)} {p.opts[0]}") for path, p in OPTIONS
          if _kind(p) == "value"]
FLAGS = [pytest.param(path, p.opts, p.secondary_opts, id=f"{' '.join(path)} {p.opts[0]}") for path, p in OPTIONS
         if _kind(p) == "flag"]
MANY = [pytest.param(path, p.opts[0], id=f"{' '.join(path)} {p.opts[0]}") for path, p in OPTIONS
        if _kind(p) == "many"]


def _one_line_refusal(result: object) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_every_command_has_single_valued_options_under_test() -> None:
    assert {path for path, *_ in (p.values for p in SINGLE)} == {path for path, _ in COMMANDS}


@pytest.mark.parametrize(("path", "opts"), SINGLE)
def test_a_single_valued_option_given_twice_is_refused(path: tuple[str, ...], opts: list[str]) -> None:
    line = _one_line_refusal(runner.invoke(app, [*path, opts[0], "1", opts[-1], "2"]))
    name = "/".join(opts)
    assert f"{name} was given more than once: '{opts[0]} 1' and '{opts[-1]} 2'" in line
    assert f"Fix: give {name} once" in line


@pytest.mark.parametrize(("path", "opts"), SINGLE[:1] + [p for p in SINGLE if "calibrate" in p.values[0]])
def test_the_equals_form_is_named_as_typed(path: tuple[str, ...], opts: list[str]) -> None:
    line = _one_line_refusal(runner.invoke(app, [*path, f"{opts[0]}=0.05", opts[0], "0.5"]))
    assert f"'{opts[0]}=0.05' and '{opts[0]} 0.5'" in line


@pytest.mark.parametrize(("path", "opts", "negatives"), FLAGS)
def test_a_flag_and_its_negation_together_are_refused(path: tuple[str, ...], opts: list[str],
                                                      negatives: list[str]) -> None:
    twice = runner.invoke(app, [*path, opts[0], opts[0], "--help"])  # the same flag twice: allowed
    assert twice.exit_code == 0, twice.output
    if not negatives:
        return
    line = _one_line_refusal(runner.invoke(app, [*path, opts[0], negatives[0]]))
    assert f"{opts[0]} and {negatives[0]} were both given" in line
    assert f"Fix: give one of {' or '.join((*opts, *negatives))}, once" in line


@pytest.mark.parametrize(("path", "opt"), MANY)
def test_options_that_take_several_values_may_repeat(path: tuple[str, ...], opt: str) -> None:
    result = runner.invoke(app, [*path, opt, "1", opt, "2", "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args", [
    ["calibrate", "--max-rero", "0.05", "--max-rero", "0.5", "--q", "0.01", "--steps", "1000", "--kappa", "1e-3",
     "--json"],
    ["calibrate", "--kappa", "1e-2", "--kappa", "1e-3", "--max-rero", "0.05", "--q", "0.01", "--steps", "1000"],
    ["calibrate", "--threat-model", "worst_case", "--threat-model", "relaxed", "--max-rero", "0.05"],
    ["calibrate", "--n-train", "100", "--n-train", "1000", "--max-rero", "0.05", "--q", "0.01", "--steps", "10"],
    ["bounds", "--sigma", "1", "--sigma", "3", "--q", "0.01", "--q", "0.5"],
])
def test_the_reported_repeats_are_refused_with_no_output(args: list[str]) -> None:
    result = runner.invoke(app, args)
    line = _one_line_refusal(result)
    assert "was given more than once" in line
    assert result.stdout == ""


@pytest.mark.parametrize("path", sorted({path for path, _ in COMMANDS}), ids=" ".join)
def test_help_is_shown_even_with_an_option_given_twice(path: tuple[str, ...]) -> None:
    """``--help`` asks for the command's help, whatever else the line holds: a repeat is not refused then."""
    cmd = dict(COMMANDS)[path]
    opt = next(p.opts[0] for p in cmd.params if getattr(p, "opts", None) and p.opts[0].startswith("-")
               and p.name != "help" and _kind(p) == "value")
    result = runner.invoke(app, [*path, opt, "1", opt, "2", "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "more than once" not in result.output


def test_a_help_word_read_as_an_option_value_does_not_lift_the_check(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``--plot --help`` gives --plot the value '--help' (click reads it so): no help is shown, so the repeat is
    refused, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    line = _one_line_refusal(runner.invoke(app, ["bounds", "--sigma", "1", "--sigma", "3", "--q", "0.01", "--steps",
                                                 "100", "--kappa", "1e-3", "--plot", "--help", "--json"]))
    assert "--sigma was given more than once" in line
    assert list(tmp_path.iterdir()) == []

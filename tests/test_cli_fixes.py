"""Every error a user can cause is followable: one line with a "Fix:" that names the flag the user typed (not the
library's field name for it), and every flag the message names exists on the command that printed it.

Robust to the CLI being reorganised: the commands and their options are discovered from the Typer app (any
nesting of sub-apps), and the bad inputs are generated from each option's type (out-of-range numbers, text that is
no valid value, malformed number lists, odd weights files for file options), not from a hand-kept list. Data
loading is replaced by a stub that fails at once, so that no invocation that gets past validation starts a long
training run; the stub's message names no flag, and a value that is out of range for every option (-1) must be
refused before the data are loaded.
"""

from __future__ import annotations

import enum
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.errors import DataError

runner = CliRunner()
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
QUOTED = re.compile(r"`dpaudit ([^`]*)`")
#: Options whose value is a weights file (by name): they get every odd file kind 7 lists.
WEIGHTS_OPTIONS = re.compile(r"--(model|init|inits|checkpoint|weights)$")


def leaf_commands(cmd: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command under ``cmd`` (groups nest); duck-typed, as Typer may vendor its own click."""
    commands = getattr(cmd, "commands", None)
    if isinstance(commands, dict):
        for name, sub in commands.items():
            yield from leaf_commands(sub, (*path, name))
    else:
        yield path, cmd


def _options(cmd: object) -> list[object]:
    return [p for p in getattr(cmd, "params", []) if any(o.startswith("--") for o in getattr(p, "opts", ()))]


def option_names(cmd: object) -> set[str]:
    names = {"--help"}
    for p in _options(cmd):
        names.update(o for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("--"))
    return names


def _annotation(p: object) -> object:
    """The Python type the option was declared with (Typer keeps it; plain click keeps ``p.type``)."""
    descriptor = getattr(p, "type_descriptor", None)
    if descriptor is not None:
        return descriptor.annotation
    return getattr(p, "type", None)


def _is_number(t: object) -> bool:
    return t in (int, float) or getattr(t, "__args__", ()) in ((int,), (float,)) or \
        type(t).__name__ in ("IntParamType", "FloatParamType")


def _filler(p: object) -> str:
    """A valid-looking value for a required option or argument, so that the bad one is what the command rejects."""
    t = _annotation(p)
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return str(next(iter(t)).value)
    if getattr(t, "choices", None):  # a Typer before 0.29 keeps click's Choice
        return str(getattr(t.choices[0], "value", t.choices[0]))
    if t is int or type(t).__name__ == "IntParamType":
        return "10"
    if t is float or type(t).__name__ == "FloatParamType":
        return "0.5"
    return "demo"


#: A comma-separated list of numbers in an option's default or help ("1,8,20,1e9", "e.g. -100,200"): the option
#: takes such a list as text.
NUMBER_LIST = re.compile(r"-?\d[\w.+-]*(?:,-?\d[\w.+-]*)+")


def _is_number_list(p: object) -> bool:
    return _annotation(p) is str and bool(NUMBER_LIST.search(f"{getattr(p, 'default', '')} {getattr(p, 'help', '')}"))


def _is_text(p: object) -> bool:
    t = _annotation(p)
    return t in (str, Path) or getattr(t, "__args__", ()) == (str,) or type(t).__name__ in ("StringParamType",
                                                                                           "Path")


def _weights_files(root: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    from dpaudit.models import build_model

    model = build_model("smallcnn", num_classes=2, width=4)
    files = {"text.pt": b"hello\n", "page.pth": b"<!DOCTYPE html><html></html>", "empty.pt": b""}
    out = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        out[name] = root / name
    torch.save(model.state_dict(), root / "plain.pt")
    out["plain.pt"] = root / "plain.pt"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    out["w.safetensors"] = root / "w.safetensors"
    data = (root / "plain.pt").read_bytes()
    (root / "cut.pt").write_bytes(data[: len(data) // 2])
    out["cut.pt"] = root / "cut.pt"
    torch.save(model, root / "whole.pt")
    out["whole.pt"] = root / "whole.pt"
    out["missing.pt"] = root / "missing.pt"
    return out


def _required_args(cmd: object, skip: object = None) -> list[str]:
    """Fillers for the required options and arguments (but ``skip``), in the order click expects them."""
    params = [p for p in getattr(cmd, "params", []) if getattr(p, "required", False) and p is not skip]
    args = [x for p in params if p.opts[0].startswith("-") for x in (p.opts[0], _filler(p))]
    return args + [_filler(p) for p in params if not p.opts[0].startswith("-")]


def scenarios(cmd: object, files: dict[str, Path]) -> Iterator[tuple[str, str, list[str]]]:
    """(flag, bad value, arguments) for every option that takes a value."""
    for p in _options(cmd):
        if getattr(p, "is_flag", False):
            continue
        base = _required_args(cmd, skip=p)
        flag = next(o for o in p.opts if o.startswith("--"))
        t = _annotation(p)
        if WEIGHTS_OPTIONS.match(flag):
            bad = [str(f) for f in files.values()]
        elif _is_number(t):
            bad = ["-1", "0"]
        elif "arch" in flag:
            bad = ["vgg", "nowhere.py:build", "monai:NoSuchNet", "{not json"]
        elif _is_number_list(p):
            bad = ["abc", "-1"]
        elif _is_text(p):
            bad = ["no-such-value"]
        else:
            bad = []
        for value in bad:
            yield flag, value, [*base, flag, value]


#: "--flag VALUE" in a fix: what the user is told to type.
SUGGESTED = re.compile(r"(--[a-z][a-z0-9-]*) ([\w.:/-]+)")


def follow_the_fix(path: tuple[str, ...], args: list[str], baseline: str) -> list[str]:
    """The first "--flag VALUE" of the baseline complaint's fix that gets the command past it (to the data stub or
    to success): a command that needs a choice first (train: a privacy mechanism; attack: a model) is exercised
    with it, so that every later option is reached. Empty when the complaint's fix names no such pair."""
    for flag, value in SUGGESTED.findall(baseline.partition("Fix:")[2]):
        res = runner.invoke(app, [*path, *args, flag, value])
        if res.exit_code == 0 or "stub: data loading reached" in res.output:
            return [flag, value]
    return []


#: The first words of an error that names a configuration field rather than a flag ("noise_multiplier must be").
FIELD_SUBJECT = re.compile(r"^error: ([a-z][a-z0-9_]*(?:\[\d+\])?) must be ")


def _stub_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import pkgutil

    # Every module first, so that none imports the stub as its load_splits (and keeps it after the test): the
    # sub-packages live in folders of their own (package-dir), so each is walked, not only dpaudit's folder.
    for package in ("dpaudit", "dpaudit.attacks", "dpaudit.audit", "dpaudit.bounds", "dpaudit.cli"):
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)

    def stub(*args: object, **kwargs: object) -> None:
        raise DataError("stub: data loading reached")

    for name, module in list(sys.modules.items()):
        if name.startswith("dpaudit") and hasattr(module, "load_splits"):
            monkeypatch.setattr(module, "load_splits", stub)


def test_every_error_names_the_flag_typed_and_a_fix_that_exists_on_that_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_data(monkeypatch)
    files = _weights_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    root = typer.main.get_command(app)
    commands = {path: option_names(cmd) for path, cmd in leaf_commands(root)}
    problems, tracebacks, checked = [], [], 0
    for path, cmd in leaf_commands(root):
        flags = option_names(cmd)
        # The command's own complaint with only its required values given (train: no privacy mechanism chosen)
        # is followed as its fix says, so that the options checked after it are reached; a bad value the command
        # checks only after a complaint that remains cannot be reached from here.
        baseline = " ".join(runner.invoke(app, [*path, *_required_args(cmd)]).output.split())
        prerequisite = follow_the_fix(path, _required_args(cmd), baseline) if "Fix:" in baseline else []
        if prerequisite:
            baseline = ""
        for flag, value, args in scenarios(cmd, files):
            if prerequisite and flag != prerequisite[0]:
                args = [*prerequisite, *args]
            line = f"`dpaudit {' '.join(path)} {' '.join(args)}`"
            res = runner.invoke(app, [*path, *args])
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                tracebacks.append(f"{line}: {type(res.exception).__name__}: {res.exception}")
                continue
            if res.exit_code == 0:
                continue
            text = " ".join(res.output.split())
            if "stub: data loading reached" in text:
                if value == "-1" and _is_number(_annotation(next(p for p in _options(cmd) if flag in p.opts))):
                    problems.append(f"{line} is refused only after the data are loaded (or not at all)")
                continue
            checked += 1
            # A quoted command line (`dpaudit train --out DIR`) names another command's flags: check them there.
            for quoted in QUOTED.findall(text):
                words = quoted.split()
                target = next((commands[k] for n in (2, 1) if (k := tuple(words[:n])) in commands), None)
                if target is None or not set(FLAG.findall(quoted)) <= target:
                    problems.append(f"{line} quotes `dpaudit {quoted}`, which is not a command with those flags")
            for named in set(FLAG.findall(QUOTED.sub("", text))):
                if named not in flags:
                    problems.append(f"{line} names {named}: {text[:300]}")
            if "Usage:" in text or len(res.output.strip().splitlines()) > 1:
                problems.append(f"{line} is refused in more than one line: {text[:300]}")
                continue
            if "Fix:" not in text:
                problems.append(f"{line} gives no fix: {text[:300]}")
            subject = FIELD_SUBJECT.match(text)
            if subject:
                problems.append(f"{line} names the field {subject.group(1)}, not the flag: {text[:300]}")
            if flag not in text and text != baseline:
                problems.append(f"{line} does not name {flag}: {text[:300]}")
    assert checked > 150  # the generator reached many messages
    assert not tracebacks, "\n".join(tracebacks)
    assert not problems, "\n".join(problems)


def test_weights_file_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    files = _weights_files(tmp_path)
    for name, path in files.items():
        if name == "plain.pt":
            continue
        for args in (["attack", "--model", str(path), "--arch", "smallcnn"], ["bounds", "--model", str(path)]):
            res = runner.invoke(app, args)
            assert res.exit_code == 2, (name, args, res.output)
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert lines[0].startswith("error:") and "Fix:" in res.output, (name, res.output)
            assert "Traceback" not in res.output


@pytest.mark.parametrize(("args", "head", "fix"), [
    (["train", "--image-size", "0"], "error: --image-size must be an integer >= 8, got 0.", "Fix: pass --image-size"),
    (["train", "--epochs", "0"], "error: --epochs must be an integer >= 1, got 0.", "Fix: pass --epochs 1 or more"),
    (["train", "--seeds", "0"], "error: --seeds must be an integer >= 1, got 0.", "Fix: pass --seeds 1 or more"),
    (["train", "--max-images", "0"], "error: --max-images must be an integer >= 3, got 0.",
     "Fix: pass --max-images 3 or more"),
    (["attack", "--sigmas", "abc"], "error: --sigmas must be a comma-separated list of numbers",
     "Fix: pass --sigmas as numbers separated by commas, e.g. --sigmas 0,1e-4,1e-3,0.02"),
    (["attack", "--sigmas", "-1"], "error: --sigmas must be a finite number >= 0, got -1.0.",
     "Fix: pass noise multipliers >= 0, e.g. --sigmas 0,1e-4,1e-3,0.02"),
    (["profile", "--out", "x", "--epsilons", "abc"], "error: --epsilons must be a comma-separated list of numbers",
     "Fix: pass --epsilons as numbers separated by commas, e.g. --epsilons 1,8,20,1e9"),
    (["train"], "error: no privacy mechanism chosen: give exactly one of --epsilon, --sigma and --non-private.",
     "Fix: pass --epsilon 8"),
    (["train", "--epsilon", "8", "--sigma", "1"], "error: --epsilon and --sigma given together", "Fix: keep one"),
    (["train", "--epsilon", "8", "--window", "-100,200"], "error: --window must be left out for --dataset demo",
     "Fix: leave out --window"),
    (["attack", "--arch", "smallcnn", "--window", "-100,200"], "error: --window must be left out for --dataset demo",
     "Fix: leave out --window"),
    (["profile", "--out", "x", "--window", "-100,200"], "error: --window must be left out for --dataset demo",
     "Fix: leave out --window"),
    (["profile", "--out", "x", "--background-share", "0.5"], "error: --background-share must be 1",
     "Fix: leave out --background-share"),
])
def test_the_reported_inputs_name_their_flag_and_a_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       args: list[str], head: str, fix: str) -> None:
    """The first line of each error starts with the flag typed (not the field, e.g. noise_multiplier) and has a
    fix; the privacy mechanism is asked for only after the values given were checked."""
    _stub_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and text.startswith(head) and fix in text, text
    assert len(res.output.strip().splitlines()) == 1 or "Usage" not in res.output


def test_user_message_names_the_flag_only_for_the_value_it_gave() -> None:
    """A field is named by the command's flag when the value in the error is the one that flag holds: a damaged
    checkpoint's n_train of 0 is not blamed on --n-train 100."""
    from dpaudit.cli._common import user_message
    from dpaudit.errors import invalid

    options = {"--n-train": "n_train", "--sigmas": "sigmas", "--delta": "delta"}
    values = {"n_train": 100, "sigmas": "0,-1", "delta": 1e-5}
    assert user_message(invalid("n_train", 0, "an integer >= 1"), options, values) == \
        "n_train must be an integer >= 1, got 0."
    assert user_message(invalid("n_train", 100, "at most 50"), options, values) == \
        "--n-train must be at most 50, got 100. Fix: pass --n-train with a value that is at most 50."
    assert user_message(invalid("noise_multiplier", -1.0, "a finite number >= 0", "pass 0 or more"), options,
                        values) == "--sigmas must be a finite number >= 0, got -1.0. Fix: pass 0 or more."
    assert user_message(invalid("target_delta", 1e-5, "below 1/N"), options, values).startswith("--delta must")


def test_stderr_does_not_start_with_a_blank_line(tmp_path: Path) -> None:
    """The progress bar is drawn only on a terminal: elsewhere rich left an empty line where it was."""
    for args in (["train", "--arch", "smallcnn", "--image-size", "16", "--max-images", "40", "--sigma", "1",
                  "--epochs", "1", "--batch-size", "8", "--threads", "1"],
                 ["attack", "--arch", "smallcnn", "--image-size", "16", "--max-images", "20", "--n-images", "2",
                  "--sigmas", "0", "--threads", "1"],
                 ["federated", "train", "--arch", "smallcnn", "--image-size", "16", "--max-images", "60",
                  "--clients", "2", "--rounds", "1", "--batch-size", "8", "--sigma", "1", "--threads", "1"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert not res.stderr.startswith("\n"), (args, res.stderr[:200])


def test_the_message_helpers_doctests() -> None:
    import doctest

    import dpaudit.cli._common
    import dpaudit.cli.main
    import dpaudit.config
    import dpaudit.data
    import dpaudit.errors

    for module in (dpaudit.errors, dpaudit.cli._common, dpaudit.cli.main, dpaudit.data, dpaudit.config):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


@pytest.mark.parametrize(("args", "head", "fix"), [
    (["bounds", "--sigma", "abc"], "error: Invalid value for '--sigma':",
     "Fix: pass --sigma a number, e.g. 0.5 or 1e-5; see 'dpaudit bounds --help'."),
    (["bounds", "--q", "0.1", "--steps", "1.5"], "error: Invalid value for '--steps':",
     "Fix: pass --steps a whole number, e.g. 10; see 'dpaudit bounds --help'."),
    (["bounds", "--kappa", "0.1", "--method", "nope"], "error: Invalid value for '--method':",
     "Fix: pass --method one of tight, edgeworth, clt, mc; see 'dpaudit bounds --help'."),
    (["bounds", "--sigmaa", "1"], "error: No such option", "see 'dpaudit bounds --help'."),
    (["bounds", "--sigma"], "error: Option '--sigma' requires an argument.",
     "Fix: give --sigma its value right after it; see 'dpaudit bounds --help'."),
    (["calibrate", "--q", "0.1"], "error: Missing option '--max-rero'.",
     "Fix: pass --max-rero a number, e.g. 0.5 or 1e-5; see 'dpaudit calibrate --help'."),
    (["bounds", "--sigma", "1", "extra"], "error: unexpected extra argument 'extra'.", "see 'dpaudit bounds --help'."),
    (["profile", "extra_arg"], "error: unexpected extra argument 'extra_arg'.", "see 'dpaudit profile --help'."),
    (["nosuch"], "error: No such command 'nosuch'.", "Fix: use one of the commands; see 'dpaudit --help'."),
    (["mia", "bound", "--foo", "1"], "error: No such option", "see 'dpaudit mia bound --help'."),
])
def test_parser_complaints_are_one_line_with_the_flag_the_value_and_a_fix(args: list[str], head: str, fix: str
                                                                         ) -> None:
    """What the parser itself refuses (a value it cannot read, an unknown or misspelt option, a missing value or
    option, an unknown command) is one line naming the flag, the value and a fix with the command's --help, exit 2;
    not Typer's box."""
    res = runner.invoke(app, args)
    text = res.output.strip()
    assert res.exit_code == 2, res.output
    assert len(text.splitlines()) == 1 and text.startswith(head) and text.endswith(fix), text
    if "Invalid value" in head:
        assert f"'{args[-1]}'" in text  # the value typed
    assert "Traceback" not in res.output and "Usage:" not in res.output


@pytest.mark.parametrize(("args", "offered"), [
    (["bounds", "--nosuch"], None), (["report", "p", "--delta"], None), (["federated", "attack", "--delta"], None),
    (["bounds", "--sigam", "1"], "--sigma"), (["profile", "--epsilon", "8"], "--epsilons"),
])
def test_an_unknown_option_is_offered_only_real_near_misses(args: list[str], offered: str | None) -> None:
    """The suggestions come from the command's own options and resemble what was typed (click's own matched on the
    dashes: --delta -> --help, --nosuch -> --roc)."""
    text = runner.invoke(app, args).output.strip()
    assert text.startswith("error: No such option"), text
    if offered is None:
        assert "Possible options" not in text, text
    else:
        assert f"(Possible options: {offered}" in text, text


def test_help_and_a_bare_group_still_show_the_usage() -> None:
    for args in ([], ["mia"], ["bounds", "--help"]):
        res = runner.invoke(app, args)
        assert "Usage" in res.output and res.exit_code in (0, 2), (args, res.output)


def test_a_parser_complaint_from_the_console_script_is_one_line_on_stderr() -> None:
    res = subprocess.run([sys.executable, "-m", "dpaudit", "bounds", "--sigma", "abc"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("error: Invalid value for '--sigma':") and len(res.stderr.splitlines()) == 1


def test_a_default_the_user_did_not_type_is_said_to_be_the_default() -> None:
    """'got 64' for a --batch-size nobody typed reads as the user's mistake: the line says it is the default and
    what to pass; a typed value is reported as before."""
    args = ["train", "--dataset", "demo", "--image-size", "8", "--max-images", "60", "--epsilon", "8"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    line = " ".join(res.output.split())
    assert "got 64 (the default: --batch-size was not passed). Fix: pass --batch-size" in line and " or less." in line
    res = runner.invoke(app, [*args, "--batch-size", "64"])
    assert res.exit_code == 2 and "the default" not in res.output and "got 64." in " ".join(res.output.split())


def test_user_text_prints_verbatim_never_as_markup_or_emoji(capsys) -> None:
    """A path or column named with Rich markup ('[abc]') or an emoji code (':hospital:') is printed as written, in
    errors, warnings and notes (Rich ate '[abc]' and printed ':hospital:' as an emoji)."""
    from dpaudit.cli._common import print_data_notes

    res = CliRunner().invoke(app, ["train", "--dataset", "folder:/nonexistent/[abc]/:hospital:", "--epsilon", "8"])
    assert res.exit_code == 2 and "'/nonexistent/[abc]/:hospital:'" in res.output, res.output
    print_data_notes(["column 'x[abc]' :hospital: not used"])
    assert "note: column 'x[abc]' :hospital: not used" in capsys.readouterr().err


def test_an_output_folder_named_like_markup_is_printed_as_written(tmp_path: Path) -> None:
    """'[/x]' in --out raised Rich's MarkupError after the run had written its files (exit 1, a traceback); '[abc]'
    vanished from 'wrote ...'."""
    folder = tmp_path / "q[/x] [abc]"
    res = CliRunner().invoke(app, ["train", "--dataset", "demo", "--max-images", "40", "--epochs", "1",
                                   "--batch-size", "8", "--non-private", "--arch", "smallcnn", "--out", str(folder)])
    assert res.exit_code == 0, res.output
    assert f"wrote {folder}/model.pt" in res.output

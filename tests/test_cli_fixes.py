"""Every "Fix:" is followable: each flag an error message names exists on the command that
printed it.

Robust to the CLI being reorganised: the commands and their options are discovered from the Typer app (any
nesting of sub-apps), and the bad inputs are generated from each option's type (out-of-range numbers, odd weights
files for file options), not from a hand-kept list. Data loading is replaced by a stub that fails at once, so that
no invocation that gets past validation starts a long training run; the stub's message names no flag.
"""

from __future__ import annotations

import enum
import re
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
    """A valid-looking value for a required option, so that the bad one is what the command rejects."""
    t = _annotation(p)
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return str(next(iter(t)).value)
    if t is int:
        return "10"
    if t is float:
        return "0.5"
    return "demo"


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


def scenarios(cmd: object, files: dict[str, Path]) -> Iterator[list[str]]:
    options = _options(cmd)
    required = [p for p in options if getattr(p, "required", False)]
    for p in options:
        if getattr(p, "is_flag", False):
            continue
        base = [x for r in required if r is not p for x in (r.opts[0], _filler(r))]
        flag = next(o for o in p.opts if o.startswith("--"))
        t = _annotation(p)
        if WEIGHTS_OPTIONS.match(flag):
            for f in files.values():
                yield [*base, flag, str(f)]
        elif _is_number(t):
            for bad in ("-1", "0"):
                yield [*base, flag, bad]
        elif "arch" in flag:
            for bad in ("vgg", "nowhere.py:build", "monai:NoSuchNet", "{not json"):
                yield [*base, flag, bad]


def _stub_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import pkgutil

    import dpaudit

    for info in pkgutil.walk_packages(dpaudit.__path__, "dpaudit."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)

    def stub(*args: object, **kwargs: object) -> None:
        raise DataError("stub: data loading reached")

    for name, module in list(sys.modules.items()):
        if name.startswith("dpaudit") and hasattr(module, "load_splits"):
            monkeypatch.setattr(module, "load_splits", stub)


def test_every_flag_an_error_names_exists_on_that_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    _stub_data(monkeypatch)
    files = _weights_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    root = typer.main.get_command(app)
    commands = {path: option_names(cmd) for path, cmd in leaf_commands(root)}
    problems, tracebacks, checked = [], [], 0
    for path, cmd in leaf_commands(root):
        flags = option_names(cmd)
        for args in scenarios(cmd, files):
            res = runner.invoke(app, [*path, *args])
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                tracebacks.append(f"{' '.join(path)} {' '.join(args)}: {type(res.exception).__name__}: "
                                  f"{res.exception}")
                continue
            if res.exit_code == 0:
                continue
            checked += 1
            text = " ".join(res.output.split())
            # A quoted command line (`dpaudit train --out DIR`) names another command's flags: check them there.
            for quoted in QUOTED.findall(text):
                words = quoted.split()
                target = next((commands[k] for n in (2, 1) if (k := tuple(words[:n])) in commands), None)
                if target is None or not set(FLAG.findall(quoted)) <= target:
                    problems.append(f"`dpaudit {' '.join(path)} {' '.join(args)}` quotes `dpaudit {quoted}`, "
                                    f"which is not a command with those flags")
            for named in set(FLAG.findall(QUOTED.sub("", text))):
                if named not in flags:
                    problems.append(f"`dpaudit {' '.join(path)} {' '.join(args)}` names {named}: "
                                    f"{' '.join(res.output.split())[:300]}")
    assert checked > 50  # the generator reached many messages
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

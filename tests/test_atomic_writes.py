"""Every result file (JSON, CSV, PDF, PNG, checkpoint) is written through :func:`dpaudit.outputs.write_atomic`: the
path holds its previous content or the whole new one, never a part, and a failed write is one line naming the flag
and the path. A scan of the source finds any other write."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.errors import DpAuditError
from dpaudit.outputs import check_output_file, write_atomic

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

#: Calls that write a file when their target is a path: method or function name -> the argument holding the target
#: (None: the call itself writes where it was opened, e.g. ``Path.write_text``).
WRITERS = {"write_text": None, "write_bytes": None, "savefig": 0, "save": 1, "savez": 0, "savez_compressed": 0,
           "SimpleDocTemplate": 0, "BaseDocTemplate": 0, "to_csv": 0, "dump": 1}
#: The helpers whose writer function (a lambda's parameter) is a file object write_atomic opened.
HELPERS = {"write_atomic", "save_figure"}

#: Writes that are not result files, each with the reason (file, enclosing function, call).
ALLOWED = {
    ("core/outputs.py", "_make_writable", "write_bytes"):
        "the writability probe: an empty file removed at once, never a result",
    ("core/outputs.py", "write_atomic", "fdopen"): "the helper itself: its temporary file, then os.replace",
    ("core/cache.py", "cached", "fdopen"):
        "the decoded-image cache, not a result: its own mkstemp + os.replace, and a failed write only skips caching",
    ("core/cache.py", "cached", "savez"): "the cache's array file, written to the file object opened above",
    ("core/heap.py", "_resident_bytes", "open"): "os.open of /proc/self/statm with O_RDONLY: a read, never a write",
}


def _mode_writes(call: ast.Call) -> bool:
    """``open(path, "w")`` / ``path.open("wb")``: the mode (second argument of open, first of Path.open) writes."""
    func = call.func
    args = call.args[1:] if isinstance(func, ast.Name) else call.args
    modes = [a.value for a in args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    modes += [k.value.value for k in call.keywords
              if k.arg == "mode" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)]
    return any(set(m) & set("wax+") for m in modes)


def _direct_writes(path: Path) -> list[tuple[str, str, int]]:
    """(enclosing function, call name, line) of each write in ``path`` that does not go through the helpers: the
    target of a writer is neither an in-memory buffer (io.BytesIO/StringIO) nor the file object a helper passed."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    buffers: set[str] = set()
    helper_lambdas: set[int] = set()  # the writer functions given to a helper: their parameter is its file object
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr in ("BytesIO", "StringIO")):
            buffers |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in HELPERS:
            helper_lambdas |= {id(a) for a in [*node.args, *(k.value for k in node.keywords)]
                               if isinstance(a, ast.Lambda)}
    found = []

    def visit(node: ast.AST, where: str, helper_files: frozenset[str] = frozenset()) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where
            files = helper_files | ({a.arg for a in child.args.args} if id(child) in helper_lambdas else set())
            if isinstance(child, ast.Call):
                func = child.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) \
                    else ""
                owner = getattr(getattr(func, "value", None), "id", "")  # torch in torch.save, json in json.dump
                if called in ("open", "fdopen"):
                    plain = ast.Call(func=ast.Name(called), args=child.args, keywords=child.keywords) \
                        if called == "fdopen" else child  # os.fdopen(fd, mode): the mode is second, as open's
                    if _mode_writes(plain):
                        found.append((where, called, child.lineno))
                elif called in WRITERS and (called, owner) not in (("save", ""), ("dump", "")) and not (
                        called == "save" and owner != "torch") and not (called == "dump" and owner != "json"):
                    index = WRITERS[called]
                    target = child.args[index] if index is not None and len(child.args) > index else None
                    if not (isinstance(target, ast.Name) and target.id in buffers | files):
                        found.append((where, called, child.lineno))
            visit(child, name, frozenset(files))

    visit(tree, "<module>")
    return found


def test_no_result_file_is_written_outside_write_atomic() -> None:
    """Every ``open(..., "w")``, ``write_text``, ``write_bytes``, ``savefig``, ``torch.save``, ``np.savez`` and
    PDF document target in the package goes through write_atomic (or save_figure), or is allowed with a reason."""
    direct, allowed_seen = [], set()
    for folder in ("audit", "cli", "attacks", "bounds", "core"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for where, called, line in _direct_writes(path):
                key = (rel, where, called)
                if key in ALLOWED:
                    allowed_seen.add(key)
                else:
                    direct.append(f"{rel}:{line} {where}: {called}")
    assert not direct, "write these through dpaudit.outputs.write_atomic:\n" + "\n".join(direct)
    assert allowed_seen == set(ALLOWED), f"allow-list entries that no longer match: {set(ALLOWED) - allowed_seen}"


def test_the_scan_finds_a_direct_write(tmp_path: Path) -> None:
    """The scan itself: a plain write_text, savefig to a path and torch.save to a path are found; the same calls
    into a buffer or a helper's file object are not."""
    src = tmp_path / "m.py"
    src.write_text(
        "import io, json, torch\n"
        "def bad(p, fig, obj):\n"
        "    p.write_text('x')\n"
        "    fig.savefig(p)\n"
        "    torch.save(obj, p)\n"
        "    with open(p, 'w') as fh:\n"
        "        json.dump(obj, fh)\n"
        "def good(p, fig, obj):\n"
        "    buf = io.BytesIO()\n"
        "    fig.savefig(buf, format='png')\n"
        "    write_atomic(p, lambda fh: torch.save(obj, fh))\n"
        "    with open(p) as fh:\n"
        "        fh.read()\n")
    assert [(w, c) for w, c, _ in _direct_writes(src)] == [("bad", "write_text"), ("bad", "savefig"),
                                                           ("bad", "save"), ("bad", "open"), ("bad", "dump")]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "profile.json"
    write_atomic(target, "old\n")

    def half(fh) -> None:
        fh.write(b"new, half writ")
        raise OSError(28, "No space left on device")

    with pytest.raises(DpAuditError) as info:
        write_atomic(target, half)
    assert info.value.field == "out" and "No space left on device" in str(info.value)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["profile.json"]

    def interrupted(fh) -> None:
        fh.write(b"new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["profile.json"]
    write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"


def test_a_written_file_has_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert (write_atomic(tmp_path / "atomic", "x").stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_equal_checkpoints_are_equal_bytes_whatever_their_name(tmp_path: Path) -> None:
    """Saved through a file object, the archive's inner folder does not carry the (temporary) file name."""
    import torch

    from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
    from dpaudit.models import build_model

    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=2, in_channels=1)
    meta = CheckpointMeta(arch="smallcnn", num_classes=2, in_channels=1)
    a = save_checkpoint(tmp_path / "a.pt", model, meta).read_bytes()
    b = save_checkpoint(tmp_path / "other" / "model.pt", model, meta).read_bytes()
    assert a == b and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("flag", ["--roc", "--plot"])
def test_an_unwritable_output_file_is_one_line_naming_the_flag_and_path(tmp_path: Path, flag: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / ("roc.csv" if flag == "--roc" else "gamma.png")  # a folder that is a file: never writable
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--n-train", "100",
                              flag, str(target)])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {flag} must be a file path") and repr(str(target)) in line
    assert f"Fix: pass {flag} a file path you can write to" in line and "Traceback" not in res.output
    missing = tmp_path / "missing" / target.name
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--n-train", "100",
                              flag, str(missing)])
    assert res.exit_code == 2 and "its folder does not exist" in res.stderr and not missing.parent.exists()


def test_a_failure_while_writing_names_the_flag(tmp_path: Path) -> None:
    """What the check before the work cannot see (a full disk, a file made immutable) fails at the write: one
    line naming the flag and the file."""
    with pytest.raises(DpAuditError) as info:
        write_atomic(tmp_path / "missing" / "roc.csv", "x", field="--roc")
    assert info.value.field == "--roc" and info.value.value == str(tmp_path / "missing" / "roc.csv")
    assert "pass --roc another path" in str(info.value)
    with pytest.raises(DpAuditError, match="it is a folder"):
        check_output_file(tmp_path, "--out")

"""Output folders: checked before any work, and never silently replaced by another configuration's results.

``writable_dir`` creates the folder and proves that a file can be written in it, so that a run that cannot write
its results fails in its first second, not after the training. ``refuse_replacing`` stops a command from writing
over the results of a different configuration unless the user asks for it (``--overwrite``); the same
configuration again (a rerun, a resumed profile) may write where it wrote before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dpaudit.errors import ConfigError, DpAuditError, invalid


def writable_dir(path: str | os.PathLike, field: str = "out") -> Path:
    """Create ``path`` (with its parents) and check that a file can be written in it; an error names ``field``.

    >>> import tempfile
    >>> writable_dir(Path(tempfile.mkdtemp()) / "new" / "run").is_dir()
    True
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".dpaudit-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise invalid(field, str(path), f"a folder that can be created and written to ({reason})",
                      f"pass --{field.replace('_', '-')} with a folder you can write to") from None
    return folder


def write_error(path: str | os.PathLike, exc: BaseException, field: str = "out") -> DpAuditError:
    """The one-line error for a result file that could not be written (``torch.save`` raises ``RuntimeError``
    for what is an ``OSError`` elsewhere: a full disk, a folder made read-only while the run went on)."""
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[-1].strip()[:160] or type(exc).__name__
    return invalid(field, str(Path(path).parent), f"a folder where {Path(path).name} can be written ({reason})",
                   f"free space or make the folder writable, or pass --{field.replace('_', '-')} with another "
                   "folder, and run the command again")


def refuse_replacing(folder: str | os.PathLike, record: str, *, outputs: Iterable[str], same: Callable[[Any], bool],
                     overwrite: bool, what: str, field: str = "out") -> None:
    """Refuse to write into ``folder`` when it holds the outputs of another configuration.

    ``record`` is the JSON file that describes what the folder holds (``metrics.json``, ``attack.json``,
    ``profile.json``); ``same(data)`` says whether its content is the configuration about to run. The folder is
    accepted when it holds none of ``record`` and ``outputs``, when ``same`` is true, or with ``overwrite``. Outputs
    without a readable record are another configuration's as far as anyone can tell.
    """
    if overwrite:
        return
    base = Path(folder)
    found = [name for name in dict.fromkeys((record, *outputs)) if (base / name).exists()]
    if not found:
        return
    try:
        data = json.loads((base / record).read_text(encoding="utf-8"))
        matches = bool(same(data))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        matches = False
    if matches:
        return
    flag = f"--{field.replace('_', '-')}"
    raise ConfigError(f"{flag} {str(folder)!r} already holds {', '.join(found)} of another configuration ({what}); "
                      f"they would be replaced. Fix: pass a new {flag} folder, or add --overwrite to replace them.")

"""Output folders: checked before any work, owned by one configuration, and replaced as a whole or not at all.

``claim_folder`` checks the folder before any work (that it can be created and written to, and holds no other
configuration's outputs) without creating or changing anything, so that a run that cannot write its results fails
in its first second, not after the training, and a run refused for any reason leaves the folder as it was.
:meth:`OutputClaim.writing` then makes the folder one configuration's: it writes a marker (:data:`MARKER`, the
identifying part of the configuration) before the work that writes there, so that an interrupted run's folder
refuses another configuration as a finished one does (``refuse_replacing``), unless the user asks for it
(``--overwrite``); the same configuration again (a rerun, a resumed profile) may write where it wrote before. What
the run will write anew is first moved aside into :data:`BACKUP` inside the folder (with ``--overwrite``: every
output dpaudit wrote there, never the user's other files); :meth:`OutputClaim.writing` deletes that backup when the
run succeeds and puts it back when the run fails (a run that fails before writing anything takes its marker and
the folders it created back too), so that a failed write loses nothing and never leaves two configurations' files side by side.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dpaudit.errors import ConfigError, DpAuditError, invalid


def writable_dir(path: str | os.PathLike, field: str = "out") -> Path:
    """Create ``path`` (with its parents) and check that a file can be written in it; an error names ``field``.

    >>> import tempfile
    >>> writable_dir(Path(tempfile.mkdtemp()) / "new" / "run").is_dir()
    True
    """
    _make_writable(Path(path), field)
    return Path(path)


def check_writable(path: str | os.PathLike, field: str = "out") -> None:
    """Check that ``path`` could be created and written to, and leave no trace: folders created for the check
    are removed again (a run refused later must not leave an empty folder behind).

    >>> import tempfile
    >>> new = Path(tempfile.mkdtemp()) / "new" / "run"
    >>> check_writable(new); new.parent.exists()
    False
    """
    _remove_created(_make_writable(Path(path), field))


#: How often :func:`_make_writable` makes a folder's missing parents again when another process removed one of them
#: between its mkdir calls.
_MKDIR_ATTEMPTS = 5


def _make_writable(folder: Path, field: str) -> list[Path]:
    """Create ``folder`` and its missing parents and prove a file can be written there; return the folders this
    created, outermost first (removed again if the check fails)."""
    created: list[Path] = []
    try:
        # Other processes may make or remove the same parents meanwhile (a profile's worker processes each write
        # their own checkpoints/<run> folder): a folder that appears between the look and the mkdir is theirs, not
        # ours (kept, not removed on failure); a parent removed under us (another run's refused check) is made again.
        for attempt in range(_MKDIR_ATTEMPTS):
            try:
                for p in [p for p in (folder, *folder.parents) if not p.exists()][::-1]:
                    try:
                        p.mkdir()
                    except FileExistsError:
                        if not p.is_dir():
                            raise
                        continue
                    created.append(p)
                break
            except FileNotFoundError:
                if attempt == _MKDIR_ATTEMPTS - 1:
                    raise
        probe = folder / f".dpaudit-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        _remove_created(created)
        reason = exc.strerror or type(exc).__name__
        raise invalid(field, str(folder), f"a folder that can be created and written to ({reason})",
                      f"pass --{field.replace('_', '-')} with a folder you can write to") from None
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove the folders a run created, innermost first, as long as they are empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            return


def write_error(path: str | os.PathLike, exc: BaseException, field: str = "out", *, verb: str = "written",
                kept: str = "") -> DpAuditError:
    """The one-line error for a result file that could not be written (``torch.save`` raises ``RuntimeError``
    for what is an ``OSError`` elsewhere: a full disk, a folder made read-only while the run went on, a file made
    immutable). ``field`` is the configuration field of an output folder (``out``: the error's value is the
    folder), or the flag of an output file (``--roc``: its value is the file). ``kept`` is appended to the fix
    (what happened to the folder's previous outputs). The error keeps ``filename`` and ``cause`` (the failed
    write) for :meth:`OutputClaim.writing`."""
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[-1].strip()[:160] or type(exc).__name__
    if field.startswith("-"):  # a flag that names the file itself
        error = invalid(field, str(path), f"a file path that can be {verb} ({reason})",
                        f"free space or make the folder writable, or pass {field} another path, and run the command "
                        f"again{kept}")
    else:
        error = invalid(field, str(Path(path).parent), f"a folder where {Path(path).name} can be {verb} ({reason})",
                        f"free space or make the folder and its files writable, or pass --{field.replace('_', '-')} "
                        f"with another folder, and run the command again{kept}")
    error.filename, error.cause = str(path), exc  # type: ignore[attr-defined]
    return error


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Check, before any work, that a result file named by ``flag`` (``--roc``, ``mia audit --out``) can be
    written: not a folder, and in an existing folder that can be written to (a file flag creates no folders).
    Creates and leaves nothing.

    >>> import tempfile
    >>> check_output_file(Path(tempfile.mkdtemp()) / "roc.csv", "--roc")
    """
    path = Path(path)
    folder = path.parent
    reason = ("it is a folder" if path.is_dir() else "its folder does not exist" if not folder.exists()
              else "its folder is a file" if not folder.is_dir() else None)
    if reason is None:
        try:
            check_writable(folder, field=flag)
        except DpAuditError as exc:
            reason = str(exc.allowed or "").partition("(")[2].rstrip(")") or "its folder cannot be written"
    if reason is not None:
        raise invalid(flag, str(path), f"a file path in an existing folder you can write to ({reason})",
                      f"pass {flag} a file path you can write to, or create its folder first")


def write_atomic(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], object], *,
                 field: str = "out") -> Path:
    """Write a result file (JSON, CSV, PDF, PNG, checkpoint) so that ``path`` holds either its previous content or
    the whole new one, never a part: the content goes to a temporary file in the same folder (same file system),
    is flushed to disk, and replaces ``path`` in one ``os.replace``. The one way dpaudit writes its results
    (``tests/test_atomic_writes.py`` scans the source for others).

    ``content`` is bytes, text (written as UTF-8), or a function that writes to the binary file object it is
    given (``torch.save(obj, fh)``: a file object, not a name, so that the archive's inner folder is always
    ``archive`` and equal checkpoints are equal bytes; ``fig.savefig(fh, format="png")``). The file gets the
    permissions a plain ``open`` would (0o666 less the umask). A failed write (including ``torch.save``'s
    ``RuntimeError``) removes the temporary file and raises :func:`write_error` naming ``field``; an interruption
    removes it too and propagates.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "result.json"
    >>> write_atomic(target, '{"ok": true}\\n').read_text(), [p.name for p in target.parent.iterdir()]
    ('{"ok": true}\\n', ['result.json'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                if callable(content):
                    content(fh)
                else:
                    fh.write(content.encode("utf-8") if isinstance(content, str) else content)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError ("enforce fail")
        raise write_error(path, exc, field) from None
    return path


#: The marker a run writes first in its --out folder: the command and the identifying part of its configuration
#: (shaped like the record the command writes at the end, so that one comparison reads both).
MARKER = ".dpaudit-run.json"
#: Where a run keeps the outputs it replaces until it has succeeded (then deleted) or failed (then put back).
BACKUP = ".dpaudit-replaced"
_MANIFEST = "manifest.json"


def save_figure(fig: Any, path: str | os.PathLike, *, field: str = "out", **savefig: Any) -> Path:
    """A matplotlib figure written with :func:`write_atomic`; the file's extension picks the format (none: PNG,
    under the name given), as ``fig.savefig(path)`` would. ``savefig``: its other arguments (``dpi``)."""
    fmt = Path(path).suffix[1:].lower() or "png"
    return write_atomic(path, lambda fh: fig.savefig(fh, format=fmt, **savefig), field=field)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _holds(same: Callable[[Any], bool], data: Any) -> bool:
    try:
        return bool(same(data))
    except (ValueError, TypeError, KeyError, AttributeError):
        return False


def _found(base: Path, names: Iterable[str]) -> list[Path]:
    """The paths in ``base`` that ``names`` (file or folder names, or glob patterns such as ``report-*.pdf``) name."""
    out: list[Path] = []
    for name in dict.fromkeys(names):
        hits = sorted(base.glob(name)) if any(c in name for c in "*?[") else [base / name]
        out += [h for h in hits if (h.exists() or h.is_symlink()) and h.name not in (MARKER, BACKUP) and h not in out]
    return out


def _marker_says(base: Path, command: str | None, same: Callable[[Any], bool]) -> bool | None:
    """Whether the folder's marker names this configuration (None: no readable marker)."""
    marker = _read_json(base / MARKER)
    if not isinstance(marker, dict) or "record" not in marker:
        return None
    return (command is None or marker.get("command") == command) and _holds(same, marker["record"])


def refuse_replacing(folder: str | os.PathLike, record: str, *, outputs: Iterable[str], same: Callable[[Any], bool],
                     overwrite: bool, what: str, field: str = "out", command: str | None = None) -> bool:
    """Refuse to write into ``folder`` when it holds the outputs of another configuration; return whether it holds
    outputs of this one (True) or none (False).

    The folder's :data:`MARKER`, written when a run starts, says whose the folder is; without one (a folder written
    before markers existed), ``record`` does: the JSON file that describes what the folder holds (``metrics.json``,
    ``attack.json``, ``profile.json``), and ``same(data)`` says whether its content is the configuration about to
    run. The folder is accepted when it holds none of ``record`` and ``outputs``, when it is this configuration's, or
    with ``overwrite``. Outputs without a readable marker or record are another configuration's as far as anyone
    can tell.
    """
    base = Path(folder)
    found = [p.name for p in _found(base, (record, *outputs))]
    if not found:
        return False
    matches = _marker_says(base, command, same)
    if matches is None:
        data = _read_json(base / record)
        matches = data is not None and _holds(same, data)
    if matches:
        return True
    if overwrite:
        return False
    flag = f"--{field.replace('_', '-')}"
    shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    unfinished = "" if (base / record).exists() else ", an unfinished run"
    raise ConfigError(f"{flag} {str(folder)!r} already holds {shown} of another configuration{unfinished} "
                      f"({what}); they would be replaced. Fix: pass a new {flag} folder, or add --overwrite to "
                      "replace them.")


@dataclass
class OutputClaim:
    """A run's hold on its output folder (:func:`claim_folder`); run the work that writes there inside
    :meth:`writing`."""

    folder: Path
    field: str
    command: str
    identity: dict[str, Any]
    #: The backup of what this run replaces (None: it replaces nothing, or not yet).
    backup: Path | None = None
    #: What :meth:`writing` moves aside first (names or glob patterns): what this run writes anew.
    replaces: tuple[str, ...] = ()
    #: What the claim did that the user should hear about (a leftover of an interrupted run put back).
    notes: tuple[str, ...] = ()
    #: Everything the command writes there (the record and the outputs: names or glob patterns).
    outputs: tuple[str, ...] = ()
    #: Whether the folder's marker named this configuration before the run (a rerun, a resumed profile).
    marker_ours: bool = False

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Move aside what the run replaces, mark the folder as this configuration's, and run the work: on
        success the replaced outputs are deleted; on an error they are put back (what this run wrote in their
        place is removed) and a failed write inside the folder becomes one line naming the flag. An interruption
        (Ctrl-C, a signal turned into SystemExit) keeps both: the same command again resumes and completes the
        replacement; any other command in the folder first puts the old outputs back.

        A run that fails or is interrupted before it wrote any output leaves no trace: the marker is put back as it
        was (or removed), and the folders this claim created are removed again."""
        created = _make_writable(self.folder, self.field)
        marker = self.folder / MARKER
        before = marker.read_bytes() if marker.is_file() else None
        try:
            if self.replaces:
                self._move_aside()
            _write_marker(self.folder, self.command, self.identity, self.field)
        except BaseException:
            self._unclaim(before, created)
            raise
        try:
            yield self.folder
        except (KeyboardInterrupt, SystemExit):
            if self.backup is None:
                self._unclaim(before, created)
            raise
        except BaseException as exc:
            restored = self.backup is not None and self.backup.exists()
            if restored:
                restore(self.folder)
            else:
                self._unclaim(before, created)
            name = getattr(exc, "filename", None)
            # an OSError, or write_atomic's error (its cause the OSError), of a file inside the folder
            cause = exc if isinstance(exc, OSError) else getattr(exc, "cause", None)
            if cause is not None and name and _inside(Path(name), self.folder):
                kept = " (its previous outputs were put back)" if restored else ""
                raise write_error(name, cause, self.field, kept=kept) from None
            raise
        self.commit()

    def _unclaim(self, before: bytes | None, created: list[Path]) -> None:
        """Undo the claim of a run that moved nothing aside, when it wrote no output (or, on a folder that was
        already this configuration's, in any case): the marker as it was before the run, or none; then the
        folders the claim created, if empty. Outputs the run wrote keep its marker: it says whose they are."""
        marker = self.folder / MARKER
        try:
            if before is not None and (self.marker_ours or not _found(self.folder, self.outputs)):
                write_atomic(marker, before, field=self.field)
            elif before is None and not _found(self.folder, self.outputs):
                marker.unlink(missing_ok=True)
        except (OSError, DpAuditError):
            return
        _remove_created(created)

    def _move_aside(self) -> None:
        moving = _found(self.folder, self.replaces)
        if not moving:
            return
        if (self.folder / MARKER).exists():
            moving.append(self.folder / MARKER)
        backup = self.folder / BACKUP
        backup.mkdir()
        moved: list[Path] = []
        try:
            write_atomic(backup / _MANIFEST, json.dumps({"names": list(self.replaces)}), field=self.field)
            for path in moving:
                os.replace(path, backup / path.name)
                moved.append(path)
        except (OSError, DpAuditError) as exc:
            for done in moved:
                os.replace(backup / done.name, done)
            shutil.rmtree(backup, ignore_errors=True)
            cause = getattr(exc, "cause", exc)
            raise write_error(getattr(exc, "filename", None) or backup, cause, self.field, verb="moved aside",
                              kept=" (nothing was changed)") from None
        self.backup = backup

    def commit(self) -> None:
        """Delete the replaced outputs (first renamed, so that a leftover is never mistaken for a live backup)."""
        if self.backup is not None and self.backup.exists():
            done = self.folder / f"{BACKUP}.done"
            shutil.rmtree(done, ignore_errors=True)
            os.replace(self.backup, done)
            shutil.rmtree(done, ignore_errors=True)
        self.backup = None


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def restore(folder: str | os.PathLike) -> None:
    """Put back the outputs an unfinished run moved aside into :data:`BACKUP`; what that run wrote under the same
    names (and the names it rewrites) is removed first."""
    base = Path(folder)
    backup = base / BACKUP
    manifest = _read_json(backup / _MANIFEST)
    names = manifest.get("names", []) if isinstance(manifest, dict) else []
    for path in [*_found(base, names), base / MARKER]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for path in sorted(backup.iterdir()):
        if path.name != _MANIFEST:
            os.replace(path, base / path.name)
    (backup / _MANIFEST).unlink(missing_ok=True)
    backup.rmdir()


def claim_folder(folder: str | os.PathLike, *, command: str, record: str, identity: dict[str, Any],
                 outputs: Iterable[str], same: Callable[[Any], bool], overwrite: bool, what: str,
                 rewrites: Iterable[str] | None = None, field: str = "out") -> OutputClaim:
    """Check ``folder`` before any work and claim it for this run; the run then writes inside
    :meth:`OutputClaim.writing`.

    The claim checks and writes nothing of this run's, so that a run refused after it (a missing GPU, a dataset
    that is not there) leaves the folder as it was. One repair comes first: a backup left by another
    configuration's interrupted run is put back (the folder's state before that run; a note says so), and a
    finished run's leftover backup folder is removed. ``command`` and ``identity`` (the identifying part of
    ``record``, as ``same`` reads it) go into :data:`MARKER` when :meth:`OutputClaim.writing` starts. ``outputs`` names everything the command writes there (files, folders, glob patterns): with
    ``overwrite``, another configuration's are all moved aside; for the same configuration only ``rewrites``
    (default: all ``outputs``; a profile keeps its task store and checkpoints, so that it resumes). A backup left by
    an interrupted run is taken over by the same configuration (it resumes) and put back for any other. Errors name
    ``--field``.
    """
    base = Path(folder)
    check_writable(base, field)  # nothing is created or written until the run starts writing
    outputs = tuple(outputs)
    notes: list[str] = []
    shutil.rmtree(base / f"{BACKUP}.done", ignore_errors=True)
    backup = base / BACKUP
    written = (record, *outputs)
    if backup.exists():
        if _marker_says(base, command, same):  # the interrupted run of this configuration goes on
            return OutputClaim(base, field, command, identity, backup=backup, outputs=written, marker_ours=True)
        try:
            restore(base)
        except OSError as exc:
            raise write_error(getattr(exc, "filename", None) or backup, exc, field) from None
        notes.append(f"an unfinished run in {folder} had moved the earlier outputs aside; they were put back")
    same_config = refuse_replacing(base, record, outputs=outputs, same=same, overwrite=overwrite, what=what,
                                   field=field, command=command)
    names = tuple(rewrites) if same_config and rewrites is not None else written
    return OutputClaim(base, field, command, identity, replaces=names, notes=tuple(notes), outputs=written,
                       marker_ours=bool(_marker_says(base, command, same)))


def _write_marker(base: Path, command: str, identity: dict[str, Any], field: str) -> None:
    from dpaudit import __version__

    payload = {"command": command, "record": identity, "dpaudit_version": __version__,
               "started": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
               "note": "written by dpaudit when a run starts: whose outputs this folder holds"}
    write_atomic(base / MARKER, json.dumps(payload, indent=1, allow_nan=False) + "\n", field=field)

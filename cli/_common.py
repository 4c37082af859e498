"""Shared pieces of the command line: the shared options, error handling, JSON output, consoles, number parsing."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import json
import logging
import os
import re
import signal
import sys
import typing
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from dpaudit.codec import encode
from dpaudit.config import IMAGE_SIZE_DEFAULT_HELP, PRIVACY_UNIT_CHOICES
from dpaudit.errors import DpAuditError, invalid, message_of

F = TypeVar("F", bound=Callable[..., Any])


def choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """A Typer choice type of the library's own names (``"paper-all"`` is the member ``paper_all``), so that the
    command line offers exactly what the library accepts. The type belongs to the calling module, which binds it
    to ``name``: its values are pickled by that reference when a command hands them to worker processes."""
    caller = sys._getframe(1).f_globals["__name__"]
    return StrEnum(name, {v.replace("-", "_"): v for v in values}, module=caller)  # type: ignore[return-value]


def opt_str(choice: StrEnum | None) -> str | None:
    """An Enum choice as the plain string the library's configs hold (None stays None)."""
    return None if choice is None else str(choice)


SliceAxis = choices("SliceAxis", ("axial", "coronal", "sagittal"))
PrivacyUnit = choices("PrivacyUnit", PRIVACY_UNIT_CHOICES)

# Options shared by several commands: one name, one help text, one meaning. The parameter's name is the field of
# the configuration dataclass it sets; each command's default is that dataclass's (``shared_options``).
DatasetOpt = Annotated[str, typer.Option("--dataset", help="demo (built in, synthetic), ham10000, a MedMNIST flag "
                                         "(dermamnist, ...), folder:PATH, dicom:PATH, nifti:PATH or csv:FILE; segmentation "
                                         "(train, attack and profile only): demo-ct (built in, synthetic CT) or "
                                         "msd:PATH (a Decathlon task folder).")]
LabelsOpt = Annotated[str | None, typer.Option("--labels", help="dicom:/nifti: a labels CSV: a label column and a "
                                               "key column (PatientID, ..., path; nifti: file).")]
WindowOpt = Annotated[str | None, typer.Option("--window", help="LOW,HIGH in modality units (HU for CT) mapped to "
                                               "0 and 1, e.g. -100,200 (dicom:, nifti:, csv:; demo-ct and msd: default "
                                               "to the liver window -100,200).")]
SliceAxisOpt = Annotated[SliceAxis, typer.Option("--slice-axis", help="How NIfTI volumes are cut into 2-D images.")]
PrivacyUnitOpt = Annotated[PrivacyUnit | None, typer.Option("--privacy-unit", help="Default: patient when the data "
                                                            "carry patient ids (k = the most images of one patient "
                                                            "in the training split), else image.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Folder holding the dataset files.")]
ImageSizeOpt = Annotated[int | None, typer.Option(
    "--image-size", show_default=False,
    help=f"Images are resized to this many pixels square. \\[default: {IMAGE_SIZE_DEFAULT_HELP}]")]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="Architecture: resnet9 (GroupNorm), smallcnn, unet "
                                            "(segmentation: MONAI BasicUNet with GroupNorm), monai:NAME (a network "
                                            "from monai.networks.nets), file.py:factory or module:factory (your own "
                                            "code, imported because you name it).")]
ArchArgsOpt = Annotated[str | None, typer.Option("--arch-args", help="JSON object of the architecture's arguments, "
                                                 "e.g. '{\"spatial_dims\": 2}'.")]
WidthOpt = Annotated[int | None, typer.Option("--width", help="Channel width of resnet9, smallcnn or unet (paper: "
                                              "64 for resnet9, 16 for the MSD Liver U-Net); an --arch-args width.")]
TrainableOpt = Annotated[str, typer.Option("--trainable", help="all, head (linear probe) or last-N layers; frozen "
                                           "parameters get no gradients and no noise.")]
FixBatchnormOpt = Annotated[bool, typer.Option("--fix-batchnorm", help="Replace every BatchNorm by GroupNorm (Opacus' "
                                               "rule, gcd(32, C) groups); each replacement is reported.")]
MaxImagesOpt = Annotated[int | None, typer.Option("--max-images", help="Use at most this many images in total "
                                                  "(demo: its size).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch threads (default: the idle cores; results "
                                                "depend on the count in the last bits: pin it to reproduce a run).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when visible, else the CPU), cpu, cuda or "
                                         "cuda:N: where the model's passes run (a GPU's results differ from the "
                                         "CPU's in the last bits).")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="classification or segmentation (default: inferred "
                                              "from --dataset; demo-ct and msd:PATH are segmentation).")]
BackgroundShareOpt = Annotated[float, typer.Option("--background-share", help="Segmentation: the training split "
                                                   "keeps every slice with foreground and this share of the other "
                                                   "slices (1: all).")]
ClassWeightsOpt = Annotated[str | None, typer.Option("--class-weights", help="Segmentation: cross-entropy weight per "
                                                     "class, background first, or none (each slice's own weighted "
                                                     "mean, so DP-SGD's per-sample gradients stay per sample); the "
                                                     "default is the seed paper's MSD Liver weights (section 4.2.3) on "
                                                     "the liver task (background, liver, tumour), else none.")]
CanariesOpt = Annotated[int, typer.Option("--canaries", help="Canaries m of the membership audit: mislabelled "
                                          "training images, each trained on by a fair coin flip.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds from another configuration "
                                           "(other options; for profile, other limits too): all of dpaudit's "
                                           "outputs there are moved aside, deleted when the run succeeds and put "
                                           "back when it fails. Without it such a folder is refused; the same "
                                           "configuration again writes there (a profile resumes).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]


# DP-SGD training options (dpaudit train, mia audit, profile): the parameter is the configurations' field.
EpsilonOpt = Annotated[float | None, typer.Option("--epsilon", help="Target epsilon; sigma is calibrated (tight "
                                                  "PLD) so the achieved epsilon is at most this.")]
SigmaOpt = Annotated[float | None, typer.Option("--sigma", help="Noise multiplier instead of a target.")]
TargetDeltaOpt = Annotated[float | None, typer.Option("--delta", help="target_delta; default min(8e-7 (paper), "
                                                      "1/(10 N)).")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Training epochs.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Logical (expected) batch size; q = batch / N.")]
PhysicalBatchSizeOpt = Annotated[int | None, typer.Option("--physical-batch-size", help="Largest batch through the "
                                                          "network at once (memory only).")]
MaxGradNormOpt = Annotated[float, typer.Option("--max-grad-norm", help="Per-sample clip norm C.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="NAdam learning rate (seed paper: 2e-3 for classification).")]
AugmentOpt = Annotated[int, typer.Option("--augment-multiplicity", help="0: none; K: K flipped views per image, "
                                         "gradients averaged before clipping.")]

#: Every shared option by the configuration field it sets.
SHARED = {"dataset": DatasetOpt, "data_dir": DataDirOpt, "labels": LabelsOpt, "window": WindowOpt,
          "slice_axis": SliceAxisOpt, "privacy_unit": PrivacyUnitOpt, "image_size": ImageSizeOpt,
          "max_images": MaxImagesOpt, "arch": ArchOpt, "arch_args": ArchArgsOpt, "fix_batchnorm": FixBatchnormOpt,
          "task": TaskOpt, "background_share": BackgroundShareOpt, "class_weights": ClassWeightsOpt, "epsilon": EpsilonOpt,
          "noise_multiplier": SigmaOpt, "target_delta": TargetDeltaOpt, "epochs": EpochsOpt,
          "batch_size": BatchSizeOpt, "physical_batch_size": PhysicalBatchSizeOpt, "max_grad_norm": MaxGradNormOpt,
          "lr": LrOpt, "augment_multiplicity": AugmentOpt}
#: The groups commands take: what data to load, how NIfTI and DICOM are read, which model, segmentation, the
#: DP-SGD mechanism of one run, and how a run trains.
DATA = ("dataset", "data_dir", "image_size", "max_images")
MEDICAL = ("labels", "window", "slice_axis")
MODEL = ("arch", "arch_args", "fix_batchnorm")
SEGMENTATION = ("task", "background_share", "class_weights")
MECHANISM = ("epsilon", "noise_multiplier", "target_delta")
TRAINING = ("epochs", "batch_size", "physical_batch_size", "max_grad_norm", "lr", "augment_multiplicity")


def shared_options(config: type, *names: str, tasks: tuple[str, ...] | None = None) -> Callable[[F], F]:
    """Add the shared options ``names`` to a command, before its own parameters, each defaulting to the field of the
    configuration dataclass ``config`` it sets; the command receives their values, converted to what the
    configuration takes (Enum choices as strings, ``--arch-args`` parsed), as one mapping ``shared``.

    So every command that takes ``--image-size`` has the same type, help and meaning, and its default is its
    configuration's (``tests/test_packaging.py`` checks both). An option whose default depends on the task (None
    in the configuration, the value in its ``TASK_DEFAULTS`` table, :mod:`dpaudit.config`) says in its help what
    the default is for each of ``tasks`` (default: every task of the table).
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    table = getattr(config, "TASK_DEFAULTS", None) or {}
    if tasks is not None:
        table = {t: table[t] for t in tasks}

    def annotation(name: str) -> Any:
        ann = SHARED[name]
        if not table or name not in next(iter(table.values())) or fields[name].default is not None:
            return ann
        from dpaudit.config import task_default_help

        base, info = typing.get_args(ann)[0], copy.copy(ann.__metadata__[0])
        info.help = f"{info.help} {task_default_help(table, name)}"
        info.show_default = False
        return Annotated[base, info]

    def default(name: str) -> Any:
        f = fields[name]
        if name == "arch_args" or f.default is dataclasses.MISSING:
            return None  # --arch-args: no JSON given, the configuration's empty mapping
        return f.default

    def decorate(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)  # the own parameters' Annotated options, evaluated
        own = [p for p in sig.parameters.values() if p.name != "shared"]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=annotation(n), default=default(n))
                 for n in names]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            shared = {n: kwargs.pop(n) for n in names}
            for n, v in shared.items():
                if isinstance(v, StrEnum):
                    shared[n] = str(v)
            if "arch_args" in shared:
                shared["arch_args"] = parse_arch_args(shared["arch_args"])
            return func(*args, shared=shared, **kwargs)

        # Keyword-only, so that the shared options may come first (--help lists them in this order) before the
        # command's own, required ones included; Typer passes every value by name.
        wrapper.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in added + own])
        return wrapper  # type: ignore[return-value]

    return decorate

def print_task_defaults(config: Any) -> None:
    """Say on stderr which options took the segmentation defaults (nothing when every one was given).

    Classification runs, at their long-standing defaults, only record theirs (``task_defaults`` in --json,
    metrics.json and profile.json), so that their console output and one-line errors stay as they were."""
    from dpaudit.config import describe_task_defaults

    line = describe_task_defaults(config) if getattr(config, "task", None) == "segmentation" else None
    if line:
        err.print(f"note: {line}", highlight=False)


def print_data_notes(notes: Iterable[str]) -> None:
    """What the data loader passed over and decided (a result's ``data_notes``), one ``note:`` line each on
    stderr, as every command that loads data prints them."""
    for note in notes:
        err.print(f"note: {note}", highlight=False)  # the console prints no markup: as written


#: Human output goes to stdout; progress bars, warnings and errors to stderr, so ``--json`` output stays clean.
#: User text prints as written: no markup unless a print asks for it (``markup=True``, its user text escaped with
#: rich.markup.escape), so a path or column holding '[abc]' or '[/x]' neither vanishes nor crashes a finished run,
#: and no emoji codes (a column named ':hospital:' would print 🏥). Tables render their cells the same way.
out = Console(highlight=False, soft_wrap=True, emoji=False, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False, markup=False)


def print_table(table, console: Console) -> None:
    """A rich table on ``console`` with every word of every cell whole (was: a column squeezed to fit rich's default
    80 columns of a file or pipe cut its cells, and an epsilon 7.694e+08 read 7.694e+...). Each column is at least
    as wide as its longest word, cells wrap at their spaces only, and output that is not a terminal is widened to
    the table's width where it cannot fit the console's; in a terminal a word wider than the screen's share folds
    onto the next line instead of ending in an ellipsis."""
    from rich.cells import cell_len

    for column in table.columns:
        words = [w for cell in (column.header, *column.cells) if isinstance(cell, str) for w in cell.split()]
        column.min_width = max([column.min_width or 0, *(cell_len(w) for w in words)])
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    # Console.print caps a width argument at the console's own: a wider table gets a console of its width.
    needed = console.measure(table, options=console.options.update_width(100_000)).minimum
    if needed <= console.width:
        console.print(table)
        return
    Console(file=console.file, width=needed, highlight=False, soft_wrap=True, emoji=False, markup=False).print(table)


class _LineConsole(Console):
    """A console for one warning line, written from inside the library (a loader's decode thread): a stderr that is
    gone (a closed pipe: ``dpaudit ... 2>&1 | head`` after head exits) drops the line. Rich's default there points
    stdout at /dev/null and raises SystemExit(1), which would end the data load from within a logging call."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


class _WarningLines(logging.Handler):
    """The library's warnings (``dpaudit.*`` loggers, e.g. each unreadable file a loader skipped, named) as
    "warning: ..." lines on stderr, each once per command (a profile loads the data once per task). A line that
    cannot be written (stderr closed) is dropped: a warning never stops the work it describes, whose facts the
    result's notes and skipped counts keep."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text not in self.seen:
            self.seen.add(text)
            # the console of the moment (tests swap stderr), never a path or a name into any file dpaudit writes
            try:
                _LineConsole(stderr=True, highlight=False, soft_wrap=True, emoji=False).print(
                    f"warning: {escape(text)}", markup=True)
            except (OSError, ValueError):  # a stderr that is closed (ValueError) or failing: nowhere to say it
                pass


_library_log = logging.getLogger("dpaudit")
if not any(isinstance(h, _WarningLines) for h in _library_log.handlers):
    _library_log.addHandler(_WarningLines())
    _library_log.propagate = False


#: Configuration fields set by a flag of another name (the library's vocabulary -> the flags, in the order they
#: are tried): an error about ``noise_multiplier`` names ``--sigmas`` on ``attack`` and ``--sigma`` on ``train``.
#: Every other field is named by the flag of the same name (``image_size`` -> ``--image-size``).
FIELD_FLAGS: dict[str, tuple[str, ...]] = {
    "noise_multiplier": ("--sigma", "--sigmas"),
    "noise_multipliers": ("--sigmas", "--sigma"),
    "sampling_probability": ("--q",),
    "target_delta": ("--delta",),
    "kappas": ("--kappa",),
    "decoders": ("--decoder",),
    "epsilon": ("--epsilon", "--epsilons"),
    "max_volumes": ("--max-images",),
    "init": ("--init", "--inits"),
}


def _items(value: Any) -> list[Any]:
    """The values a flag or a field holds: a comma-separated text or a sequence is its items."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, list | tuple):
        return [item for v in value for item in _items(v)]
    return [value]


def _same_value(given: Any, found: Any) -> bool:
    """Whether the value an error reports is (one of) the value(s) of a flag: only then is the flag named."""
    def equal(a: Any, b: Any) -> bool:
        try:
            x, y = float(a), float(b)
        except (TypeError, ValueError):
            # a path the library resolved ('/data/w.pt') is the one typed ('w.pt')
            return str(a) == str(b) or (isinstance(a, str | PurePath) and isinstance(b, str | PurePath)
                                        and os.path.realpath(a) == os.path.realpath(b))
        return x == y or (x != x and y != y)

    return any(equal(a, b) for a in _items(given) for b in _items(found))


def _default_fix(flag: str, allowed: str) -> str:
    minimum = re.fullmatch(r"an integer >= (-?\d+)", allowed)
    if minimum:
        return f"pass {flag} {minimum.group(1)} or more"
    return f"pass {flag} with a value that is {allowed}"


def user_message(exc: DpAuditError, options: dict[str, str] | None = None, values: dict[str, Any] | None = None,
                 defaulted: Iterable[str] = ()) -> str:
    """The one line an error prints: a configuration field is named by the flag that set it (``options``: flag
    -> parameter name, ``values``: parameter name -> value of the command run), and an error without a fix gets
    one that says what to pass to that flag. A value the user did not type (``defaulted``: the parameters left at
    their default, or None filled in by the configuration) is said to be the default, so that "got 64" is not
    read as something the user passed.

    >>> from dpaudit.errors import invalid
    >>> user_message(invalid("image_size", 0, "an integer >= 8"), {"--image-size": "image_size"}, {"image_size": 0})
    '--image-size must be an integer >= 8, got 0. Fix: pass --image-size 8 or more.'
    >>> user_message(invalid("batch_size", 64, "at most the number of training images (15)",
    ...                      "pass --batch-size 15 or less"), {"--batch-size": "batch_size"}, {"batch_size": None},
    ...              {"batch_size"})
    '--batch-size must be at most the number of training images (15), got 64 (the default: --batch-size was not passed). Fix: pass --batch-size 15 or less.'
    """
    field, allowed = exc.field, exc.allowed
    options, values = options or {}, values or {}
    if field is None or allowed is None:
        return with_option(str(exc), options, values)
    candidates = (field, "--" + field.replace("_", "-"), *FIELD_FLAGS.get(field, ()))
    # The flag that set the value; or, when it was not typed (None: the configuration's default applied), the flag
    # that would set it: "--batch-size must be at most 34, got 64" names what to pass even for the default 64.
    flag = next((f for f in candidates if f in options and _same_value(values.get(options[f]), exc.value)), None) \
        or next((f for f in candidates if f in options and values.get(options[f]) is None), None)
    if flag is None and field.startswith("--"):
        flag = field  # the library already named the flag
    if flag is None:
        return with_option(str(exc), options, values)
    message = message_of(flag, exc.value, allowed, exc.fix or _default_fix(flag, allowed))
    if flag in options and options[flag] in set(defaulted):
        got = message_of(flag, exc.value, allowed, None)
        message = got[:-1] + f" (the default: {flag} was not passed)." + message[len(got):]
    return message


def with_option(message: str, options: dict[str, str], values: dict[str, Any]) -> str:
    """``message`` (about a file or a text the user gave, quoted) led by the flag that gave it, unless it names that
    flag already: "--model: 'x.pt' is an HTML page, ..." rather than "'x.pt' is an HTML page, ...".

    >>> with_option("'w.pt' is an empty file. Fix: copy it again.", {"--model": "model"}, {"model": "w.pt"})
    "--model: 'w.pt' is an empty file. Fix: copy it again."
    """
    for flag, name in options.items():
        value = values.get(name)
        # A value of one or two characters ('m1', 'a') leads the message only when it is a path that exists: such a
        # short word quoted in a message about something else ('1', 'cv') would name the wrong flag.
        texts = [str(v) for v in (value if isinstance(value, list | tuple) else [value])
                 if isinstance(v, str | PurePath) and (len(str(v)) >= 3 or (str(v) and Path(str(v)).exists()))]
        if any(repr(t) in message or f'"{t}"' in message for t in texts):
            # named in the fix ("... instead of --model") is not named as the source of the problem
            named = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message.split(" Fix: ")[0])
            return message if named else f"{flag}: {message}"
    return message


def _running_command() -> tuple[dict[str, str], dict[str, Any]]:
    """The options (flag -> parameter name) and parameter values of the command being run; empty outside one."""
    get_context = getattr(typer.main, "get_current_context", None)
    ctx = get_context(silent=True) if get_context is not None else None
    if ctx is None:
        return {}, {}
    options = {opt: p.name for p in ctx.command.params
               for opt in (*p.opts, *getattr(p, "secondary_opts", ())) if opt.startswith("--")}
    return options, dict(ctx.params)


def _defaulted_parameters() -> set[str]:
    """The parameters of the running command that the user did not type (left at their default)."""
    get_context = getattr(typer.main, "get_current_context", None)
    ctx = get_context(silent=True) if get_context is not None else None
    if ctx is None:
        return set()
    # By name: Typer ships its own copy of click, whose ParameterSource is not click's.
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) in ("DEFAULT", "DEFAULT_MAP")}


class Stopped(SystemExit):
    """A signal that stops a command as Ctrl-C does (SIGTERM: ``kill``, a batch scheduler's time limit), raised in
    the main thread so that every ``finally`` runs. A :class:`SystemExit` with code 128 + the signal's number, as a
    shell reports a process the signal ended; :func:`handle_errors` says it on stderr as it says Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@contextlib.contextmanager
def says_how_to_resume(text: str) -> Iterator[None]:
    """Add ``text`` (how the work resumes) to the line :func:`handle_errors` prints when Ctrl-C or SIGTERM stops
    the block."""
    try:
        yield
    except (KeyboardInterrupt, Stopped) as exc:
        exc.add_note(text)
        raise


#: The flags whose smaller values need less memory, in the order a fix names them (those the command has).
MEMORY_FLAGS = ("--image-size", "--max-images", "--batch-size", "--n-train")


#: torch's messages for an allocation that failed (a ``RuntimeError``, not a ``MemoryError``): the CPU allocator's
#: two (c10/core/impl/alloc_cpu.cpp), and the CUDA and MPS allocators' (``torch.cuda.OutOfMemoryError`` is a
#: ``RuntimeError`` too). Matched exactly: any other ``RuntimeError`` is a bug, shown as one.
_TORCH_ALLOCATION_FAILED = re.compile(
    r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)|CUDA out of memory|MPS backend out of memory")


def allocation_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed: a ``MemoryError``, ``torch.cuda.OutOfMemoryError``, or torch's
    ``RuntimeError`` from its CPU, CUDA or MPS allocator (:data:`_TORCH_ALLOCATION_FAILED`).

    >>> allocation_failed(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
    ...                                "allocate memory: you tried to allocate 1099511627776 bytes."))
    True
    >>> allocation_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    False
    """
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and _TORCH_ALLOCATION_FAILED.search(str(exc)) is not None


def out_of_memory_line(exc: BaseException, options: dict[str, str]) -> str:
    """The line an allocation failure (:func:`allocation_failed`) prints: what ran out (how much was asked, from
    numpy's or torch's message; numpy's array shape and torch's internals left out) and the fix with the flags of
    ``options`` (the running command's) that cut the memory needed.

    >>> out_of_memory_line(MemoryError("Unable to allocate 218. TiB for an array with shape (2000, 3)"),
    ...                    {"--image-size": "image_size", "--seed": "seed"})
    'out of memory (unable to allocate 218. TiB). Fix: pass a smaller --image-size, or free memory.'
    >>> out_of_memory_line(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not "
    ...                                 "enough memory: you tried to allocate 1099511627776 bytes."), {})
    'out of memory (unable to allocate 1.00 TiB). Fix: free memory.'
    >>> out_of_memory_line(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.3 GiB total)"), {})
    'out of GPU memory (unable to allocate 2.00 GiB). Fix: free memory.'
    """
    from dpaudit.memory import format_bytes

    message = str(exc)
    device = "GPU " if re.search(r"CUDA out of memory|MPS backend out of memory", message) else ""
    if isinstance(exc, MemoryError):
        text = message.split(" for an array", 1)[0].strip()
        what = f" ({text[:1].lower() + text[1:]})" if text else ""
    elif (n := re.search(r"tried to allocate (\d+) bytes", message)) is not None:
        what = f" (unable to allocate {format_bytes(int(n.group(1)))})"
    elif (size := re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", message)) is not None:
        what = f" (unable to allocate {size.group(1)})"
    else:
        what = ""
    flags = [f for f in MEMORY_FLAGS if f in options]
    cut = f"pass a smaller {', '.join(flags)}, or " if flags else ""
    return f"out of {device}memory{what}. Fix: {cut}free memory."


def handle_errors(func: F) -> F:
    """Turn a :class:`DpAuditError` into one line on stderr and exit code 2 (no traceback, no locals); the line
    names the flag the user typed and a fix (:func:`user_message`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for handler in _library_log.handlers:
            if isinstance(handler, _WarningLines):
                handler.seen.clear()  # once per command
        try:
            return func(*args, **kwargs)
        except DpAuditError as exc:
            options, values = _running_command()
            line = user_message(exc, options, {**values, **kwargs}, _defaulted_parameters())
            err.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)
            raise typer.Exit(code=2) from None
        except OSError as exc:
            # A path the user gave cannot be read or written (missing folder, a folder where a file is expected, a
            # file where a folder is expected, no permission): one line naming the path (and the flag that gave
            # it), not a traceback.
            what = f" {str(exc.filename)!r}" if exc.filename else ""
            options, values = _running_command()
            text = with_option(f"cannot use the path{what}: {exc.strerror or str(exc)}. Fix: give a path whose "
                               "folder exists and is writable (a file name where a file is written, a folder name "
                               "where a folder is written).", options, {**values, **kwargs})
            err.print(f"[bold red]error:[/] {escape(text)}", markup=True, highlight=False)
            raise typer.Exit(code=2) from None
        except (MemoryError, RuntimeError) as exc:
            # The loaders refuse what surely cannot fit before allocating (dpaudit.memory); what still runs out
            # (the model, the attack, other processes taking the memory) is one line too, naming the sizes to cut:
            # numpy's MemoryError and torch's allocator failures (RuntimeErrors); any other RuntimeError is raised.
            if not allocation_failed(exc):
                raise
            options, _ = _running_command()
            err.print(f"[bold red]error:[/] {escape(out_of_memory_line(exc, options))}", markup=True,
                      highlight=False)
            raise typer.Exit(code=2) from None
        except (KeyboardInterrupt, Stopped) as exc:
            # Ctrl-C and SIGTERM say the same (exit codes 130 and 143, as the shell reports either signal)
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
            err.print(": ".join([how, *getattr(exc, "__notes__", ())]), highlight=False, soft_wrap=True)
            raise typer.Exit(code=128 + signum) from None

    return wrapper  # type: ignore[return-value]


def progress_bar(*columns: Any) -> Any:
    """A transient progress bar on stderr, drawn only on a terminal: elsewhere (a pipe, a log file) rich would
    leave an empty line where the bar was, so the output would start with a blank line."""
    from rich.progress import Progress

    return Progress(*columns, console=err, transient=True, disable=not err.is_terminal)


def json_text(obj: Any) -> str:
    """The JSON text of ``obj`` as every command writes it (one codec, one policy for non-finite numbers)."""
    return json.dumps(encode(obj), indent=2, allow_nan=False) + "\n"


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout (through :mod:`dpaudit.codec`: non-finite floats as "inf"/"nan")."""
    sys.stdout.write(json_text(obj))
    sys.stdout.flush()


def parse_float_list(flag: str, text: str, example: str = "1,8,20") -> list[float]:
    """Parse ``"1,8,20,1e9"`` into floats, naming the flag and the bad item on error."""
    values = []
    fix = f"pass {flag} as numbers separated by commas, e.g. {flag} {example}"
    for item in text.split(","):
        item = item.strip()
        if not item and text.strip():  # "8,,1": a value left out, or a typo; never skipped silently
            raise invalid(flag, text, f"a comma-separated list of numbers without empty items, e.g. {example}", fix)
        if not item:
            continue
        try:
            values.append(float(item))
        except ValueError:
            raise invalid(flag, item, f"a comma-separated list of numbers, e.g. {example}", fix) from None
    if not values:
        raise invalid(flag, text, f"a non-empty comma-separated list of numbers, e.g. {example}", fix)
    return values


def parse_arch_args(text: str | None) -> dict[str, Any]:
    """``--arch-args '{"spatial_dims": 2, ...}'``: a JSON object of the architecture's keyword arguments."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid("--arch-args", text, "a JSON object", f"quote it for the shell, e.g. --arch-args "
                      f"'{{\"spatial_dims\": 2}}' ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise invalid("--arch-args", text, "a JSON object ({...})", "pass e.g. --arch-args '{\"width\": 16}'")
    return value

"""Shared pieces of the command line: error handling, JSON output, consoles, number parsing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from dpaudit.codec import encode
from dpaudit.errors import DpAuditError, invalid

F = TypeVar("F", bound=Callable[..., Any])

# Options shared by the commands that load data or run torch: one name, one help text, one meaning. Each
# command states the default of its configuration dataclass (TrainConfig, ProfileConfig) at the parameter.
DatasetOpt = Annotated[str, typer.Option("--dataset", help="demo (built in, synthetic), ham10000, a MedMNIST flag "
                                         "(dermamnist, ...), folder:PATH, dicom:PATH, nifti:PATH or csv:FILE; segmentation: "
                                         "demo-ct (built in, synthetic CT) or msd:PATH (a Decathlon task folder).")]
LabelsOpt = Annotated[str | None, typer.Option("--labels", help="dicom:/nifti: a labels CSV: a label column and a "
                                               "key column (PatientID, ..., path; nifti: file).")]
WindowOpt = Annotated[str | None, typer.Option("--window", help="LOW,HIGH in modality units (HU for CT) mapped to "
                                               "0 and 1, e.g. -100,200 (dicom:, nifti:, csv:; demo-ct and msd: default "
                                               "to the liver window -100,200).")]
class SliceAxis(StrEnum):
    """How NIfTI volumes are cut into 2-D images (RAS+ axes)."""

    axial = "axial"
    coronal = "coronal"
    sagittal = "sagittal"


class PrivacyUnit(StrEnum):
    """The unit every privacy number is stated for."""

    patient = "patient"
    image = "image"


def opt_str(choice: StrEnum | None) -> str | None:
    """An Enum choice as the plain string the library's configs hold (None stays None)."""
    return None if choice is None else str(choice)


SliceAxisOpt = Annotated[SliceAxis, typer.Option("--slice-axis", help="How NIfTI volumes are cut into 2-D images.")]
PrivacyUnitOpt = Annotated[PrivacyUnit | None, typer.Option("--privacy-unit", help="Default: patient when the data "
                                                            "carry patient ids (k = the most images of one patient "
                                                            "in the training split), else image.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Folder holding the dataset files.")]
ImageSizeOpt = Annotated[int, typer.Option("--image-size", help="Images are resized to this many pixels square.")]
ArchOpt = Annotated[str, typer.Option("--arch", help="Architecture: resnet9 (GroupNorm), smallcnn, monai:NAME (a "
                                     "network from monai.networks.nets), file.py:factory or module:factory (your own "
                                     "code, imported because you name it).")]
ArchArgsOpt = Annotated[str | None, typer.Option("--arch-args", help="JSON object of the architecture's arguments, "
                                                 "e.g. '{\"spatial_dims\": 2}'.")]
TrainableOpt = Annotated[str, typer.Option("--trainable", help="all, head (linear probe) or last-N layers; frozen "
                                           "parameters get no gradients and no noise.")]
FixBatchnormOpt = Annotated[bool, typer.Option("--fix-batchnorm", help="Replace every BatchNorm by GroupNorm (Opacus' "
                                               "rule, gcd(32, C) groups); each replacement is reported.")]
MaxImagesOpt = Annotated[int | None, typer.Option("--max-images", help="Use at most this many images in total "
                                                  "(demo: its size).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch threads (default: the idle cores; results "
                                                "depend on the count in the last bits: pin it to reproduce a run).")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="classification or segmentation (default: inferred "
                                              "from --dataset; demo-ct and msd:PATH are segmentation).")]
BackgroundShareOpt = Annotated[float, typer.Option("--background-share", help="Segmentation: the training split "
                                                   "keeps every slice with foreground and this share of the other "
                                                   "slices (1: all).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]

#: Human output goes to stdout; progress bars, warnings and errors to stderr, so ``--json`` output stays clean.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def handle_errors(func: F) -> F:
    """Turn a :class:`DpAuditError` into one line on stderr and exit code 2 (no traceback, no locals)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DpAuditError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
            raise typer.Exit(code=2) from None
        except OSError as exc:
            # A path the user gave cannot be read or written (missing folder, a folder where a file is expected, a
            # file where a folder is expected, no permission): one line naming the path, not a traceback.
            what = f" '{exc.filename}'" if exc.filename else ""
            err.print(f"[bold red]error:[/] cannot use the path{escape(what)}: {escape(exc.strerror or str(exc))}. "
                      "Fix: give a path whose folder exists and is writable (a file name where a file is written, "
                      "a folder name where a folder is written).", markup=True, highlight=False)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def json_text(obj: Any) -> str:
    """The JSON text of ``obj`` as every command writes it (one codec, one policy for non-finite numbers)."""
    return json.dumps(encode(obj), indent=2, allow_nan=False) + "\n"


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout (through :mod:`dpaudit.codec`: non-finite floats as "inf"/"nan")."""
    sys.stdout.write(json_text(obj))
    sys.stdout.flush()


def parse_float_list(field: str, text: str) -> list[float]:
    """Parse ``"1,8,20,1e9"`` into floats, naming the field and the bad item on error."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(float(item))
        except ValueError:
            raise invalid(field, item, "a comma-separated list of numbers, e.g. 1,8,20") from None
    if not values:
        raise invalid(field, text, "a non-empty comma-separated list of numbers, e.g. 1,8,20")
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

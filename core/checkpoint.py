"""dpaudit checkpoints: one file that ``torch.load(path, weights_only=True)`` reads without executing code.

A checkpoint holds everything the attack, the bounds and the report need to rebuild and audit a model: the
architecture name and arguments (rebuilt through :func:`dpaudit.models.build_model`), the state dict, the input
shape, the fixed normalisation, the dataset name, the number of training images, the label names and, for a
DP-SGD model, the full DP configuration (noise multiplier, sampling probability, steps, clip norm, delta) with the
epochs and batch size, and its schedule (``phases``, Opacus' ``accountant.history`` layout). Only plain containers,
numbers, strings and tensors are stored, so loading needs no pickled classes; a file that does need them is
refused (:class:`~dpaudit.errors.CheckpointError`).

Three ways in, all returning a :class:`Checkpoint`:

* :func:`load_checkpoint` reads a dpaudit checkpoint (or, with ``arch=``, a plain state dict or a
  ``.safetensors`` file);
* :func:`load_model` also builds a randomly initialised model when no file is given;
* :func:`save_checkpoint` writes one.

Every weights file is untrusted input. Before anything is parsed, :func:`sniff_weights_file` reads the first
bytes and says what the file is (a PyTorch zip archive, a legacy PyTorch pickle, a safetensors file, an HTML page,
a Git LFS pointer, a NumPy or HDF5 file, a text file, a truncated archive, an empty file), so that a wrong file is
named as such instead of ending in a traceback or in advice that does not apply. ``.safetensors`` files are read
with the ``safetensors`` package (a JSON header and raw tensors: no code is executed). Parameter-name prefixes
that wrappers add are removed, also nested: ``module.`` (DataParallel, DistributedDataParallel), ``_module.``
(Opacus' GradSampleModule) and ``_orig_mod.`` (``torch.compile``).

A checkpoint of a model built from the user's own code (``--arch path/to/file.py:factory``) records the spec
string and arguments only; rebuilding it imports that code again only when the caller names the same spec
(``arch=`` here, ``--arch`` on the command line), never because a file said so.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpaudit.config import PRIVACY_UNIT_CHOICES, PRIVACY_UNITS, DpSgdConfig
from dpaudit.data import normalization
from dpaudit.errors import (
    CheckpointError,
    ConfigError,
    DpAuditError,
    MissingDependencyError,
    check_int,
    invalid,
    library_reason,
)
from dpaudit.models import ARCH_HELP, build_model, check_arch_args, parse_arch
from dpaudit.outputs import write_atomic, write_error

__all__ = ["FORMAT", "FORMAT_VERSION", "UNIT_KEYS", "Checkpoint", "CheckpointMeta", "PlainWeightsError", "RecordedUnit",
           "TrainingFactsError",
           "check_recorded_unit", "check_task", "describe_differences", "load_checkpoint", "load_model", "load_state_dict", "recorded_task",
           "save_checkpoint", "sniff_weights_file", "strip_wrappers", "weight_differences"]

FORMAT = "dpaudit-checkpoint"
FORMAT_VERSION = 1

#: Prefixes wrappers add to parameter names: Opacus' GradSampleModule (``_module.``), DataParallel and
#: DistributedDataParallel (``module.``), torch.compile's OptimizedModule (``_orig_mod.``). Wrappers nest
#: (``module._module.``, ``_module._orig_mod.``), so they are removed repeatedly.
WRAPPER_PREFIXES = ("_module.", "module.", "_orig_mod.")

_Scalar = int | float | str | bool | None


class PlainWeightsError(CheckpointError):
    """A weights file without dpaudit's metadata (a plain state dict or safetensors) where one with it is needed."""


def _check_json_like(key: str, value: Any) -> Any:
    """arch_args values: numbers, strings, bools, None, and lists or string-keyed dicts of them (as JSON)."""
    if isinstance(value, _Scalar):
        return value
    if isinstance(value, list | tuple):
        return [_check_json_like(key, v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _check_json_like(key, v) for k, v in value.items()}
    raise invalid(f"arch_args[{key!r}]", type(value).__name__, "numbers, strings, bools, None, lists or dicts",
                  cls=CheckpointError)


#: The fix for a checkpoint whose record of its training split (the privacy-unit facts, n_train, batch_size and
#: the sampling probability) is wrong or contradicts itself. Command-neutral: each command that reads ``--model``
#: adds its own way of giving the run by hand (:class:`TrainingFactsError`), with flags it has.
_UNIT_FIX = ("write the checkpoint again with `dpaudit train --out DIR` (DIR/model.pt records its training split's "
             "privacy unit)")

#: The privacy-unit facts ``dpaudit train`` always writes together (``audit/train.py``, ``_privacy_scalars``): a
#: checkpoint records all of them or none (hand-made files; the unit is then given by flags).
UNIT_KEYS = ("privacy_unit", "data_unit", "records_per_patient", "images_per_unit_max", "images_per_unit_mean",
             "n_units", "images_per_unit_histogram")


class TrainingFactsError(CheckpointError):
    """A checkpoint's record of its training split (privacy unit, images per unit, n_train, batch size, sampling
    probability) is wrong or contradicts itself: a bound computed from it would not be one. Its fix names
    ``dpaudit train``; a command adds how to give the run by hand with its own flags (:func:`with_fix`)."""

    def with_fix(self, alternative: str) -> TrainingFactsError:
        """This error with ``alternative`` (a command's own way around the file, e.g. its run flags) appended to
        its fix."""
        return TrainingFactsError(f"{str(self).rstrip('.')}, or {alternative}.")


@dataclass(frozen=True)
class RecordedUnit:
    """The privacy unit a checkpoint records of its training split, checked (:func:`check_recorded_unit`).

    ``privacy_unit`` is ``"patient"`` or ``"image"``; ``records_per_patient`` its k (1 for ``image``);
    ``data_unit`` where the data's groups came from (:data:`dpaudit.config.PRIVACY_UNITS`; None: not recorded, as
    in hand-made files); ``images_per_unit_max`` the most records one patient has in the training split (None: not
    recorded, or data without ids). Only counts: no identifier.
    """

    privacy_unit: str
    records_per_patient: int
    data_unit: str | None = None
    images_per_unit_max: int | None = None

    @property
    def data_k(self) -> int | None:
        """The data's k (the most records of one patient in the training split) when the data carry patient ids
        and it is recorded, else None."""
        return self.images_per_unit_max if self.data_unit not in (None, "image") else None


def _recorded_count(extra: Mapping[str, Any], key: str, n_train: int | None) -> int | None:
    """``extra[key]``, a count of training records: None when absent, else an integer in [1, n_train]."""
    if key not in extra:
        return None
    value = extra[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"extra[{key!r}]", value, "an integer >= 1", _UNIT_FIX, cls=TrainingFactsError)
    if n_train is None:
        raise invalid("n_train", None, f"recorded beside extra[{key!r}] (a count of training records is checked "
                      "against it)", _UNIT_FIX, cls=TrainingFactsError)
    if value > n_train:
        raise invalid(f"extra[{key!r}]", value, f"at most n_train ({n_train}, the training records)", _UNIT_FIX,
                      cls=TrainingFactsError)
    return value


def _check_histogram(extra: Mapping[str, Any], n_train: int | None, data_max: int | None) -> None:
    """``images_per_unit_histogram`` (a JSON list of [images, units] pairs, as ``_privacy_scalars`` writes it),
    ``n_units`` and ``images_per_unit_mean`` agree with each other, with ``images_per_unit_max`` and with n_train:
    the histogram counts every training record once (sum of images x units = n_train), its units are n_units, its
    largest bin is the data's most records of one patient, and the mean is n_train / n_units."""
    n_units = _recorded_count(extra, "n_units", n_train)
    text = extra["images_per_unit_histogram"]
    field = "extra['images_per_unit_histogram']"
    try:
        pairs = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        pairs = None
    if not isinstance(pairs, list) or not pairs or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                        for v in p) for p in pairs) \
            or len({p[0] for p in pairs}) != len(pairs):
        raise invalid(field, text, "a JSON list of [images, units] pairs of integers >= 1, one per number of "
                      "images", _UNIT_FIX, cls=TrainingFactsError)
    records = sum(a * b for a, b in pairs)
    units = sum(b for _, b in pairs)
    largest = max(a for a, _ in pairs)
    if records != n_train:
        raise invalid(field, text, f"a count of every training record once: its images x units sum to {records}, "
                      f"n_train is {n_train}", _UNIT_FIX, cls=TrainingFactsError)
    if units != n_units:
        raise invalid(field, text, f"{n_units} units (extra['n_units']), it counts {units}", _UNIT_FIX,
                      cls=TrainingFactsError)
    if largest != data_max:
        raise invalid(field, text, f"a largest bin of extra['images_per_unit_max'] ({data_max}) images, its "
                      f"largest is {largest}", _UNIT_FIX, cls=TrainingFactsError)
    mean = extra["images_per_unit_mean"]
    if isinstance(mean, bool) or not isinstance(mean, int | float) or \
            not math.isclose(mean, records / units, rel_tol=1e-9):
        raise invalid("extra['images_per_unit_mean']", mean, f"n_train / extra['n_units'] ({records} / {units} = "
                      f"{records / units:.6g})", _UNIT_FIX, cls=TrainingFactsError)


def check_recorded_unit(extra: Mapping[str, Any], n_train: int | None, task: str | None = None
                        ) -> RecordedUnit | None:
    """The privacy unit a checkpoint's ``extra`` records, checked; None when it records none (written before
    the unit was recorded, or not by ``dpaudit train``). The one check of these facts: every reader (``bounds
    --model``, ``attack --model``, the profile's tasks) gets them through :attr:`CheckpointMeta.recorded_unit`, and
    a checkpoint is refused at construction (so at load) when they are wrong.

    What ``dpaudit train`` writes (``audit/train.py``, ``_privacy_scalars``) is the rule: ``privacy_unit`` one of
    :data:`~dpaudit.config.PRIVACY_UNIT_CHOICES`; ``records_per_patient`` (k) and ``images_per_unit_max`` integers in
    [1, n_train]; a ``patient`` unit records its k (a missing k is never read as 1: per-record numbers would be
    shown as per-patient ones), on data with ids (``data_unit`` not ``image``), and never below the data's most
    records of one patient (a smaller k is no per-patient bound); an ``image`` unit has k = 1; data with patient ids
    record their ``images_per_unit_max`` (the per-patient numbers of an image-level run need it), data without
    them 1; the facts of :data:`UNIT_KEYS` all or none (train writes them together), and its
    ``images_per_unit_histogram`` agrees with n_train, ``n_units``, ``images_per_unit_max`` and
    ``images_per_unit_mean`` (:func:`_check_histogram`). A segmentation checkpoint's ``n_train_volumes`` (kappa =
    1/volumes) is an integer in [1, n_train], and recorded (without it the prior would be per slice: smaller, and
    so would be the bound).

    >>> facts = {"privacy_unit": "patient", "data_unit": "patient", "records_per_patient": 3,
    ...          "images_per_unit_max": 3, "images_per_unit_mean": 2.0, "n_units": 2,
    ...          "images_per_unit_histogram": "[[1, 1], [3, 1]]"}
    >>> check_recorded_unit(facts, 4).data_k
    3
    >>> try:
    ...     check_recorded_unit({**facts, "data_unit": None}, 4)
    ... except TrainingFactsError as exc:
    ...     print(str(exc)[:68])
    extra['data_unit'] must be recorded beside extra['privacy_unit'] (`d
    """
    volumes = _recorded_count(extra, "n_train_volumes", n_train)
    if task == "segmentation" and volumes is None:
        raise invalid("extra['n_train_volumes']", None, "recorded by a segmentation checkpoint (kappa = 1/training "
                      "volumes)", _UNIT_FIX, cls=TrainingFactsError)
    unit, data_unit = extra.get("privacy_unit"), extra.get("data_unit")
    k = _recorded_count(extra, "records_per_patient", n_train)
    data_max = _recorded_count(extra, "images_per_unit_max", n_train)
    if data_unit is not None and data_unit not in PRIVACY_UNITS:
        raise invalid("extra['data_unit']", data_unit, f"one of {', '.join(PRIVACY_UNITS)}", _UNIT_FIX,
                      cls=TrainingFactsError)
    present = [key for key in UNIT_KEYS if extra.get(key) is not None]
    if not present:
        return None  # a hand-made file: the unit comes from the flags
    missing = [key for key in UNIT_KEYS if extra.get(key) is None]
    if missing:
        # train writes the facts together: a set with some removed (data_unit, images_per_unit_max) would hide
        # the data's k, and a k edited below it would pass as a per-patient bound
        raise invalid(f"extra[{missing[0]!r}]", None, f"recorded beside extra[{present[0]!r}] (`dpaudit train` "
                      f"writes the privacy-unit facts {', '.join(UNIT_KEYS)} together; this file lacks "
                      f"{', '.join(missing)})", _UNIT_FIX, cls=TrainingFactsError)
    _check_histogram(extra, n_train, data_max)
    if data_unit == "volume" and volumes is not None and volumes != extra["n_units"]:
        raise invalid("extra['n_train_volumes']", volumes, f"extra['n_units'] ({extra['n_units']}, the training "
                      "volumes the histogram counts; kappa = 1/n_train_volumes)", _UNIT_FIX, cls=TrainingFactsError)
    if not isinstance(unit, str) or unit not in PRIVACY_UNIT_CHOICES:
        raise invalid("extra['privacy_unit']", unit, f"one of {', '.join(PRIVACY_UNIT_CHOICES)}", _UNIT_FIX,
                      cls=TrainingFactsError)
    if unit == "patient" and data_unit == "image":
        raise invalid("extra['data_unit']", data_unit, "a unit with patient ids (not 'image') with privacy_unit "
                      "'patient': a patient unit needs data with patient ids", _UNIT_FIX, cls=TrainingFactsError)
    if data_unit == "image" and data_max not in (None, 1):
        raise invalid("extra['images_per_unit_max']", data_max, "1 on data without patient ids (data_unit "
                      "'image')", _UNIT_FIX, cls=TrainingFactsError)
    if data_unit not in (None, "image") and data_max is None:
        raise invalid("extra['images_per_unit_max']", None, f"recorded on data grouped by {data_unit} (the most "
                      "records of one patient in the training split)", _UNIT_FIX, cls=TrainingFactsError)
    if unit == "image":
        if k not in (None, 1):
            raise invalid("extra['records_per_patient']", k, "1 with privacy_unit 'image'", _UNIT_FIX,
                          cls=TrainingFactsError)
        return RecordedUnit("image", 1, data_unit, data_max)
    if k is None:
        raise invalid("extra['records_per_patient']", None, "recorded with privacy_unit 'patient' (its k)",
                      _UNIT_FIX, cls=TrainingFactsError)
    if data_max is not None and k < data_max:
        raise invalid("extra['records_per_patient']", k, f"at least extra['images_per_unit_max'] ({data_max}, the "
                      "most records of one patient in the training split; a smaller k is no per-patient bound)",
                      _UNIT_FIX, cls=TrainingFactsError)
    return RecordedUnit("patient", k, data_unit, data_max)


def _check_sampling(phases: tuple[tuple[float, float, int], ...] | None, batch_size: Any, n_train: int | None
                    ) -> None:
    """A DP run's recorded sampling probability is its batch size over its training records: ``dpaudit train``
    samples each record with q = batch_size / n_train (Poisson, ``audit/train.py``). A larger n_train (a smaller
    kappa = 1/n_train) or a smaller q edited into the file would give bounds below the run's. ``batch_size`` is the
    last phase's (a schedule of several phases, Opacus' history, may change it between phases), so the last
    phase's q (dp's) is the one checked: earlier phases have no recorded batch size to check theirs against."""
    if phases is None or batch_size is None or n_train is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n_train:
        raise invalid("batch_size", batch_size, f"an integer in [1, n_train] ({n_train}, the training records)",
                      _UNIT_FIX, cls=TrainingFactsError)
    q = batch_size / n_train
    recorded = phases[-1][1]
    if not math.isclose(recorded, q, rel_tol=1e-9):  # the same division, up to float rounding
        raise invalid("dp.sampling_probability", recorded, f"batch_size / n_train ({batch_size} / {n_train} = "
                      f"{q:.6g}, the Poisson sampling probability the run trained with): the checkpoint's "
                      "batch_size, n_train and sampling_probability disagree", _UNIT_FIX, cls=TrainingFactsError)


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything in a checkpoint except the weights.

    Attributes
    ----------
    arch, arch_args:
        Architecture spec (registry name, ``monai:NAME``, ``file.py:factory`` or ``module:factory``) and keyword
        arguments for :func:`dpaudit.models.build_model` (JSON-like values).
    fix_batchnorm:
        Whether BatchNorm layers were replaced by GroupNorm (:func:`dpaudit.models.replace_batchnorm`) when the
        model was built; the rebuild does the same.
    num_classes, in_channels:
        Classifier outputs and input channels.
    input_shape:
        (C, H, W) the model was trained on, or None when unknown (plain state dict, random init without a size).
    mean, std:
        Per-channel normalisation applied to [0, 1] images before the model: ``(x - mean) / std``.
    dataset:
        Dataset name (``demo``, ``ham10000``, ...), or None.
    n_train:
        Number of training images N (the bounds' kappa = 1/N and the attack's q = 1/N need it), or None.
    label_names:
        Name of each class index.
    dp:
        The DP-SGD configuration the model was trained with, or None for a non-private (or unknown) model. With
        several phases it holds the last phase's noise multiplier and sampling probability and the total steps.
    phases:
        The run's DP schedule, ``((noise_multiplier, sampling_probability, steps), ...)`` in training order (Opacus'
        ``accountant.history`` layout; :meth:`dpaudit.bounds.Schedule.from_history` reads it). None derives the one
        phase of ``dp`` (checkpoints written before phases were stored); None for a non-private model.
    epochs, batch_size:
        Training epochs and logical (expected) batch size, or None.
    extra:
        Further scalar facts (e.g. ``epsilon_achieved``, ``epsilon_rdp``, ``seed``, ``test_mcc``).
    """

    arch: str
    num_classes: int
    in_channels: int = 3
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    dataset: str | None = None
    n_train: int | None = None
    label_names: tuple[str, ...] = ()
    dp: DpSgdConfig | None = None
    epochs: int | None = None
    batch_size: int | None = None
    extra: Mapping[str, _Scalar] = field(default_factory=dict)
    fix_batchnorm: bool = False
    phases: tuple[tuple[float, float, int], ...] | None = None

    def __post_init__(self) -> None:
        try:  # the field alone: the loader adds the file and the fix (a flag only when the flag gave the value)
            parse_arch(self.arch)
            arch_args = check_arch_args(self.arch, self.arch_args)
        except ConfigError as exc:
            raise invalid(exc.field or "arch", exc.value, exc.allowed or "valid", cls=CheckpointError) from None
        object.__setattr__(self, "phases", _check_phases(self.phases, self.dp))
        check_int("num_classes", self.num_classes)
        check_int("in_channels", self.in_channels)
        for key, value in dict(self.extra).items():
            if not isinstance(value, _Scalar):
                raise invalid(f"extra[{key!r}]", type(value).__name__, "a number, string, bool or None",
                              cls=CheckpointError)
        object.__setattr__(self, "arch_args", {k: _check_json_like(k, v) for k, v in arch_args.items()})
        object.__setattr__(self, "fix_batchnorm", bool(self.fix_batchnorm))
        object.__setattr__(self, "extra", dict(self.extra))
        mean, std = normalization(self.in_channels)
        object.__setattr__(self, "mean", tuple(float(v) for v in (self.mean or mean)))
        object.__setattr__(self, "std", tuple(float(v) for v in (self.std or std)))
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels or min(self.std) <= 0:
            raise invalid("mean/std", f"{self.mean} / {self.std}", f"{self.in_channels} values each (one per "
                          "input channel, in_channels), std > 0", cls=CheckpointError)
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if len(shape) != 3 or shape[0] != self.in_channels or min(shape) < 1:
                raise invalid("input_shape", self.input_shape, f"(C, H, W) with C = in_channels = "
                              f"{self.in_channels}", cls=CheckpointError)
            object.__setattr__(self, "input_shape", shape)
        if self.n_train is not None:
            check_int("n_train", self.n_train)
        object.__setattr__(self, "label_names", tuple(str(s) for s in self.label_names)
                           or tuple(str(i) for i in range(self.num_classes)))
        check_recorded_unit(self.extra, self.n_train, self.extra.get("task"))
        _check_sampling(self.phases, self.batch_size, self.n_train)
        if len(self.label_names) != self.num_classes:
            raise invalid("label_names", list(self.label_names), f"one name per class, {self.num_classes} "
                          f"(num_classes), not {len(self.label_names)}", cls=CheckpointError)

    @property
    def recorded_unit(self) -> RecordedUnit | None:
        """The privacy unit the checkpoint records of its training split (checked at construction), None when
        it records none: :func:`check_recorded_unit`."""
        return check_recorded_unit(self.extra, self.n_train, self.extra.get("task"))

    # Flat access to the DP configuration (None for a non-private model).
    @property
    def noise_multiplier(self) -> float | None:
        return None if self.dp is None else self.dp.noise_multiplier

    @property
    def sampling_probability(self) -> float | None:
        return None if self.dp is None else self.dp.sampling_probability

    @property
    def steps(self) -> int | None:
        return None if self.dp is None else self.dp.steps

    @property
    def max_grad_norm(self) -> float | None:
        return None if self.dp is None else self.dp.max_grad_norm

    @property
    def target_delta(self) -> float | None:
        return None if self.dp is None else self.dp.target_delta


@dataclass(frozen=True, eq=False)
class Checkpoint(CheckpointMeta):
    """A loaded checkpoint: :class:`CheckpointMeta` plus the weights.

    ``state_dict`` is empty for a randomly initialised model (``build_model`` then draws fresh weights from
    ``extra["init_seed"]``). ``source`` says where it came from: ``"dpaudit"``, ``"state_dict"``,
    ``"safetensors"`` or ``"random"``. ``code_named`` is True when the caller named the architecture spec itself
    (needed to rebuild a model from the user's own code).
    """

    state_dict: Mapping[str, torch.Tensor] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    path: str | None = None
    source: str = "dpaudit"
    code_named: bool = False

    @property
    def meta(self) -> CheckpointMeta:
        return CheckpointMeta(**{k: getattr(self, k) for k in CheckpointMeta.__dataclass_fields__})

    def build_model(self) -> nn.Module:
        """Rebuild the model and load the weights (strict); the model is returned in eval mode."""
        if parse_arch(self.arch).user_code and not self.code_named:
            raise CheckpointError(
                f"{self.path or 'the checkpoint'} was built by your own code ({self.arch}); dpaudit imports code "
                f"only when you name it. Fix: pass --arch {self.arch} (the same spec) to rebuild it.")
        with torch.random.fork_rng(devices=[]):  # a random init must not disturb the caller's generator
            torch.manual_seed(int(self.extra.get("init_seed", 0) or 0))  # type: ignore[arg-type]
            model = build_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                                fix_batchnorm=self.fix_batchnorm, arch_args=self.arch_args)
        if self.state_dict:
            differences = describe_differences(self.state_dict, model.state_dict())
            if differences:
                raise CheckpointError(
                    f"the weights in {repr(self.path) if self.path else 'the checkpoint'} do not fit "
                    f"{self.arch}{dict(self.arch_args)}: {differences}. Fix: pass the --arch and --arch-args the "
                    "model was trained with (and --fix-batchnorm if it was built with it).")
            model.load_state_dict(dict(self.state_dict), strict=True)
        return model.eval()

    @property
    def task(self) -> str | None:
        """``classification`` or ``segmentation``: what the model was trained for (None: plain weights or a
        random model, which record nothing)."""
        return _task_of(self.source, self.extra)

    def __repr__(self) -> str:
        return (f"Checkpoint(arch={self.arch!r}, arch_args={self.arch_args}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape}, dataset={self.dataset!r}, n_train={self.n_train}, dp={self.dp}, "
                f"source={self.source!r}, path={self.path!r})")


def strip_wrappers(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefixes (:data:`WRAPPER_PREFIXES`) every key shares, repeatedly (nested wrappers)."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"state dict entries {bad[:5]} are not tensors.")
    return out


def weight_differences(found: Mapping[str, Any], expected: Mapping[str, Any]
                       ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, reshaped) tensor names of a weights file (``found``) against a model's state dict
    (``expected``), both name -> tensor or shape; missing and reshaped in the model's order (its forward order for
    sequential networks), unexpected in the file's."""
    shape = {k: tuple(getattr(v, "shape", v)) for k, v in found.items()}
    want = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    missing = [k for k in want if k not in shape]
    unexpected = [k for k in shape if k not in want]
    reshaped = [k for k in want if k in shape and shape[k] != want[k]]
    return missing, unexpected, reshaped


def describe_differences(found: Mapping[str, Any], expected: Mapping[str, Any], *, shown: int = 2,
                         where: str = "the file", model: str = "the model") -> str:
    """The first tensors in which ``found`` (a weights file) and ``expected`` (the model) differ, with both shapes
    and a count of the others, e.g. ``features.0.0.weight is (9, 3, 3, 3) in the file and (8, 3, 3, 3) in the
    model, and 5 other tensors have other shapes``; empty when they agree.

    >>> describe_differences({"a": (9, 3), "b": (4,), "c": (1,)}, {"a": (8, 3), "b": (4,), "d": (2,)})
    "a is (9, 3) in the file and (8, 3) in the model; 1 tensor of the model is not in the file ('d'); 1 tensor of the file is not in the model ('c')"
    """
    missing, unexpected, reshaped = weight_differences(found, expected)
    shape = {k: tuple(getattr(v, "shape", v)) for k, v in found.items()}
    want = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}

    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(repr(k) for k in keys[:shown]) + more

    def count(n: int) -> str:
        return f"{n} tensor{'s' if n != 1 else ''}"

    parts = []
    if reshaped:
        parts.append(", ".join(f"{k} is {shape[k]} in {where} and {want[k]} in {model}" for k in reshaped[:shown])
                     + (f", and {len(reshaped) - shown} more {'has' if len(reshaped) - shown == 1 else 'have'} other shapes" if len(reshaped) > shown
                        else ""))
    if missing:
        parts.append(f"{count(len(missing))} of {model} {'is' if len(missing) == 1 else 'are'} not in {where} "
                     f"({names(missing)})")
    if unexpected:
        parts.append(f"{count(len(unexpected))} of {where} {'is' if len(unexpected) == 1 else 'are'} not in "
                     f"{model} ({names(unexpected)})")
    return "; ".join(parts)


def _check_phases(phases: Any, dp: DpSgdConfig | None, where: str = ""
                  ) -> tuple[tuple[float, float, int], ...] | None:
    """``phases`` validated against ``dp`` (untrusted: read from a file), or the one phase of ``dp`` when None.

    Each phase is [noise_multiplier (finite, > 0), sampling_probability (in (0, 1]), steps (integer >= 1)], as
    :class:`dpaudit.bounds.Phase` requires; the steps add up to ``dp.steps`` and the last phase has ``dp``'s noise
    multiplier and sampling probability. A model trained without DP has none. ``where`` prefixes the field name
    (the file, when loading).
    """
    if dp is None or not dp.is_private:
        if phases is None:
            return None
        raise invalid(f"{where}phases", phases, "None for a model trained without DP (dp is None or sigma 0)",
                      "drop phases, or record the run's DP configuration in dp", cls=CheckpointError)
    if phases is None:  # written before checkpoints stored their phases: the one phase of dp
        return ((dp.noise_multiplier, dp.sampling_probability, dp.steps),)
    fix = ("write phases as Opacus' accountant.history does, a list of [noise_multiplier, sampling_probability, "
           "steps], or drop the field to use the DP configuration's one phase")
    if not isinstance(phases, list | tuple) or not phases:
        raise invalid(f"{where}phases", phases, "a non-empty list of [noise_multiplier, sampling_probability, steps]",
                      fix, cls=CheckpointError)
    out = []
    for i, entry in enumerate(phases):
        ok = isinstance(entry, list | tuple) and len(entry) == 3 and not any(isinstance(v, bool) for v in entry)
        if ok:
            sigma, q, steps = entry
            ok = (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0
                  and isinstance(q, int | float) and 0 < q <= 1 and isinstance(steps, int) and steps >= 1)
        if not ok:
            raise invalid(f"{where}phases[{i}]", entry, "[noise_multiplier (finite, > 0), sampling_probability "
                          "(in (0, 1]), steps (integer >= 1)]", fix, cls=CheckpointError)
        out.append((float(entry[0]), float(entry[1]), int(entry[2])))
    if sum(p[2] for p in out) != dp.steps or out[-1][:2] != (dp.noise_multiplier, dp.sampling_probability):
        raise invalid(f"{where}phases", phases, f"phases whose steps add up to dp.steps ({dp.steps}) and whose last "
                      f"phase has dp's noise_multiplier ({dp.noise_multiplier:g}) and sampling_probability "
                      f"({dp.sampling_probability:g})", "the DP configuration and the schedule disagree: write both "
                      "from the same run", cls=CheckpointError)
    return tuple(out)


def _dp_to_dict(dp: DpSgdConfig | None) -> dict[str, float | int] | None:
    if dp is None:
        return None
    return {"noise_multiplier": dp.noise_multiplier, "sampling_probability": dp.sampling_probability,
            "steps": dp.steps, "max_grad_norm": dp.max_grad_norm, "target_delta": dp.target_delta}


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` as a dpaudit checkpoint readable with ``weights_only=True``.

    Opacus' ``_module.`` prefix is removed, so the file loads into the plain architecture. Returns the path.
    """
    if not isinstance(meta, CheckpointMeta):
        raise ConfigError(f"meta must be a CheckpointMeta, got {type(meta).__name__}.")
    state = strip_wrappers({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    probe = build_model(meta.arch, num_classes=meta.num_classes, in_channels=meta.in_channels,
                        fix_batchnorm=meta.fix_batchnorm, arch_args=meta.arch_args)
    differences = describe_differences(state, probe.state_dict(), where="the model saved",
                                       model=f"{meta.arch}{dict(meta.arch_args)}")
    if differences:
        raise CheckpointError(f"the model's parameters do not match {meta.arch}{dict(meta.arch_args)} "
                              f"({differences}); the checkpoint could "
                              "not be rebuilt from its metadata. Fix: pass save_checkpoint the arch, arch_args, "
                              "num_classes, in_channels and fix_batchnorm the model was built with.")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": meta.arch,
        "arch_args": dict(meta.arch_args),
        "fix_batchnorm": meta.fix_batchnorm,
        "num_classes": meta.num_classes,
        "in_channels": meta.in_channels,
        "input_shape": list(meta.input_shape) if meta.input_shape is not None else None,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "dataset": meta.dataset,
        "n_train": meta.n_train,
        "label_names": list(meta.label_names),
        "dp": _dp_to_dict(meta.dp),
        "phases": None if meta.phases is None else [list(p) for p in meta.phases],
        "epochs": meta.epochs,
        "batch_size": meta.batch_size,
        "extra": {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v))
                  for k, v in meta.extra.items()},
        "state_dict": state,
    }
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    # through a file object: the archive's inner folder is then always "archive" (torch names it after the file
    # it is given a name of), so equal checkpoints are equal bytes whatever the temporary file was called
    return write_atomic(path, lambda fh: torch.save(payload, fh))


#: What :func:`sniff_weights_file` can say a file is.
FILE_KINDS = {
    "torch-zip": "a PyTorch archive (torch.save)",
    "torch-legacy": "a legacy PyTorch pickle file",
    "safetensors": "a safetensors file",
    "truncated-zip": "a truncated or damaged zip archive (the download or copy was cut short)",
    "zip": "a zip archive that is not a PyTorch checkpoint",
    "html": "an HTML page (a web page saved instead of the file it links to)",
    "git-lfs": "a Git LFS pointer (a small text file standing in for the weights)",
    "numpy": "a NumPy .npy file",
    "hdf5": "an HDF5 file (e.g. Keras weights)",
    "text": "a text file",
    "empty": "an empty file",
    "unknown": "not a PyTorch, safetensors or other recognised weights file",
}


def sniff_weights_file(path: str | Path) -> str:
    """What a weights file is, from its first bytes (a key of :data:`FILE_KINDS`); reads no more than it needs.

    PyTorch's own format is a zip archive holding ``*/data.pkl`` (``torch.save`` since 1.6) or, before that, a
    pickle starting with protocol 2 and the magic number 0x1950a86a20f9469cfc6c (``torch/serialization.py``,
    ``MAGIC_NUMBER``). safetensors is an 8-byte little-endian header length followed by a JSON header
    (https://huggingface.co/docs/safetensors, "Format").
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            return "truncated-zip"
        return "torch-zip" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head.startswith(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"):
        return "torch-legacy"
    if len(head) >= 9:
        (n_header,) = struct.unpack("<Q", head[:8])
        if 2 <= n_header <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    text_head = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text_head.startswith((b"<!doctype html", b"<html", b"<head", b"<!--", b"<?xml")):
        return "html"
    if text_head.startswith(b"version https://git-lfs"):
        return "git-lfs"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 4096th byte still counts as text
        try:
            decoded = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
    if decoded is not None and all(c.isprintable() or c in "\t\r\n\f" for c in decoded):
        return "text"
    return "unknown"


def _not_weights(path: Path, kind: str) -> CheckpointError:
    what = FILE_KINDS[kind]
    fixes = {
        "html": "download the file itself (on GitHub or a model hub: the raw or download link, not the page)",
        "git-lfs": "fetch the real file with `git lfs pull` in its repository",
        "truncated-zip": "copy or download the file again and compare its size or checksum with the source",
        "empty": "copy or download the file again",
        "numpy": "convert it to a PyTorch state dict or a .safetensors file",
        "hdf5": "convert it to a PyTorch state dict or a .safetensors file",
        "zip": "pass the .pt/.pth file itself, not an archive that contains it",
    }
    fix = fixes.get(kind, "pass a dpaudit checkpoint (`dpaudit train --out DIR` writes DIR/model.pt), a PyTorch "
                          "state dict (.pt/.pth) or a .safetensors file")
    return CheckpointError(f"{str(path)!r} is {what}, not a weights file dpaudit can read. Fix: {fix}.")


def _torch_load(path: Path) -> Any:
    if path.is_dir():
        inside = path / "model.pt"
        hint = (f"pass {str(inside)!r}, the checkpoint in it" if inside.is_file() else
                "pass the weights file itself (`dpaudit train --out DIR` writes DIR/model.pt)")
        raise CheckpointError(f"{str(path)!r} is a folder, not a weights file. Fix: {hint}.")
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist. Fix: check the path (`dpaudit train "
                              "--out DIR` writes DIR/model.pt).")
    kind = sniff_weights_file(path)
    if kind == "safetensors":
        return _safetensors_load(path)
    if kind not in ("torch-zip", "torch-legacy"):
        raise _not_weights(path, kind)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).splitlines()
        found = next((ln.strip() for ln in lines if "GLOBAL" in ln), lines[-1].strip() if lines else "")
        raise CheckpointError(
            f"{str(path)!r} is {FILE_KINDS[kind]} but cannot be loaded safely: it holds pickled Python objects (e.g. "
            f"a whole model saved with torch.save(model); {found[:120]}), loading them would run code from the "
            "file, and dpaudit only loads with torch.load(weights_only=True). Fix: ask whoever made the file for its weights alone "
            "(torch.save(model.state_dict(), 'weights.pt') or a .safetensors file) and pass that instead; "
            "unpickle it yourself only if you trust its source.") from None
    except (RuntimeError, EOFError, OSError, struct.error, ValueError, IndexError, KeyError) as exc:
        raise CheckpointError(f"{str(path)!r} looks like {FILE_KINDS[kind]} but cannot be read "
                              f"({library_reason(exc, path)[:160]}): it is probably damaged or truncated. "
                              "Fix: copy or download it again.") from None


def _safetensors_load(path: Path) -> dict[str, Any]:
    """A safetensors file's tensors (its JSON header and raw bytes; no code runs)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise MissingDependencyError(f"{str(path)!r} is a safetensors file and the safetensors package is not "
                                     "installed. Fix: pip install safetensors.") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but cannot be read ({library_reason(exc, path)[:160]}): it is "
                              "probably damaged or truncated. Fix: copy or download it again.") from None


def _infer_shapes(state: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(in_channels, num_classes) read off the weights: the first convolution's input channels and the output
    rows of ``classifier.weight`` (registry models), else of the last 2-D weight (the usual classification head).
    Both are guesses for other models; the strict load in :meth:`Checkpoint.build_model` confirms them."""
    in_ch = next((int(v.shape[1]) for v in state.values() if v.dim() >= 3), None)
    w = state.get("classifier.weight")
    if w is None or w.dim() != 2:
        w = next((v for k, v in reversed(state.items()) if k.endswith("weight") and v.dim() == 2), None)
    return in_ch, (int(w.shape[0]) if w is not None else None)


def _arch_matches(recorded: str, given: str) -> bool:
    """Whether ``given`` names the same architecture spec as ``recorded`` (same file when both are paths)."""
    if recorded == given:
        return True
    a, b = parse_arch(recorded), parse_arch(given)
    if a.kind == b.kind == "file" and a.factory == b.factory:
        return Path(a.target).expanduser().resolve() == Path(b.target).expanduser().resolve()
    return False


def _read(path: Path) -> tuple[str, Any]:
    """("dpaudit" | "state_dict" | "safetensors", payload) of a weights file, or a CheckpointError."""
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "dpaudit", obj
    source = "safetensors" if path.suffix == ".safetensors" or sniff_weights_file(path) == "safetensors" \
        else "state_dict"
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # common training-script wrappers
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)
            and any(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(f"{str(path)!r} is a PyTorch file but neither a dpaudit checkpoint nor a state dict "
                              f"(it holds {type(obj).__name__}). Fix: save model.state_dict() or pass the file "
                              "`dpaudit train` wrote.")
    return source, obj


def _task_of(source: str, extra: Any) -> str | None:
    """A dpaudit checkpoint's task: ``extra["task"]``; one without it was written by classification training
    (segmentation runs have always recorded theirs). Other weights record no task (None)."""
    if source != "dpaudit":
        return None
    task = extra.get("task") if isinstance(extra, Mapping) else None
    return task if task in ("classification", "segmentation") else "classification"


def recorded_task(path: str | Path) -> str | None:
    """The task a weights file was trained for (:attr:`Checkpoint.task`), None when it records none."""
    source, obj = _read(Path(path))
    return _task_of(source, obj.get("extra") if source == "dpaudit" else None)


def check_task(model_task: str | None, data_task: str, *, model: str, data: str, fix: str) -> None:
    """Raise "task mismatch" when a model trained for one task meets data of the other (a segmentation U-Net and
    a classification dataset, or a classifier and CT volumes), before a shape or channel check would report a
    symptom instead. ``model_task`` None (plain weights) passes: the shape checks speak for it."""
    if model_task is not None and model_task != data_task:
        raise CheckpointError(f"task mismatch: {model} is a {model_task} model, and {data} is a {data_task} "
                              f"dataset. Fix: {fix}")


#: The fix for a checkpoint whose metadata is wrong (the file was edited, written by another tool, or damaged).
_RECREATE = ("write the checkpoint again with `dpaudit train --out DIR` (DIR/model.pt), or correct the field in the "
             "dict torch.load(path, weights_only=True) returns and torch.save it")


def _invalid_field(path: Path, exc: DpAuditError) -> CheckpointError:
    """A metadata field of the checkpoint at ``path`` is invalid: the file, the field, the value and a fix."""
    message = str(exc).rstrip(".")
    if exc.fix is None and " Fix: " not in message:
        message += f". Fix: {_RECREATE}"
    cls = TrainingFactsError if isinstance(exc, TrainingFactsError) else CheckpointError
    return cls(f"checkpoint {str(path)!r}: {message}.")


def _others(names: list[str]) -> str:
    """'; N other tensor(s) too' after the first of ``names`` is named; '' for one."""
    return f"; {len(names) - 1} other tensor{'s' if len(names) > 2 else ''} too" if len(names) > 1 else ""


def _diverged_cause(source: str, parameters: str) -> str:
    """Why a weights file holds values a model cannot use, and the fix: retrain (a dpaudit checkpoint) or save
    weights whose parameters ``parameters`` (a plain weights file)."""
    if source == "dpaudit":
        return ("the training that wrote it diverged, or the file is damaged. Fix: train again with a smaller --lr "
                "(`dpaudit train --lr ...`), or copy the file again")
    return (f"the model that saved it diverged, or the file is damaged. Fix: save the weights of a model whose "
            f"parameters {parameters}, or copy the file again")


def _weights_of(path: Path, source: str, obj: Any) -> dict[str, torch.Tensor]:
    """The weights of a file :func:`_read` returned, checked (untrusted: a dict of parameter name -> tensor) and
    wrapper prefixes removed; a :class:`CheckpointError` naming the file, the field and a fix otherwise. Every
    loader of weights reads them through here."""
    if source == "dpaudit":
        where, fix = f"checkpoint {str(path)!r}", _RECREATE
        if "state_dict" not in obj:
            raise CheckpointError(f"{where} lacks the field 'state_dict' (the weights); it is damaged. Fix: {fix}.")
        state, name = obj["state_dict"], "state_dict"
    else:
        where, fix = repr(str(path)), ("save the weights alone with torch.save(model.state_dict(), 'weights.pt') "
                                       "and pass that file")
        state, name = obj, "the state dict"
    if not isinstance(state, Mapping) or not state:
        what = f"an empty {type(state).__name__}" if isinstance(state, Mapping | list | tuple) and not state \
            else f"a {type(state).__name__}"
        raise CheckpointError(f"{where}: {name} must be a non-empty dict of parameter name -> tensor, got {what}. "
                              f"Fix: {fix}.")
    keys = [k for k in state if not isinstance(k, str)]
    if keys:
        raise CheckpointError(f"{where}: {name} must map parameter names (text) to tensors, got the key(s) "
                              f"{_short_list(keys)}. Fix: {fix}.")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        kinds = sorted({type(state[k]).__name__ for k in bad})
        raise CheckpointError(f"{where}: {name} must map parameter names to tensors; {len(bad)} entr"
                              f"{'y is' if len(bad) == 1 else 'ies are'} not ({_short_list(bad)}: "
                              f"{', '.join(kinds)}). Fix: {fix}.")
    # Weights that are nan or inf (a diverged run, a damaged copy) give an attack and a utility of nothing and
    # must never be audited as a model: refused here, where every loader reads them. The first one in the file's
    # order is named, with the count of the others.
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if bad:
        first = state[bad[0]]
        n = int((~torch.isfinite(first)).sum())
        others, cause = _others(bad), _diverged_cause(source, "are finite")
        raise CheckpointError(f"{where}: the tensor {bad[0]!r} holds {n} non-finite value{'s' if n != 1 else ''} "
                              f"(nan or inf){others}: {cause}.")
    # Finite in the file's dtype is not enough: a float64 value beyond float32's range (1e300) becomes inf when
    # copied into the model, which computes in float32 (MODEL_DTYPE), and every later step blames something else
    # (a zero gradient, --lr). Checked after the cast the model's load_state_dict does.
    big = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex())
           and not bool(torch.isfinite(_as_model_dtype(v)).all())]
    if big:
        first = state[big[0]]
        over = ~torch.isfinite(_as_model_dtype(first))
        n, peak = int(over.sum()), float(first.abs().max())
        others, cause = _others(big), _diverged_cause(source, "lie within float32's range")
        raise CheckpointError(f"{where}: the tensor {big[0]!r} ({str(first.dtype).removeprefix('torch.')}) holds "
                              f"{n} value{'s' if n != 1 else ''} beyond float32's range (largest magnitude "
                              f"{peak:.3g}, float32 holds up to {torch.finfo(MODEL_DTYPE).max:.3g}), which the "
                              f"model, computing in float32, would read as inf{others}: {cause}.")
    return strip_wrappers(state)


#: The dtype dpaudit's models compute in: weights are cast to it when loaded into one.
MODEL_DTYPE = torch.float32


def _as_model_dtype(v: torch.Tensor) -> torch.Tensor:
    """``v`` as the model holds it once loaded (a complex tensor in complex64): where a float64 value beyond
    float32's range becomes inf."""
    return v.to(torch.complex64 if v.is_complex() else MODEL_DTYPE)


def _short_list(items: list[Any], shown: int = 3) -> str:
    text = ", ".join(repr(k) for k in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


def load_state_dict(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(source, weights) of any weights file dpaudit reads, checked and wrapper prefixes removed; for ``--init``."""
    path = Path(path)
    source, obj = _read(path)
    return source, _weights_of(path, source, obj)


def load_checkpoint(path: str | Path, *, arch: str | None = None, num_classes: int | None = None,
                    in_channels: int | None = None, image_size: int | None = None,
                    arch_args: Mapping[str, Any] | None = None, fix_batchnorm: bool = False) -> Checkpoint:
    """Load a dpaudit checkpoint, or a plain state dict or ``.safetensors`` file when ``arch`` is given.

    Never executes code from the file: ``torch.load(path, weights_only=True)`` or the safetensors reader, after
    :func:`sniff_weights_file` has said what the file is. For a plain state dict (also one wrapped as
    ``{"state_dict": ...}`` or saved through DataParallel, Opacus or torch.compile), ``num_classes`` and
    ``in_channels`` are read off the weights unless given, the normalisation is the default one, and nothing about
    training is known (``dp`` is None); without ``arch`` it raises :class:`PlainWeightsError`. For a dpaudit
    checkpoint ``arch``, when given, must name the recorded architecture (it is how a model built from the
    user's own code is confirmed).
    """
    path = Path(path)
    source, obj = _read(path)
    if source == "dpaudit":
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {str(path)!r} has format version {version!r}; this dpaudit reads "
                                  f"versions up to {FORMAT_VERSION}. Fix: upgrade dpaudit.")
        recorded = obj.get("arch")
        if arch is not None and isinstance(recorded, str) and not _arch_matches(recorded, arch):
            raise invalid("arch", arch, f"the checkpoint's architecture {recorded!r} (or left out)",
                          "drop --arch: a dpaudit checkpoint records its architecture", cls=CheckpointError)
        state = _weights_of(path, source, obj)  # its errors name the file and the field already
        try:
            recorded = obj["arch"]
            try:
                dp = DpSgdConfig(**obj["dp"]) if obj.get("dp") is not None else None
            except ConfigError as exc:  # its fix names the flags of bounds, not the file's field
                raise invalid(f"dp.{exc.field}", exc.value, str(exc.allowed), _RECREATE, cls=CheckpointError) \
                    if exc.field else exc from None
            phases = _check_phases(obj.get("phases"), dp)
            extra = {k: (float(v) if v in ("inf", "-inf", "nan") else v) for k, v in obj.get("extra", {}).items()}
            return Checkpoint(
                arch=recorded, num_classes=obj["num_classes"], in_channels=obj["in_channels"],
                arch_args=obj.get("arch_args", {}), input_shape=obj.get("input_shape"),
                mean=tuple(obj["mean"]), std=tuple(obj["std"]), dataset=obj.get("dataset"),
                n_train=obj.get("n_train"), label_names=tuple(obj.get("label_names", ())), dp=dp,
                epochs=obj.get("epochs"), batch_size=obj.get("batch_size"), extra=extra,
                fix_batchnorm=bool(obj.get("fix_batchnorm", False)), phases=phases,
                state_dict=state, format_version=version, path=str(path),
                source="dpaudit", code_named=arch is not None)
        except KeyError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks the field {exc}; it is damaged. Fix: "
                                  f"{_RECREATE}.") from None
        except (ConfigError, CheckpointError) as exc:
            raise _invalid_field(path, exc) from None
        except DpAuditError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong kind (a list for a dict, ...)
            raise CheckpointError(f"checkpoint {str(path)!r} holds a field of the wrong kind ({str(exc)[:160]}); "
                                  f"it is damaged or was not written by dpaudit. Fix: {_RECREATE}.") from None
    if arch is None:
        raise PlainWeightsError(f"{str(path)!r} is a plain state dict ({source}) without architecture information. "
                                f"Fix: pass --arch ({ARCH_HELP}) and the --arch-args it was built with.")
    state = _weights_of(path, source, obj)
    in_ch, n_cls = _infer_shapes(state)
    parse_arch(arch)
    args = check_arch_args(arch, arch_args or {}, flag="--arch-args")
    in_channels = in_channels or in_ch or 3
    num_classes = num_classes or n_cls
    if num_classes is None:
        raise CheckpointError(f"cannot tell the number of classes from {str(path)!r}: no 2-D weight (linear layer) "
                              "in it. Fix: pass the architecture it was saved from with --arch and --arch-args.")
    shape = (in_channels, image_size, image_size) if image_size else None
    ckpt = Checkpoint(arch=arch, num_classes=num_classes, in_channels=in_channels, arch_args=args,
                      input_shape=shape, state_dict=state, path=str(path), source=source, code_named=True,
                      fix_batchnorm=fix_batchnorm)
    ckpt.build_model()  # fail now, with the fix, if the weights do not fit the architecture
    return ckpt


def load_model(path: str | Path | None, *, arch: str | None = None, num_classes: int | None = None,
               in_channels: int | None = None, image_size: int | None = None,
               arch_args: Mapping[str, Any] | None = None, seed: int = 0, fix_batchnorm: bool = False) -> Checkpoint:
    """A checkpoint from a file (see :func:`load_checkpoint`) or, when ``path`` is None, a random initialisation.

    For a random model ``arch`` is required; ``num_classes`` defaults to 2 and ``in_channels`` to 3; the weights
    are drawn by ``build_model()`` from ``seed`` (recorded as ``extra["init_seed"]``). Use ``.build_model()`` on
    the result to get the ``nn.Module``.
    """
    if path is not None:
        return load_checkpoint(path, arch=arch, num_classes=num_classes, in_channels=in_channels,
                               image_size=image_size, arch_args=arch_args, fix_batchnorm=fix_batchnorm)
    if arch is None:
        raise CheckpointError(f"no checkpoint and no architecture given. Fix: pass --model FILE or --arch "
                              f"({ARCH_HELP}) for a randomly initialised model.")
    in_channels = in_channels or 3
    shape = (in_channels, image_size, image_size) if image_size else None
    parse_arch(arch)  # the flags' values: their errors name --arch and --arch-args
    arch_args = check_arch_args(arch, arch_args or {}, flag="--arch-args")
    try:
        ckpt = Checkpoint(arch=arch, num_classes=num_classes or 2, in_channels=in_channels,
                          arch_args=arch_args, input_shape=shape, extra={"init_seed": int(seed)},
                          source="random", code_named=True, fix_batchnorm=fix_batchnorm)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    ckpt.build_model()  # validate the spec and arguments now
    return ckpt

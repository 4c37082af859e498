"""dpaudit checkpoints: one file that ``torch.load(path, weights_only=True)`` reads without executing code.

A checkpoint holds everything the attack, the bounds and the report need to rebuild and audit a model: the
architecture name and arguments (rebuilt through :func:`dpaudit.models.build_model`), the state dict, the input
shape, the fixed normalisation, the dataset name, the number of training images, the label names and, for a
DP-SGD model, the full DP configuration (noise multiplier, sampling probability, steps, clip norm, delta) with the
epochs and batch size. Only plain containers, numbers, strings and tensors are stored, so loading needs no
pickled classes; a file that does need them is refused (:class:`~dpaudit.errors.CheckpointError`).

Three ways in, all returning a :class:`Checkpoint`:

* :func:`load_checkpoint` reads a dpaudit checkpoint (or, with ``arch=``, a plain state dict);
* :func:`load_model` also builds a randomly initialised model when no file is given;
* :func:`save_checkpoint` writes one.
"""

from __future__ import annotations

import math
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpaudit.config import DpSgdConfig
from dpaudit.data import normalization
from dpaudit.errors import CheckpointError, ConfigError, check_int, invalid
from dpaudit.models import ARCHITECTURES, build_model

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "CheckpointMeta", "load_checkpoint", "load_model",
           "save_checkpoint"]

FORMAT = "dpaudit-checkpoint"
FORMAT_VERSION = 1

#: Prefixes wrappers add to parameter names: Opacus' GradSampleModule (``_module.``), DataParallel (``module.``).
_WRAPPER_PREFIXES = ("_module.", "module.")

_Scalar = int | float | str | bool | None


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything in a checkpoint except the weights.

    Attributes
    ----------
    arch, arch_args:
        Registry name and keyword arguments for :func:`dpaudit.models.build_model`.
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
        The DP-SGD configuration the model was trained with, or None for a non-private (or unknown) model.
    epochs, batch_size:
        Training epochs and logical (expected) batch size, or None.
    extra:
        Further scalar facts (e.g. ``epsilon_achieved``, ``epsilon_rdp``, ``seed``, ``test_mcc``).
    """

    arch: str
    num_classes: int
    in_channels: int = 3
    arch_args: Mapping[str, _Scalar] = field(default_factory=dict)
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

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise invalid("arch", self.arch, f"one of {sorted(ARCHITECTURES)}", "pass --arch with one of these names",
                          cls=CheckpointError)
        check_int("num_classes", self.num_classes)
        check_int("in_channels", self.in_channels)
        for key, value in {**dict(self.arch_args), **dict(self.extra)}.items():
            if not isinstance(value, _Scalar):
                raise CheckpointError(f"checkpoint field {key!r} must be a number, string, bool or None, got "
                                      f"{type(value).__name__}.")
        object.__setattr__(self, "arch_args", dict(self.arch_args))
        object.__setattr__(self, "extra", dict(self.extra))
        mean, std = normalization(self.in_channels)
        object.__setattr__(self, "mean", tuple(float(v) for v in (self.mean or mean)))
        object.__setattr__(self, "std", tuple(float(v) for v in (self.std or std)))
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels or min(self.std) <= 0:
            raise CheckpointError(f"mean/std must hold {self.in_channels} values (std > 0), got {self.mean} / "
                                  f"{self.std}.")
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if len(shape) != 3 or shape[0] != self.in_channels or min(shape) < 1:
                raise CheckpointError(f"input_shape must be (C, H, W) with C = in_channels = {self.in_channels}, "
                                      f"got {self.input_shape}.")
            object.__setattr__(self, "input_shape", shape)
        if self.n_train is not None:
            check_int("n_train", self.n_train)
        object.__setattr__(self, "label_names", tuple(str(s) for s in self.label_names)
                           or tuple(str(i) for i in range(self.num_classes)))
        if len(self.label_names) != self.num_classes:
            raise CheckpointError(f"{len(self.label_names)} label names for {self.num_classes} classes.")

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
    ``extra["init_seed"]``). ``source`` says where it came from: ``"dpaudit"``, ``"state_dict"`` or ``"random"``.
    """

    state_dict: Mapping[str, torch.Tensor] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    path: str | None = None
    source: str = "dpaudit"

    @property
    def meta(self) -> CheckpointMeta:
        return CheckpointMeta(**{k: getattr(self, k) for k in CheckpointMeta.__dataclass_fields__})

    def build_model(self) -> nn.Module:
        """Rebuild the model and load the weights (strict); the model is returned in eval mode."""
        with torch.random.fork_rng(devices=[]):  # a random init must not disturb the caller's generator
            torch.manual_seed(int(self.extra.get("init_seed", 0) or 0))  # type: ignore[arg-type]
            model = build_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                                **self.arch_args)
        if self.state_dict:
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            found = {k: tuple(v.shape) for k, v in self.state_dict.items()}
            missing = sorted(set(expected) - set(found))
            unexpected = sorted(set(found) - set(expected))
            mismatched = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
            if missing or unexpected or mismatched:
                raise CheckpointError(
                    f"the weights in {self.path or 'the checkpoint'} do not fit {self.arch}{dict(self.arch_args)} "
                    f"(missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {mismatched[:3]}). Fix: "
                    "pass the --arch and architecture arguments the model was trained with.")
            model.load_state_dict(dict(self.state_dict), strict=True)
        return model.eval()

    def __repr__(self) -> str:
        return (f"Checkpoint(arch={self.arch!r}, arch_args={self.arch_args}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape}, dataset={self.dataset!r}, n_train={self.n_train}, dp={self.dp}, "
                f"source={self.source!r}, path={self.path!r})")


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"state dict entries {bad[:5]} are not tensors.")
    return out


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
    state = _strip_wrappers({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    probe = build_model(meta.arch, num_classes=meta.num_classes, in_channels=meta.in_channels, **meta.arch_args)
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise CheckpointError(f"the model's parameters do not match {meta.arch}{dict(meta.arch_args)} "
                              f"(extra {sorted(set(found) - set(expected))[:3]}, missing "
                              f"{sorted(set(expected) - set(found))[:3]}, other shapes "
                              f"{sorted(k for k in found if k in expected and found[k] != expected[k])[:3]}); "
                              "the checkpoint could not be rebuilt from its metadata.")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": meta.arch,
        "arch_args": dict(meta.arch_args),
        "num_classes": meta.num_classes,
        "in_channels": meta.in_channels,
        "input_shape": list(meta.input_shape) if meta.input_shape is not None else None,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "dataset": meta.dataset,
        "n_train": meta.n_train,
        "label_names": list(meta.label_names),
        "dp": _dp_to_dict(meta.dp),
        "epochs": meta.epochs,
        "batch_size": meta.batch_size,
        "extra": {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v))
                  for k, v in meta.extra.items()},
        "state_dict": state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist. Fix: pass the file written by "
                              "`dpaudit train` (DIR/model.pt), or --arch NAME without --model for a random model.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[-1] if str(exc) else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be loaded safely: it needs code execution to unpickle Python objects "
            f"({first.strip()[:160]}). dpaudit only loads with torch.load(weights_only=True). Fix: in trusted "
            "code, load it and re-save the weights alone, torch.save(model.state_dict(), 'weights.pt'), then pass "
            "--model weights.pt --arch NAME; or save with dpaudit.checkpoint.save_checkpoint.") from None
    except (RuntimeError, EOFError, OSError, struct.error) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable PyTorch file ({type(exc).__name__}: "
                              f"{str(exc)[:160]}).") from None


def _infer_shapes(state: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(in_channels, num_classes) read off a registry model's first convolution and ``classifier`` layer."""
    in_ch = next((int(v.shape[1]) for v in state.values() if v.dim() == 4), None)
    w = state.get("classifier.weight")
    return in_ch, (int(w.shape[0]) if w is not None and w.dim() == 2 else None)


def load_checkpoint(path: str | Path, *, arch: str | None = None, num_classes: int | None = None,
                    in_channels: int | None = None, image_size: int | None = None,
                    arch_args: Mapping[str, _Scalar] | None = None) -> Checkpoint:
    """Load a dpaudit checkpoint, or a plain state dict when ``arch`` is given.

    Always ``torch.load(path, weights_only=True)``: a file that needs pickled classes raises
    :class:`~dpaudit.errors.CheckpointError` saying how to re-save it. For a plain state dict (also one wrapped as
    ``{"state_dict": ...}`` or saved from an Opacus ``GradSampleModule``), ``num_classes`` and ``in_channels``
    are read off the weights unless given, the normalisation is the default one, and nothing about training is
    known (``dp`` is None).
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {str(path)!r} has format version {version!r}; this dpaudit reads "
                                  f"versions up to {FORMAT_VERSION}. Fix: upgrade dpaudit.")
        try:
            dp = DpSgdConfig(**obj["dp"]) if obj.get("dp") is not None else None
            extra = {k: (float(v) if v in ("inf", "-inf", "nan") else v) for k, v in obj.get("extra", {}).items()}
            return Checkpoint(
                arch=obj["arch"], num_classes=obj["num_classes"], in_channels=obj["in_channels"],
                arch_args=obj.get("arch_args", {}), input_shape=obj.get("input_shape"),
                mean=tuple(obj["mean"]), std=tuple(obj["std"]), dataset=obj.get("dataset"),
                n_train=obj.get("n_train"), label_names=tuple(obj.get("label_names", ())), dp=dp,
                epochs=obj.get("epochs"), batch_size=obj.get("batch_size"), extra=extra,
                state_dict=_strip_wrappers(obj["state_dict"]), format_version=version, path=str(path),
                source="dpaudit")
        except KeyError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks the field {exc}; it is damaged.") from None
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} holds an invalid value: {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)):
        raise CheckpointError(f"{str(path)!r} is neither a dpaudit checkpoint nor a state dict.")
    if arch is None:
        raise CheckpointError(f"{str(path)!r} is a plain state dict without architecture information. Fix: pass "
                              f"--arch with one of {sorted(ARCHITECTURES)} (and its arguments).")
    state = _strip_wrappers(obj)
    in_ch, n_cls = _infer_shapes(state)
    in_channels = in_channels or in_ch or 3
    num_classes = num_classes or n_cls
    if num_classes is None:
        raise CheckpointError(f"cannot tell the number of classes from {str(path)!r}. Fix: pass num_classes.")
    shape = (in_channels, image_size, image_size) if image_size else None
    ckpt = Checkpoint(arch=arch, num_classes=num_classes, in_channels=in_channels, arch_args=arch_args or {},
                      input_shape=shape, state_dict=state, path=str(path), source="state_dict")
    ckpt.build_model()  # fail now, with the fix, if the weights do not fit the architecture
    return ckpt


def load_model(path: str | Path | None, *, arch: str | None = None, num_classes: int | None = None,
               in_channels: int | None = None, image_size: int | None = None,
               arch_args: Mapping[str, _Scalar] | None = None, seed: int = 0) -> Checkpoint:
    """A checkpoint from a file (see :func:`load_checkpoint`) or, when ``path`` is None, a random initialisation.

    For a random model ``arch`` is required; ``num_classes`` defaults to 2 and ``in_channels`` to 3; the weights
    are drawn by ``build_model()`` from ``seed`` (recorded as ``extra["init_seed"]``). Use ``.build_model()`` on
    the result to get the ``nn.Module``.
    """
    if path is not None:
        return load_checkpoint(path, arch=arch, num_classes=num_classes, in_channels=in_channels,
                               image_size=image_size, arch_args=arch_args)
    if arch is None:
        raise CheckpointError(f"no checkpoint and no architecture given. Fix: pass --model FILE or --arch with one "
                              f"of {sorted(ARCHITECTURES)} for a randomly initialised model.")
    in_channels = in_channels or 3
    shape = (in_channels, image_size, image_size) if image_size else None
    ckpt = Checkpoint(arch=arch, num_classes=num_classes or 2, in_channels=in_channels,
                      arch_args=arch_args or {}, input_shape=shape, extra={"init_seed": int(seed)}, source="random")
    build_model(arch, num_classes=ckpt.num_classes, in_channels=in_channels, **ckpt.arch_args)  # validate args
    return ckpt

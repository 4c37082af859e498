"""Model registry: DP-friendly architectures (no BatchNorm; GroupNorm mixes no samples), and the user's own.

``build_model(arch, num_classes=..., in_channels=..., **arch_args)`` builds a classifier from an *architecture
spec*, one of:

* a registry name (:data:`ARCHITECTURES`: ``resnet9``, ``smallcnn``);
* ``monai:NAME``, a network from ``monai.networks.nets`` (the optional extra ``monai``), e.g.
  ``monai:DenseNet121`` with ``spatial_dims=2``;
* ``path/to/file.py:factory`` or ``package.module:factory``, the user's own code: a callable returning an
  ``nn.Module``. It is imported only because the user named it on the command line; a checkpoint records the spec
  string and the keyword arguments, never code, so loading a checkpoint stays data-only (rebuilding such a model
  imports the named file again, as the user asked when they first named it).

The class count and input channels reach the factory under the names its signature uses (``num_classes``,
``out_channels`` or ``classes``; ``in_channels`` or ``n_input_channels``); ``spatial_dims`` defaults to 2 where a
factory takes it. An explicit argument that disagrees with the data is an error, never silently overridden.

:func:`replace_batchnorm` is the documented replacement for the one layer type DP-SGD cannot train that has a
drop-in fix: BatchNorm becomes GroupNorm, by the same rule as Opacus' ``ModuleValidator.fix``. It is applied only
when asked for (``fix_batchnorm=True``, ``--fix-batchnorm``) and returns what it replaced, so that it is reported.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpaudit.errors import ConfigError, MissingDependencyError, check_int, invalid


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups`` (GroupNorm needs channels % groups == 0)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _conv_block(c_in: int, c_out: int, *, pool: bool, act: type[nn.Module]) -> nn.Sequential:
    # bias=False: GroupNorm right after removes any per-channel offset anyway.
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(_groups(c_out), c_out),
        act(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int, act: type[nn.Module], scale_norm: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(channels, channels, pool=False, act=act),
            _conv_block(channels, channels, pool=False, act=act),
        )
        # ScaleNorm (Klause et al., "Differentially private training of residual networks with scale
        # normalisation", arXiv 2203.00324): a normalisation after the residual addition.
        self.norm = nn.GroupNorm(_groups(channels), channels) if scale_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.body(x))


class ResNet9(nn.Module):
    """ResNet-9 (Page's DAWNBench layout) with GroupNorm, as used for DP-SGD by Klause et al. and the seed paper.

    Channel widths are width * (1, 2, 4, 8); the paper's network uses width 64. The default here is 16, which
    trains at a useful speed on a CPU; pass ``width=64`` for the paper's size.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, scale_norm: bool = False,
                 activation: str = "mish") -> None:
        super().__init__()
        acts = {"relu": nn.ReLU, "mish": nn.Mish, "selu": nn.SELU, "silu": nn.SiLU}
        if activation not in acts:
            raise invalid("activation", activation, f"one of {', '.join(map(str, sorted(acts)))}")
        act = acts[activation]
        w = width
        self.features = nn.Sequential(
            _conv_block(in_channels, w, pool=False, act=act),
            _conv_block(w, 2 * w, pool=True, act=act),
            _Residual(2 * w, act, scale_norm),
            _conv_block(2 * w, 4 * w, pool=True, act=act),
            _conv_block(4 * w, 8 * w, pool=True, act=act),
            _Residual(8 * w, act, scale_norm),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A two-layer convolutional network with GroupNorm: fast, for tests and quick demos."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, width, pool=True, act=nn.ReLU),
            _conv_block(width, 2 * width, pool=True, act=nn.ReLU),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def unet(num_classes: int, in_channels: int = 1, width: int = 8, groups: int = 4) -> nn.Module:
    """A 2-D U-Net for segmentation: MONAI's ``BasicUNet`` with GroupNorm, bilinear upsampling and no BatchNorm.

    Channel widths are width * (1, 1, 2, 4, 8) down and width at the last up-block (MONAI's default features
    (32, 32, 64, 128, 256, 32) are width 32; the seed paper's MSD Liver U-Net had 16 channels, section 4.2.3;
    the default 8 trains at a useful speed on a CPU). Four poolings; any input size works (MONAI pads the
    skip connections).

    DP-SGD: ``upsample="nontrainable"`` is bilinear ``Upsample`` followed by a ``Conv2d`` (MONAI's ``pre_conv``),
    so every trainable layer is a ``Conv2d`` or ``GroupNorm``, which Opacus' per-sample-gradient hooks handle
    exactly (``tests/test_segmentation.py`` compares them with per-sample autograd). The default ``deconv``
    (``ConvTranspose2d``) has no Opacus hook and would fall back to functorch. LeakyReLU (slope 0.1, MONAI's
    default) has no parameters; PReLU (MONAI ``UNet``'s default) would need a per-sample gradient of its slope.
    """
    try:
        from monai.networks.nets import BasicUNet
    except ImportError:
        from dpaudit.errors import MissingDependencyError

        raise MissingDependencyError("the unet architecture needs MONAI, which is not installed. Fix: pip install "
                                     "monai (dpaudit is tested with monai 1.6).") from None
    w = int(width)
    if w < 1 or w % groups:
        raise invalid("width", width, f"a positive multiple of groups ({groups})", "pass e.g. width=8")
    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                     features=(w, w, 2 * w, 4 * w, 8 * w, w),
                     act=("leakyrelu", {"negative_slope": 0.1, "inplace": False}),
                     norm=("group", {"num_groups": groups}), bias=True, dropout=0.0, upsample="nontrainable")


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet9": ResNet9,
    "smallcnn": SmallCNN,
    "unet": unet,
}

#: Words a factory's signature may use for the number of classes and the input channels, in order of preference.
_CLASS_NAMES = ("num_classes", "out_channels", "classes")
_CHANNEL_NAMES = ("in_channels", "n_input_channels")
#: Arguments that would make a factory download weights: dpaudit never downloads anything (pass --init FILE).
_DOWNLOAD_ARGS = ("pretrained", "progress")

#: Architectures whose output is a class map (N x K x H x W) rather than N x K scores.
SEGMENTATION_ARCHITECTURES = frozenset({"unet"})


def check_arch_for_task(arch: str, task: str) -> None:
    """Refuse a registry network of the other task (``resnet9`` for segmentation, ``unet`` for classification)
    when the configuration is built, before any training; other specs (MONAI, the user's code) are checked on
    their output shape (:func:`check_classifier`)."""
    if task == "segmentation" and arch in ARCHITECTURES and arch not in SEGMENTATION_ARCHITECTURES:
        raise invalid("arch", arch, f"one of {', '.join(map(str, sorted(SEGMENTATION_ARCHITECTURES)))} (or a segmentation network spec) "
                      "for segmentation", "pass --arch unet (the segmentation default) or leave out --arch")
    if task == "classification" and arch in SEGMENTATION_ARCHITECTURES:
        raise invalid("arch", arch, "a classifier for classification",
                      "pass --arch resnet9 (the classification default) or leave out --arch")


ARCH_HELP = ("a registry name (" + ", ".join(ARCHITECTURES) + "), monai:NAME (a network from monai.networks.nets), "
             "path/to/file.py:factory or package.module:factory")


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture spec: ``kind`` is ``registry``, ``monai``, ``file`` or ``module``."""

    spec: str
    kind: str
    target: str  # registry name, MONAI class name, file path or module name
    factory: str | None  # attribute in the file or module (None for registry and MONAI)

    @property
    def user_code(self) -> bool:
        return self.kind in ("file", "module")


def parse_arch(arch: str) -> ArchSpec:
    """Parse an architecture spec (see the module docstring); an unknown form is a :class:`ConfigError`."""
    if not isinstance(arch, str) or not arch.strip():
        raise invalid("arch", arch, ARCH_HELP, "pass e.g. --arch resnet9")
    arch = arch.strip()
    if arch in ARCHITECTURES:
        return ArchSpec(arch, "registry", arch, None)
    if arch.startswith("monai:"):
        name = arch.split(":", 1)[1]
        if not name.isidentifier():
            raise invalid("arch", arch, "monai:NAME with NAME a class in monai.networks.nets",
                          "pass e.g. --arch monai:DenseNet121")
        return ArchSpec(arch, "monai", name, None)
    if ":" in arch:
        target, factory = arch.rsplit(":", 1)
        if not factory.isidentifier() or not target:
            raise invalid("arch", arch, ARCH_HELP, "name the factory function after the colon, e.g. mynet.py:build")
        if target.endswith(".py") or "/" in target or "\\" in target:
            return ArchSpec(arch, "file", target, factory)
        if all(part.isidentifier() for part in target.split(".")):
            return ArchSpec(arch, "module", target, factory)
    raise invalid("arch", arch, ARCH_HELP, "pass e.g. --arch resnet9, --arch monai:DenseNet121 or "
                  "--arch mynet.py:build")


def check_arch_args(arch: str, arch_args: Mapping[str, Any], *, flag: str | None = None) -> dict[str, Any]:
    """Refuse a registry architecture's argument of the wrong kind before any model is built: each must have the
    kind of its default (a bool for a bool, a whole number >= 1 for a number such as ``width`` or ``groups``, a
    text for a text), as ``--arch-args`` JSON or a checkpoint's ``arch_args`` may hold anything. ``flag`` is the
    option the arguments came from (the fix names it); None for arguments read from a file (its loader adds the
    fix). Other specs (MONAI, the user's code) are checked by their own constructors when built, and arguments a
    registry factory does not take by :func:`factory_arguments`. Returns the arguments, a whole number written
    as a float (JSON ``8.0``) as an int.

    >>> check_arch_args("smallcnn", {"width": 0}, flag="--arch-args")
    Traceback (most recent call last):
    ...
    dpaudit.errors.ConfigError: arch_args.width must be an integer >= 1, got 0. Fix: pass e.g. --arch-args '{"width": 8}', or leave width out.
    """
    out = dict(arch_args)
    if not isinstance(arch, str) or arch.strip() not in ARCHITECTURES:
        return out
    params = inspect.signature(ARCHITECTURES[arch.strip()]).parameters
    for name, value in out.items():
        param = params.get(name)
        if param is None or name in ("num_classes", "in_channels") or param.default is inspect.Parameter.empty:
            continue  # unknown names are refused where the model is built, with the names it accepts
        default = param.default
        fix = (None if flag is None else
               f"pass e.g. {flag} '{json.dumps({name: default})}', or leave {name} out")
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise invalid(f"arch_args.{name}", value, "true or false", fix)
        elif isinstance(default, int):
            out[name] = check_int(f"arch_args.{name}", value, fix=fix)
        elif isinstance(default, str) and not isinstance(value, str):
            raise invalid(f"arch_args.{name}", value, "a text", fix)
    return out


def _import_file(path_text: str, spec: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise invalid("arch", spec, f"FILE.py:factory with an existing Python file ({path_text!r} is not one)",
                      "pass the path of the file that defines the factory, e.g. --arch models/mynet.py:build")
    resolved = path.resolve()
    # One module per file content and place: rebuilding the same file twice reuses it.
    key = hashlib.sha256(str(resolved).encode() + resolved.read_bytes()).hexdigest()[:16]
    name = f"dpaudit_user_arch_{key}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise invalid("arch", spec, f"FILE.py:factory with FILE a Python source file ({path_text!r} is not a .py "
                      "file)", "pass the .py file that defines the factory, e.g. --arch models/mynet.py:build")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any failure is reported as theirs, in one line
        del sys.modules[name]
        raise ConfigError(f"importing {path_text} (named by --arch) failed: {type(exc).__name__}: "
                          f"{str(exc)[:200]}. Fix: run `python {path_text}` to see the error in your code.") from None
    return module


def resolve_factory(spec: ArchSpec) -> Callable[..., nn.Module]:
    """The callable that builds ``spec``; imports MONAI or the user's module (never anything else)."""
    if spec.kind == "registry":
        return ARCHITECTURES[spec.target]
    if spec.kind == "monai":
        try:
            nets = importlib.import_module("monai.networks.nets")
        except ImportError:
            raise MissingDependencyError(
                f"--arch {spec.spec} needs MONAI, which is not installed. Fix: pip install \"dpaudit[monai]\" "
                "(or pip install monai; it uses the installed torch).") from None
        factory = getattr(nets, spec.target, None)
        if not callable(factory):
            raise invalid("arch", spec.spec, "monai:NAME with NAME a network in monai.networks.nets",
                          "pass e.g. --arch monai:DenseNet121 (see `python -c \"import monai.networks.nets as n; "
                          "print(dir(n))\"`)")
        return factory
    if spec.kind == "file":
        module = _import_file(spec.target, spec.spec)
    else:
        try:
            module = importlib.import_module(spec.target)
        except ImportError as exc:
            raise invalid("arch", spec.spec, "package.module:factory with an importable module",
                          f"install the package or check the name ({exc})") from None
    factory = getattr(module, spec.factory or "", None)
    if not callable(factory):
        raise invalid("arch", spec.spec, f"a callable named {spec.factory!r} in {spec.target}",
                      "name the function that returns the nn.Module after the colon")
    return factory


def _accepts(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """(named parameters, whether it takes **kwargs)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return set(), True
    named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


def factory_arguments(arch: str, *, num_classes: int, in_channels: int, arch_args: Mapping[str, Any]
                      ) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """The factory for ``arch`` and the keyword arguments it is called with.

    ``num_classes`` and ``in_channels`` are passed under the names the factory's signature uses; a value for them
    in ``arch_args`` must agree with the data. Unknown arguments are refused for factories with a fixed signature.
    """
    spec = parse_arch(arch)
    factory = resolve_factory(spec)
    named, var_kw = _accepts(factory)
    args = dict(arch_args)
    for bad in _DOWNLOAD_ARGS:
        if args.get(bad):
            raise invalid(f"arch_args.{bad}", args[bad], "false (dpaudit never downloads weights)",
                          "drop it from --arch-args and pass the pretrained weights file with --init FILE")
    if spec.kind == "registry":
        accepted = named - {"num_classes", "in_channels"}
        unknown = sorted(set(args) - accepted)
        if unknown:
            raise ConfigError(f"arch_args {unknown} are not arguments of {arch!r}; it accepts {sorted(accepted)}. "
                              "Fix: drop them from --arch-args or use an architecture that takes them.")
        args = check_arch_args(arch, args, flag="--arch-args")
        return factory, {**args, "num_classes": num_classes, "in_channels": in_channels}
    for names, value, what in ((_CLASS_NAMES, num_classes, "number of classes"),
                               (_CHANNEL_NAMES, in_channels, "input channels")):
        given = [n for n in names if n in args]
        for n in given:
            if args[n] != value:
                raise invalid(f"arch_args.{n}", args[n], f"the data's {what} ({value})",
                              f"drop {n} from --arch-args (dpaudit passes the data's value) or set it to {value}")
        if not given:
            target = next((n for n in names if n in named), None)
            if target is not None:
                args[target] = value
            elif not var_kw:
                raise ConfigError(f"{arch!r} takes none of {', '.join(map(str, names))}, so dpaudit cannot pass the {what} "
                                  f"({value}). Fix: give the factory a parameter named {names[0]}.")
    if "spatial_dims" in named and "spatial_dims" not in args:
        args["spatial_dims"] = 2
    if not var_kw:
        unknown = sorted(set(args) - named)
        if unknown:
            raise ConfigError(f"arch_args {unknown} are not arguments of {arch!r}; it accepts {sorted(named)}. "
                              "Fix: drop them from --arch-args.")
    return factory, args


def build_model(arch: str, *, num_classes: int, in_channels: int = 3, fix_batchnorm: bool = False,
                arch_args: Mapping[str, Any] | None = None, **more_args: Any) -> nn.Module:
    """Build a classifier from an architecture spec (see the module docstring).

    The architecture's arguments come as ``arch_args`` (a mapping: it may hold ``in_channels`` or
    ``out_channels`` itself, as ``--arch-args`` JSON does) and/or as further keywords. With ``fix_batchnorm``
    every BatchNorm is replaced by GroupNorm (:func:`replace_batchnorm`). Raises
    :class:`~dpaudit.errors.ConfigError` for an unknown spec, an argument the factory does not take, or a factory
    that fails or does not return an ``nn.Module``.
    """
    arch_args = {**dict(arch_args or {}), **more_args}
    factory, kwargs = factory_arguments(arch, num_classes=num_classes, in_channels=in_channels, arch_args=arch_args)
    if parse_arch(arch).kind == "registry":
        model = factory(**kwargs)
    else:
        try:
            model = factory(**kwargs)
        except Exception as exc:  # the user's or MONAI's constructor: report in one line, with the arguments
            raise ConfigError(f"building {arch} with {_short_args(kwargs)} failed: {type(exc).__name__}: "
                              f"{str(exc)[:200]}. Fix: check --arch-args against the factory's "
                              "parameters.") from None
    if not isinstance(model, nn.Module):
        raise invalid("arch", arch, "a factory that returns a torch.nn.Module", f"it returned "
                      f"{type(model).__name__}; return the network itself")
    # In-place activations (ReLU(inplace=True), as MONAI's and torchvision's networks use) modify the output of
    # Opacus' backward hooks and fail under DP-SGD ("a view ... is being modified inplace"); the out-of-place
    # version computes the same function, so it is switched off everywhere.
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    if fix_batchnorm:
        replace_batchnorm(model)
    return model


def _short_args(kwargs: Mapping[str, Any]) -> str:
    text = json.dumps(dict(kwargs), default=str)
    return text if len(text) <= 160 else text[:157] + "..."


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_groups(num_features: int) -> int:
    """gcd(32, C): Opacus' rule (``opacus/validators/batch_norm.py``, ``_batchnorm_to_groupnorm``), after Wu and
    He, "Group Normalization" (ECCV 2018, arXiv 1803.08494), whose default is 32 groups."""
    return math.gcd(32, num_features)


def replace_batchnorm(model: nn.Module) -> list[str]:
    """Replace every BatchNorm layer in place by ``GroupNorm(gcd(32, C), C, affine=...)``; return what was replaced.

    BatchNorm normalises each image with statistics of the others in its batch, so one image's gradient depends
    on its batch-mates and per-sample clipping no longer bounds its influence (Opacus refuses it). GroupNorm
    normalises within each image. The rule is Opacus' ``ModuleValidator.fix``; here the list of replacements is
    returned so that training and the checkpoint can report it. The replacement's weights are fresh (1 and 0):
    a pretrained BatchNorm's running statistics have no GroupNorm counterpart.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, _BATCHNORMS):
                c = child.num_features
                g = batchnorm_groups(c)
                setattr(module, child_name, nn.GroupNorm(g, c, affine=child.affine))
                full = f"{name}.{child_name}" if name else child_name
                replaced.append(f"{full} ({type(child).__name__}({c}) -> GroupNorm({g}, {c}))")
    return replaced


def check_classifier(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, arch: str, *,
                     segmentation: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``model`` maps a (2, C, H, W) batch to (2, num_classes) logits, or with
    ``segmentation`` to per-pixel logits (2, num_classes, H, W)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            out = model(torch.zeros(2, *input_shape, device=device))
    except Exception as exc:  # the user's forward pass: one line, with the shape it was given
        h, w = input_shape[-2:]
        if "too small" in str(exc).lower():  # the network downsamples more than the image allows
            fix = (f"pass a larger --image-size (e.g. --image-size {max(64, 2 * max(h, w))}): this network "
                   f"downsamples an image of {h}x{w} below one pixel")
        else:
            fix = "pass --arch-args that fit this input (e.g. spatial_dims 2, the image size) or another --image-size"
        raise ConfigError(f"{arch} fails on a batch of shape (2, {', '.join(map(str, input_shape))}): "
                          f"{type(exc).__name__}: {str(exc)[:200]}. Fix: {fix}.") from None
    finally:
        model.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if segmentation:
        want = (2, num_classes, *input_shape[1:])
        if shape != want:
            raise ConfigError(f"{arch} returns {type(out).__name__} of shape {shape} for 2 slices; a segmentation "
                              f"network for {num_classes} classes must return per-pixel logits of shape {want}. "
                              "Fix: pass --arch unet.")
        return
    if shape != (2, num_classes):
        raise ConfigError(f"{arch} returns {type(out).__name__} of shape {shape} for 2 images; an image classifier "
                          f"for {num_classes} classes must return logits of shape (2, {num_classes}). Fix: pass "
                          "--arch-args that make it a classifier (e.g. out_channels, classification) or wrap it "
                          "in a factory that returns one tensor of logits.")


#: How many layers of one kind an error names before it counts the rest.
SHOWN_LAYERS = 4


def check_dp_compatible(model: nn.Module) -> None:
    """Raise :class:`ConfigError` counting EVERY layer Opacus cannot train with DP-SGD (by kind, the first
    :data:`SHOWN_LAYERS` of each named), why, and the fix.

    Uses Opacus' ``ModuleValidator`` (imported here, on first use) on each layer, so that the message names the
    layers (Opacus' own message does not). Registry models always pass; MONAI networks and the user's own
    (``--arch``) are checked before any training or attack. BatchNorm has a documented replacement (``--fix-batchnorm``,
    :func:`dpaudit.models.replace_batchnorm`); the message says so.
    """
    from opacus.validators import ModuleValidator

    # Layers with the same type, reason and fix are reported together, each one by name.
    groups: dict[tuple[str, str, str], list[str]] = {}
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue  # containers: their leaves are checked
        for exc in ModuleValidator.validate(module, strict=False):
            why = str(exc).split(". ")[0].strip().rstrip(".")
            fix = ("replace it with GroupNorm (--fix-batchnorm does this, as Opacus' ModuleValidator.fix)"
                   if "BatchNorm" in type(module).__name__ else
                   "set track_running_stats=False" if "running stats" in str(exc) else
                   "use the replacement Opacus names (ModuleValidator.fix)")
            groups.setdefault((type(module).__name__, why, fix), []).append(name or "<model>")
    if groups:
        n = sum(len(v) for v in groups.values())
        # The count and the first few names of each kind (a DenseNet121 has 121 BatchNorm layers): one short line.
        parts = [f"{len(names)} {kind} ({', '.join(names[:SHOWN_LAYERS])}"
                 f"{f' and {len(names) - SHOWN_LAYERS} more' if len(names) > SHOWN_LAYERS else ''}): {why}; "
                 f"fix: {fix}" for (kind, why, fix), names in groups.items()]
        batchnorm = any("BatchNorm" in kind for kind, _, _ in groups)
        raise ConfigError(f"{n} layer(s) cannot be trained with DP-SGD: " + " | ".join(parts)
                          + ". Fix: " + ("pass --fix-batchnorm to replace BatchNorm by GroupNorm (reported), "
                                         if batchnorm else "")
                          + "use a registry architecture (--arch resnet9 uses GroupNorm) or change these layers.")

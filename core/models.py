"""Model registry: DP-friendly architectures (no BatchNorm; GroupNorm mixes no samples).

``build_model(arch, num_classes=..., in_channels=..., **arch_args)`` builds a classifier by name; the name and
the keyword arguments are what a dpaudit checkpoint stores, so a model can be rebuilt without executing code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dpaudit.errors import ConfigError, invalid


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
            raise invalid("activation", activation, f"one of {sorted(acts)}")
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


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet9": ResNet9,
    "smallcnn": SmallCNN,
}


def build_model(arch: str, *, num_classes: int, in_channels: int = 3, **arch_args: Any) -> nn.Module:
    """Build a registered architecture by name.

    Raises :class:`~dpaudit.errors.ConfigError` for an unknown name or an argument the architecture does not take.
    """
    if arch not in ARCHITECTURES:
        raise invalid("arch", arch, f"one of {sorted(ARCHITECTURES)}", "pass --arch with one of these names")
    factory = ARCHITECTURES[arch]
    accepted = set(inspect.signature(factory).parameters) - {"num_classes", "in_channels"}
    unknown = sorted(set(arch_args) - accepted)
    if unknown:
        raise ConfigError(
            f"arch_args {unknown} are not arguments of {arch!r}; it accepts {sorted(accepted)}. "
            "Fix: drop them or use an architecture that takes them."
        )
    return factory(num_classes=num_classes, in_channels=in_channels, **arch_args)

"""Per-sample gradients for DP-SGD: Opacus' hooks mode with a faster ``Conv2d`` grad sampler.

What changes is only how the per-sample weight gradients of a 2-D convolution are *computed*; what is done with
them (the per-sample norm over all parameters, clipping by ``min(1, C / (norm + 1e-6))``, the sum, Gaussian
noise of std ``sigma * C``, the division by the expected batch size) stays Opacus' own ``DPOptimizer`` code. The
test ``tests/test_grad_sample.py`` checks the clipped sum against Opacus' plain hooks mode on fixed batches.

Opacus' ``Conv2d`` sampler unfolds the input (im2col: 9 copies of every activation for a 3x3 kernel) and
contracts it with the output gradient per sample (``bmm``). For the per-sample weight gradient of sample b,

    dW_b[o, i, u, v] = sum_{h, w} dY_b[o, h, w] * X_b[i, h * s + u * d - p, w * s + v * d - p],

which is the weight gradient of an ordinary convolution whose batch of B images is laid side by side as B
channel groups (Rochette, Manoel and Tramel, "Efficient Per-Example Gradient Computations in Convolutional Neural
Networks", arXiv:1912.06015, section 3; the same identity as Opacus' unused
``convolution2d_backward_as_a_convolution``, which runs it as a forward convolution instead). One call to the
weight-gradient kernel (``aten.convolution_backward`` with ``groups = B * groups``) computes all B gradients
without the im2col copy.

Which one is faster depends on the layer (measured on this machine's CPU, 1 thread, B = 64; ``bench/bench_train.py``
has the whole-step figures): the grouped kernel is 1.4-3x faster where the output map is large and the input has
several channels (16 -> 32 channels at 64x64: 33 ms against 119 ms; 32 -> 32 at 14x14: 3.6 ms against 5.9 ms) and
up to 7x slower on small maps (128 -> 128 at 3x3: 46 ms against 7 ms) and on 3-channel inputs (3 -> 16 at 64x64:
19 ms against 11 ms). :func:`_grouped_pays` encodes these crossovers; both paths give the same gradient to float32
rounding.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

__all__ = ["FastConvGradSampleModule", "conv2d_grad_sample"]

#: Output maps with fewer positions than this (14 x 14) keep Opacus' unfold sampler (measured crossover, see above).
MIN_GROUPED_POSITIONS = 196
#: Inputs with fewer channels per group than this keep Opacus' unfold sampler (3-channel images: measured).
MIN_GROUPED_IN_CHANNELS = 8


def _grouped_pays(layer: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor) -> bool:
    return (type(layer) is nn.Conv2d and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)
            and activations.shape[0] > 0 and layer.in_channels // layer.groups >= MIN_GROUPED_IN_CHANNELS
            and backprops.shape[2] * backprops.shape[3] >= MIN_GROUPED_POSITIONS)


def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a ``Conv2d`` (Opacus' grad-sampler signature: layer, [input], output gradient).

    The grouped weight-gradient kernel where it is faster, else Opacus' own sampler (empty batches, string
    padding, non-zero padding modes, small maps, few input channels).
    """
    x = activations[0]
    if not _grouped_pays(layer, x, backprops):
        return compute_conv_grad_sample(layer, activations, backprops)
    x = x.to(backprops.dtype)
    n = x.shape[0]
    w = layer.weight
    # The kernel reads only the weight's shape for the weight gradient: a zero-stride view costs no memory.
    w_shape = w.new_zeros(()).expand(n * w.shape[0], *w.shape[1:])
    grad = torch.ops.aten.convolution_backward(
        backprops.reshape(1, n * layer.out_channels, *backprops.shape[2:]),
        x.reshape(1, n * layer.in_channels, *x.shape[2:]), w_shape, None, layer.stride, layer.padding,
        layer.dilation, False, (0, 0), n * layer.groups, (False, True, False))[1]
    out: dict[nn.Parameter, torch.Tensor] = {}
    if w.requires_grad:
        out[w] = grad.view(n, *w.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


class FastConvGradSampleModule(GradSampleModule):
    """Opacus' ``GradSampleModule`` (hooks mode) with :func:`conv2d_grad_sample` for ``nn.Conv2d``."""

    GRAD_SAMPLERS: ClassVar[dict[type, Any]] = {**GradSampleModule.GRAD_SAMPLERS, nn.Conv2d: conv2d_grad_sample}

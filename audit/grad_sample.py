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

Which one is faster depends on the layer (measured on this machine's CPU, 1 thread, B = 64, the faster of 4
calls; ``bench/bench_train.py`` has the whole-step figures): the grouped kernel is faster wherever the output map
has at least 8 x 8 positions and the input at least 8 channels, 1.1-7.5x (128 -> 128 at 8x8: 17.7 ms against 19.8 ms;
32 -> 32 at 32x32: 9.3 ms against 32.8 ms; 16 -> 32 at 64x64: 19.5 ms against 146 ms), and up to 5x slower on
smaller maps with many channels (128 -> 128 at 3x3: 11.3 ms against 8.1 ms; at 1x1: 8.8 ms against 1.9 ms) and
on 3-channel inputs (3 -> 16 at 64x64: 13.7 ms against 9.2 ms). :func:`_grouped_pays` encodes these crossovers;
both paths give the same gradient to float32 rounding.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.grad_sample_module import (
    create_or_accumulate_grad_sample,
    promote_current_grad_sample,
)
from opacus.utils.module_utils import trainable_parameters
from torch import nn

__all__ = ["FastConvGradSampleModule", "conv2d_grad_sample"]

#: Output maps with fewer positions than this (8 x 8) keep Opacus' unfold sampler (measured crossover, see above).
MIN_GROUPED_POSITIONS = 64
#: Inputs with fewer channels per group than this keep Opacus' unfold sampler (3-channel images: measured).
MIN_GROUPED_IN_CHANNELS = 8


def _grouped_pays(layer: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor) -> bool:
    # CPU only: the crossovers were measured on a CPU; on a GPU Opacus' sampler is the tried path (not measured).
    return (activations.device.type == "cpu" and type(layer) is nn.Conv2d and layer.padding_mode == "zeros"
            and isinstance(layer.padding, tuple) and activations.shape[0] > 0 and layer.in_channels // layer.groups >= MIN_GROUPED_IN_CHANNELS
            and backprops.shape[2] * backprops.shape[3] >= MIN_GROUPED_POSITIONS)


def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a ``Conv2d`` (Opacus' grad-sampler signature: layer, [input], output gradient).

    The grouped weight-gradient kernel where it is faster, else Opacus' own sampler (tensors on a GPU, empty
    batches, string padding, non-zero padding modes, small maps, few input channels).
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


def _store_grad_sample(module: nn.Module, param: torch.Tensor, grad_sample: torch.Tensor) -> None:
    """Keep a sampler's fresh per-sample gradient as is where Opacus would copy it into a new zero buffer.

    Opacus' ``create_or_accumulate_grad_sample`` allocates ``zeros(max_batch_len, ...)`` and copies the gradient
    in, so that a parameter used several times in one forward pass (tied weights, recurrent layers) can add to it.
    When this is the parameter's only use in the pass (its forward counter is 1) and the gradient already has the
    full batch length, that buffer would be an exact copy: two passes over every per-sample gradient (14% of a
    DP-SGD step of ResNet-9 at 28x28 px) for nothing. Anything else goes through Opacus' function.
    """
    if (param.requires_grad and getattr(param, "_forward_counter", 0) == 1
            and not hasattr(param, "_current_grad_sample") and grad_sample.shape[0] == module.max_batch_len):
        param._current_grad_sample = grad_sample
    else:
        create_or_accumulate_grad_sample(param=param, grad_sample=grad_sample, max_batch_len=module.max_batch_len)


class FastConvGradSampleModule(GradSampleModule):
    """Opacus' ``GradSampleModule`` (hooks mode) with :func:`conv2d_grad_sample` for ``nn.Conv2d``.

    ``capture_backprops_hook`` is Opacus 1.6's (Apache-2.0, ``opacus/grad_sample/grad_sample_module.py``) with
    :func:`_store_grad_sample` in place of ``create_or_accumulate_grad_sample``; per-sample gradients, their
    promotion to ``p.grad_sample`` and everything the ``DPOptimizer`` does with them are unchanged.
    """

    GRAD_SAMPLERS: ClassVar[dict[type, Any]] = {**GradSampleModule.GRAD_SAMPLERS, nn.Conv2d: conv2d_grad_sample}

    def capture_backprops_hook(self, module: nn.Module, _forward_input: torch.Tensor,
                               forward_output: torch.Tensor, loss_reduction: str, batch_first: bool) -> None:
        if not self.hooks_enabled or self.force_functorch or self._get_module_type(module) not in self.GRAD_SAMPLERS:
            # functorch-handled layers (none in the registry models): Opacus' own hook, unchanged
            super().capture_backprops_hook(module, _forward_input, forward_output, loss_reduction, batch_first)
            return
        backprops = forward_output[0].detach()
        activations, backprops = self.rearrange_grad_samples(module=module, backprops=backprops,
                                                             loss_reduction=loss_reduction, batch_first=batch_first)
        grad_sampler_fn = self.GRAD_SAMPLERS[self._get_module_type(module)]
        for param, gs in grad_sampler_fn(module, activations, backprops).items():
            _store_grad_sample(module, param, gs)
        for _, p in trainable_parameters(module):
            p._forward_counter -= 1
            if p._forward_counter == 0:
                promote_current_grad_sample(p)
            if not self.grad_accumulation_allowed and isinstance(p.grad_sample, list) and len(p.grad_sample) > 1:
                raise ValueError("Poisson sampling is not compatible with grad accumulation. You need to call "
                                 "optimizer.step() after every forward/backward pass or consider using "
                                 "BatchMemoryManager")
        if len(module.activations) == 0 and hasattr(module, "max_batch_len"):
            del module.max_batch_len

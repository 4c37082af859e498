"""The faster per-sample ``Conv2d`` gradients (`dpaudit.audit.grad_sample`) against two independent references:
Opacus' own unfold sampler and per-sample autograd; and the whole DP-SGD step (clip, sum, noise, scale) against
Opacus' plain hooks mode on fixed batches."""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.optimizers import DPOptimizer
from torch import nn

from dpaudit.audit import grad_sample as gs
from dpaudit.models import build_model

# (in, out, kernel, stride, padding, dilation, groups, bias, map size): both paths, and the shapes Conv2d allows
SHAPES = [
    (16, 32, 3, 1, 1, 1, 1, False, 16),   # grouped kernel (16 channels, 256 positions)
    (8, 12, 3, 2, 1, 1, 1, True, 32),     # grouped, strided, with bias
    (16, 8, 3, 1, 2, 2, 2, True, 28),     # grouped, dilated, two groups of 8 channels
    (16, 16, 1, 1, 0, 1, 1, False, 14),   # grouped, 1x1 kernel, 196 positions
    (16, 16, 3, 1, 1, 1, 1, False, 8),    # grouped, exactly at the position threshold (8 x 8)
    (16, 16, 3, 1, 1, 1, 1, True, 7),     # Opacus' sampler: one row and column below it (7 x 7)
    (3, 16, 3, 1, 1, 1, 1, False, 32),    # Opacus' sampler: 3 input channels
    (32, 32, 3, 1, 1, 1, 1, True, 6),     # Opacus' sampler: small map
]


@pytest.mark.parametrize("shape", SHAPES)
def test_conv_per_sample_gradients_equal_opacus_sampler_and_autograd(shape) -> None:  # type: ignore[no-untyped-def]
    cin, cout, k, stride, pad, dil, groups, bias, size = shape
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    layer = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias)
    x = torch.randn(5, cin, size, size, generator=gen)
    out_shape = layer(x).shape
    g = torch.randn(out_shape, generator=gen)
    ours = gs.conv2d_grad_sample(layer, [x], g)
    ref = compute_conv_grad_sample(layer, [x], g)
    assert set(ours) == set(ref)
    # float32 sums of up to 1024 products, accumulated in different orders: errors of a few ulp of the largest
    # entry (about 1e-7 relative each), so the tolerance is relative to that entry.
    for p in ref:
        torch.testing.assert_close(ours[p], ref[p], rtol=1e-5, atol=1e-6 * float(ref[p].abs().max()))
    # Per-sample autograd: the gradient of <layer(x_b), g_b> with respect to the weight is sample b's gradient.
    for b in range(len(x)):
        grads = torch.autograd.grad((layer(x[b:b + 1]) * g[b:b + 1]).sum(), [p for p in ref])
        for p, want in zip(ref, grads, strict=True):
            torch.testing.assert_close(ours[p][b], want, rtol=1e-5, atol=1e-6 * float(ref[p].abs().max()))
    expected_grouped = cin // groups >= gs.MIN_GROUPED_IN_CHANNELS and \
        out_shape[2] * out_shape[3] >= gs.MIN_GROUPED_POSITIONS
    assert gs._grouped_pays(layer, x, g) == expected_grouped


def test_empty_batch_string_padding_and_other_devices_use_opacus_sampler() -> None:
    layer = nn.Conv2d(16, 16, 3, padding="same")
    x = torch.randn(2, 16, 16, 16)
    assert not gs._grouped_pays(layer, x, layer(x))
    plain = nn.Conv2d(16, 16, 3, padding=1)
    assert gs._grouped_pays(plain, x, plain(x))
    # Not measured on GPUs: any other device keeps Opacus' sampler ("meta" stands in for a CUDA device here).
    assert not gs._grouped_pays(plain, x.to("meta"), plain(x).to("meta"))
    empty = torch.zeros(0, 16, 16, 16)
    ours = gs.conv2d_grad_sample(nn.Conv2d(16, 16, 3, padding=1), [empty], torch.zeros(0, 16, 16, 16))
    assert all(v.abs().sum() == 0 for v in ours.values())


def _dp_gradient(module_cls: type, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                 sigma: float, seed: int) -> list[torch.Tensor]:
    """The gradient Opacus' DPOptimizer hands to the base optimizer after the physical ``batches`` of one step."""
    net = module_cls(model, batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=sigma, max_grad_norm=0.5,
                      expected_batch_size=8, loss_reduction="mean",
                      generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for i, (x, y) in enumerate(batches):
            nn.functional.cross_entropy(net(x), y).backward()
            if i < len(batches) - 1:
                opt.signal_skip_step(do_skip=True)  # what BatchMemoryManager does between physical batches
            stepped = opt.pre_step()
            assert stepped == (i == len(batches) - 1)
            if not stepped:
                opt.zero_grad(set_to_none=True)  # the training loop's zero_grad keeps the skipped step's sum
    out = [p.grad.detach().clone() for p in model.parameters()]
    net._close()
    return out


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_dp_step_equals_opacus_hooks_mode(sigma: float) -> None:
    # ResNet-9 (width 8) at 32x32: four of its convolutions take the grouped kernel, four Opacus' sampler. A
    # small clip norm (0.5) so that samples are clipped; a Poisson batch of 11 split into physical batches of 8, 3.
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(11, 3, 32, 32, generator=gen)
    y = torch.randint(0, 2, (11,), generator=gen)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    torch.manual_seed(0)
    base = build_model("resnet9", num_classes=2, width=8)
    model_a, model_b = build_model("resnet9", num_classes=2, width=8), build_model("resnet9", num_classes=2, width=8)
    model_a.load_state_dict(base.state_dict())
    model_b.load_state_dict(base.state_dict())
    ours = _dp_gradient(gs.FastConvGradSampleModule, model_a, batches, sigma, seed=3)
    ref = _dp_gradient(GradSampleModule, model_b, batches, sigma, seed=3)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The clip norm binds for some samples (their own gradients, by autograd, are longer than 0.5).
    norms = [torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(
        nn.functional.cross_entropy(base(x[i:i + 1]), y[i:i + 1]), list(base.parameters())))) for i in range(11)]
    assert max(norms) > 0.5

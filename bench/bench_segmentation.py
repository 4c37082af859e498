"""Benchmark: the DP-SGD U-Net step against the non-private one, side by side (demo-ct slices).

Same model (``unet``: MONAI BasicUNet, GroupNorm, width 8), same slices, same batch of 16 slices, one torch thread.
DP: Opacus ``GradSampleModule`` (per-sample gradients by hooks) + ``DPOptimizer`` (clip, noise); non-private:
the plain optimiser. Cases alternate ``--repeats`` times; throughput is slices per CPU second of the training
step only (process CPU time, so the other engineers' load on this shared machine does not enter), plus wall time.

Usage::

    python bench/bench_segmentation.py [--sizes 28,64] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

BATCH = 16


def _steps(private: bool, size: int, steps: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``steps`` training steps."""
    import torch
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from dpaudit.models import build_model
    from dpaudit.volumes import load_segmentation_splits

    torch.manual_seed(0)
    splits = load_segmentation_splits("demo-ct", image_size=size, seed=0, max_volumes=4)
    x_all, y_all = splits.train.images, splits.train.labels
    model = build_model("unet", num_classes=3, in_channels=1)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    net = model
    if private:
        net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=BATCH,
                          loss_reduction="mean")
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(steps):
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % len(x_all)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = torch.nn.functional.cross_entropy(net((x_all[idx] - 0.5) / 0.5), y_all[idx])
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="28,64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _steps(True, 16, 1)  # first calls (imports, allocator) outside the timing
    print(f"{'size':>5} {'case':>12} {'slices/CPU s':>13} {'slices/wall s':>14} {'DP cost':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        cpu: dict[bool, list[float]] = {True: [], False: []}
        wall: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for private in (False, True):
                c, w = _steps(private, size, args.steps)
                cpu[private].append(c)
                wall[private].append(w)
        n = BATCH * args.steps
        rate = {p: n / statistics.median(cpu[p]) for p in (False, True)}
        for p in (False, True):
            print(f"{size:>5} {'DP-SGD' if p else 'non-private':>12} {rate[p]:>13.1f} "
                  f"{n / statistics.median(wall[p]):>14.1f} {rate[False] / rate[p] if p else 1.0:>7.2f}x")


if __name__ == "__main__":
    main()

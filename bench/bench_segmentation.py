"""Benchmark: the DP-SGD U-Net step against the non-private one, side by side (demo-ct slices).

The step training takes (``dpaudit.audit.train``): the segmentation defaults of ``dpaudit.config``
(``SEGMENTATION_TRAINING``: ``unet`` = MONAI BasicUNet with GroupNorm, width 8; batches of 16 slices; NAdam; the
class-weighted per-sample loss ``SampleMeanCrossEntropy``), one torch thread. Three cases on the same slices:

* ``non-private``: the plain optimiser step;
* ``DP-SGD``: what training runs: Opacus' hooks with dpaudit's grouped ``Conv2d`` per-sample gradients
  (``FastConvGradSampleModule``) and Opacus' ``DPOptimizer`` (clip, noise);
* ``DP-SGD, Opacus hooks``: the reference, Opacus' own ``GradSampleModule`` with the same ``DPOptimizer``.

Cases alternate ``--repeats`` times; throughput is slices per CPU second of the training step only (process CPU
time, so the other engineers' load on this shared machine does not enter), plus wall time; the DP cost is the
non-private rate over the DP one.

Usage::

    python bench/bench_segmentation.py [--sizes 28,64] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

CASES = ("non-private", "DP-SGD", "DP-SGD, Opacus hooks")


def _steps(case: str, size: int, steps: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``steps`` training steps of ``case``."""
    import torch
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from dpaudit.audit.grad_sample import FastConvGradSampleModule
    from dpaudit.audit.train import SampleMeanCrossEntropy
    from dpaudit.config import SEGMENTATION_TRAINING as SEG
    from dpaudit.models import build_model
    from dpaudit.volumes import load_segmentation_splits

    batch = SEG["batch_size"]
    torch.manual_seed(0)
    splits = load_segmentation_splits("demo-ct", image_size=size, seed=0, max_volumes=4)
    x_all, y_all = splits.train.images, splits.train.labels
    model = build_model(SEG["arch"], num_classes=3, in_channels=1)
    opt = torch.optim.NAdam(model.parameters(), lr=SEG["lr"])
    criterion = SampleMeanCrossEntropy(SEG["class_weights"])
    net = model
    if case != "non-private":
        wrap = FastConvGradSampleModule if case == "DP-SGD" else GradSampleModule
        net = wrap(model, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch,
                          loss_reduction="mean")
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(steps):
        idx = torch.arange(i * batch, (i + 1) * batch) % len(x_all)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = criterion(net((x_all[idx] - 0.5) / 0.5), y_all[idx])
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    import torch

    from dpaudit.config import SEGMENTATION_TRAINING as SEG

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="28,64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for case in CASES:
        _steps(case, 16, 1)  # first calls (imports, allocator) outside the timing
    print(f"{'size':>5} {'case':>21} {'slices/CPU s':>13} {'slices/wall s':>14} {'DP cost':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        cpu: dict[str, list[float]] = {c: [] for c in CASES}
        wall: dict[str, list[float]] = {c: [] for c in CASES}
        for _ in range(args.repeats):
            for case in CASES:
                c, w = _steps(case, size, args.steps)
                cpu[case].append(c)
                wall[case].append(w)
        n = SEG["batch_size"] * args.steps
        rate = {c: n / statistics.median(cpu[c]) for c in CASES}
        for c in CASES:
            print(f"{size:>5} {c:>21} {rate[c]:>13.1f} {n / statistics.median(wall[c]):>14.1f} "
                  f"{rate['non-private'] / rate[c]:>7.2f}x")


if __name__ == "__main__":
    main()

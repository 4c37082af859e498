"""Benchmark: DP-SGD against non-private training, and dpaudit's loop against a bare Opacus loop.

Same model (ResNet-9 with GroupNorm, width 16), same demo data, same logical batch (64, Poisson sampling for
DP), one epoch per case, at 28x28x3 and 64x64x3. Each case runs in its own process so that its peak resident
memory is its own; cases alternate (dpaudit, reference) ``--repeats`` times. Throughput counts training images per
second of the training loop only (no data generation, no evaluation). One torch thread for every case, so that
the other engineers' load on this 2-core machine disturbs all cases alike.

Usage::

    python bench/bench_train.py [--sizes 28,64] [--n-train 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

BATCH = 64
WIDTH = 16


def _case(kind: str, size: int, n_train: int) -> dict[str, float]:
    """Run one case in this process and return throughput and memory."""
    import torch

    torch.set_num_threads(1)
    from dpaudit.audit import train as T
    from dpaudit.data import make_demo

    splits = make_demo(int(n_train / 0.7) + 1, image_size=size, seed=0)
    train_ds = splits.train
    n = len(train_ds)
    q = BATCH / n
    steps = -(-n // BATCH)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind.startswith("dpaudit"):
        private = kind == "dpaudit-dp"
        cfg = T.TrainConfig(noise_multiplier=1.0 if private else None, non_private=not private, arch="resnet9",
                            arch_args={"width": WIDTH}, epochs=1, batch_size=BATCH, image_size=size, threads=1)
        t0 = time.perf_counter()
        _, _, speed = T._run_one(cfg, splits, 0, 1.0 if private else 0.0, q, steps, 1e-5, None, 0, steps)
        wall = time.perf_counter() - t0
    else:
        speed, wall = _bare(kind, train_ds, q, steps)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"samples_per_s": speed, "peak_rss_mb": rss1, "training_rss_mb": rss1 - rss0, "wall_s": wall}


def _bare(kind: str, train_ds, q: float, steps: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The reference: the loop an Opacus user writes (PrivacyEngine + BatchMemoryManager), or plain PyTorch."""
    import torch
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch import nn

    from dpaudit.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=2, in_channels=3, width=WIDTH)
    data = torch.utils.data.TensorDataset((train_ds.images - 0.5) / 0.5, train_ds.labels)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.NAdam(model.parameters(), lr=2e-3)
    criterion = nn.CrossEntropyLoss()
    seen = 0
    if kind == "opacus-dp":
        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                       noise_multiplier=1.0, max_grad_norm=1.0,
                                                       poisson_sampling=True)
        t0 = time.perf_counter()
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=128, optimizer=optimizer) as batches:
            for x, y in batches:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                seen += len(y)
    else:
        t0 = time.perf_counter()
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += len(y)
    wall = time.perf_counter() - t0
    return seen / wall, wall


def _spawn(kind: str, size: int, n_train: int) -> dict[str, float]:
    res = subprocess.run([sys.executable, __file__, "--case", kind, "--sizes", str(size), "--n-train", str(n_train)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="28,64")
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.case:
        print(json.dumps(_case(args.case, sizes[0], args.n_train)))
        return
    kinds = ["dpaudit-dp", "opacus-dp", "dpaudit-nonprivate", "torch-nonprivate"]
    rows = []
    for size in sizes:
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for r in range(args.repeats):
            for k in kinds:  # alternate, so that background load hits every case alike
                runs[k].append(_spawn(k, size, args.n_train))
                print(f"  .. {size}px {k} repeat {r + 1}: {runs[k][-1]['samples_per_s']:.1f} img/s",
                      file=sys.stderr, flush=True)
        med = {k: {m: statistics.median(v[m] for v in runs[k]) for m in runs[k][0]} for k in kinds}
        rows.append((size, med))
    print(f"\nResNet-9 (GroupNorm, width {WIDTH}), demo data, {args.n_train} train images, batch {BATCH}, 1 thread; "
          f"medians of {args.repeats} (throughput: empirical, noisy shared machine)")
    head = f"{'input':<10} {'case':<20} {'img/s':>8} {'peak RSS MB':>12} {'train +MB':>10}"
    print(head)
    print("-" * len(head))
    for size, med in rows:
        for k in kinds:
            m = med[k]
            print(f"{size}x{size}x3 {k:<20} {m['samples_per_s']:8.1f} {m['peak_rss_mb']:12.0f} "
                  f"{m['training_rss_mb']:10.0f}")
        dp_over = med["dpaudit-nonprivate"]["samples_per_s"] / med["dpaudit-dp"]["samples_per_s"]
        ref_over = med["torch-nonprivate"]["samples_per_s"] / med["opacus-dp"]["samples_per_s"]
        ratio = med["opacus-dp"]["samples_per_s"] / med["dpaudit-dp"]["samples_per_s"]
        print(f"{size}x{size}x3 DP overhead: dpaudit {dp_over:.2f}x, bare Opacus {ref_over:.2f}x; "
              f"dpaudit DP time / bare Opacus DP time = {ratio:.2f} (goal <= 1.10)")


if __name__ == "__main__":
    main()

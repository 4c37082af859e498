"""Benchmark: DP-SGD against non-private training, dpaudit's loop against bare Opacus loops in each of Opacus'
per-sample gradient modes (issues 4 and 17).

Same model, same demo data, same logical batch (64, Poisson sampling for DP), one epoch per case, at each
``--sizes`` and ``--archs``. Cases:

* ``dpaudit-dp``: ``dpaudit.audit.train``'s DP-SGD step as shipped (Opacus hooks mode with dpaudit's grouped
  ``Conv2d`` per-sample gradients, ``dpaudit.audit.grad_sample``; physical batches of up to 128);
* ``dpaudit-dp-hooks``: the same loop with Opacus' plain ``GradSampleModule`` and physical batches of
  min(batch, 128) = 64 (dpaudit before issue 17);
* ``opacus-hooks``, ``opacus-ew``, ``opacus-functorch``, ``opacus-ghost``: the loop an Opacus user writes
  (``PrivacyEngine.make_private(grad_sample_mode=...)`` + ``BatchMemoryManager``; ghost clipping with the criterion
  wrapper ``make_private`` returns);
* ``dpaudit-nonprivate`` and ``torch-nonprivate``: the baselines.

Each case runs in its own process (its peak resident memory is its own); cases alternate ``--repeats`` times.
Time is this process's CPU time (``time.process_time``) with one torch thread: on the shared 2-core machine other
users' load inflates wall time by up to 3x and differently per case, CPU time much less (wall time is printed
too). Only the training loop is timed (no data generation, evaluation or imports).

Usage::

    python bench/bench_train.py [--sizes 28,64,128] [--archs resnet9,smallcnn] [--n-train 512] [--repeats 2]
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
KINDS = ["dpaudit-dp", "dpaudit-dp-hooks", "opacus-hooks", "opacus-ew", "opacus-functorch", "opacus-ghost",
         "dpaudit-nonprivate", "torch-nonprivate"]


def _case(kind: str, arch: str, size: int, n_train: int) -> dict[str, float]:
    """Run one case in this process and return throughput (CPU and wall) and memory."""
    import torch

    torch.set_num_threads(1)
    from dpaudit.audit import train as T
    from dpaudit.data import make_demo

    splits = make_demo(int(n_train / 0.7) + 1, image_size=size, seed=0)
    train_ds = splits.train
    n = len(train_ds)
    q = BATCH / n
    steps = -(-n // BATCH)
    # Imports and first calls outside the timed region (_run_one imports Opacus, computes epsilon per epoch and
    # evaluates; the bare loops build their optimizer before the clock starts).
    import opacus.data_loader
    import opacus.optimizers
    import opacus.utils.batch_memory_manager  # noqa: F401

    import dpaudit.audit.grad_sample  # noqa: F401
    from dpaudit.bounds import epsilon_rdp

    epsilon_rdp(1.0, q, steps, 1e-5)
    warm = T.build_model(arch, num_classes=splits.num_classes)
    T._evaluate(warm, splits.val, splits.mean, splits.std)
    torch.optim.NAdam(warm.parameters())  # the first optimizer imports torch._dynamo (about 2 s)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind.startswith("dpaudit"):
        private = kind.startswith("dpaudit-dp")
        physical = None
        if kind == "dpaudit-dp-hooks":
            from opacus.grad_sample import GradSampleModule

            import dpaudit.audit.grad_sample as G

            G.FastConvGradSampleModule = GradSampleModule  # type: ignore[misc]
            physical = BATCH
        cfg = T.TrainConfig(noise_multiplier=1.0 if private else None, non_private=not private, arch=arch,
                            epochs=1, batch_size=BATCH, physical_batch_size=physical, image_size=size, threads=1)
        c0, t0 = time.process_time(), time.perf_counter()
        _, _, _ = T._run_one(cfg, splits, 0, 1.0 if private else 0.0, q, steps, 1e-5, None, 0, steps)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        # _run_one also evaluates the validation split once per epoch; time that alone and take it off.
        c0, t0 = time.process_time(), time.perf_counter()
        T._evaluate(T.build_model(arch, num_classes=splits.num_classes), splits.val, splits.mean, splits.std)
        cpu, wall = cpu - (time.process_time() - c0), wall - (time.perf_counter() - t0)
        seen = n  # one epoch: n expected samples (Poisson for DP)
    else:
        seen, cpu, wall = _bare(kind, arch, train_ds, steps)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_cpu_ms": 1e3 * cpu / steps, "samples_per_cpu_s": seen / cpu, "samples_per_s": seen / wall,
            "peak_rss_mb": rss1, "training_rss_mb": rss1 - rss0}


def _bare(kind: str, arch: str, train_ds, steps: int) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """The reference: the loop an Opacus user writes (PrivacyEngine + BatchMemoryManager), or plain PyTorch."""
    import warnings

    import torch
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch import nn

    from dpaudit.models import build_model

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, in_channels=3)
    data = torch.utils.data.TensorDataset((train_ds.images - 0.5) / 0.5, train_ds.labels)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.NAdam(model.parameters(), lr=2e-3)
    criterion = nn.CrossEntropyLoss()
    seen = 0
    if kind.startswith("opacus"):
        mode = kind.split("-", 1)[1]
        engine = PrivacyEngine(accountant="rdp")
        common = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
                      max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode=mode)
        if mode == "ghost":
            model, optimizer, criterion, loader = engine.make_private(criterion=criterion, **common)
        else:
            model, optimizer, loader = engine.make_private(**common)
        c0, t0 = time.process_time(), time.perf_counter()
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=128, optimizer=optimizer) as batches:
            for x, y in batches:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                seen += len(y)
    else:
        c0, t0 = time.process_time(), time.perf_counter()
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += len(y)
    return seen, time.process_time() - c0, time.perf_counter() - t0


def _spawn(kind: str, arch: str, size: int, n_train: int) -> dict[str, float]:
    res = subprocess.run([sys.executable, __file__, "--case", kind, "--archs", arch, "--sizes", str(size),
                          "--n-train", str(n_train)], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  !! {arch} {size}px {kind} failed: {res.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return {}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="28,64,128")
    ap.add_argument("--archs", default="resnet9,smallcnn")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    archs = args.archs.split(",")
    if args.case:
        print(json.dumps(_case(args.case, archs[0], sizes[0], args.n_train)))
        return
    kinds = args.kinds.split(",")
    rows = []
    for arch in archs:
        for size in sizes:
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
            for r in range(args.repeats):
                for k in kinds:  # alternate, so that background load hits every case alike
                    res = _spawn(k, arch, size, args.n_train)
                    if res:
                        runs[k].append(res)
                        print(f"  .. {arch} {size}px {k} repeat {r + 1}: {res['step_cpu_ms']:.0f} CPU ms/step",
                              file=sys.stderr, flush=True)
            med = {k: {m: statistics.median(v[m] for v in runs[k]) for m in runs[k][0]} for k in kinds if runs[k]}
            rows.append((arch, size, med))
    print(f"\nDemo data, {args.n_train} train images, batch {BATCH}, 1 torch thread; medians of {args.repeats}; "
          "CPU time of the training loop (empirical; a shared machine)")
    head = (f"{'model':<9} {'input':<10} {'case':<19} {'CPU ms/step':>11} {'x non-priv':>10} {'img/CPU-s':>10} "
            f"{'img/s wall':>10} {'peak MB':>8}")
    print(head)
    print("-" * len(head))
    for arch, size, med in rows:
        base = med.get("dpaudit-nonprivate", {}).get("step_cpu_ms", float("nan"))
        for k, m in med.items():
            print(f"{arch:<9} {size:>3}x{size:<3}x3 {k:<19} {m['step_cpu_ms']:11.0f} {m['step_cpu_ms'] / base:10.2f} "
                  f"{m['samples_per_cpu_s']:10.1f} {m['samples_per_s']:10.1f} {m['peak_rss_mb']:8.0f}")
        if "dpaudit-dp" in med and "opacus-hooks" in med:
            dp = med["dpaudit-dp"]["step_cpu_ms"]
            best = min((m["step_cpu_ms"], k) for k, m in med.items() if k.startswith("opacus"))
            print(f"{arch:<9} {size:>3}x{size:<3}x3 DP / non-private: dpaudit {dp / base:.2f}x (goal <= 1.5x at 64 px); "
                  f"fastest Opacus mode {best[1]} {best[0] / base:.2f}x; dpaudit DP / {best[1]} = {dp / best[0]:.2f}")


if __name__ == "__main__":
    main()

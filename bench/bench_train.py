"""Benchmark: DP-SGD against non-private training, dpaudit's loop against bare Opacus loops in each of Opacus'
per-sample gradient modes.

Same model, same demo data, same logical batch (64, Poisson sampling for DP), one epoch per case, at each
``--sizes`` and ``--archs``. Cases:

* ``dpaudit-dp``: ``dpaudit.audit.train``'s DP-SGD step as shipped (Opacus hooks mode with dpaudit's grouped
  ``Conv2d`` per-sample gradients, ``dpaudit.audit.grad_sample``; physical batches of up to 128);
* ``dpaudit-dp-hooks``: the same loop with Opacus' plain ``GradSampleModule`` and physical batches of
  min(batch, 128) = 64 (dpaudit's previous default);
* ``opacus-hooks``, ``opacus-ew``, ``opacus-functorch``, ``opacus-ghost``: the loop an Opacus user writes
  (``PrivacyEngine.make_private(grad_sample_mode=...)`` + ``BatchMemoryManager``; ghost clipping with the criterion
  wrapper ``make_private`` returns);
* ``dpaudit-nonprivate`` and ``torch-nonprivate``: the baselines.

One process per model and size runs every case ``--repeats`` times, alternating (one warm-up of imports and
first calls per process; peak memory is no longer reported: the cases share the process).
Time is this process's CPU time (``time.process_time``) with one torch thread: on the shared 2-core machine other
users' load inflates wall time by up to 3x and differently per case, CPU time much less (wall time is printed
too). Only the training loop is timed (no data generation, evaluation or imports). Every case runs inside one
``dpaudit.heap`` block, as ``train()`` runs its seeds: freed memory stays in the process's heap, the reference
loops' too (``--fresh-heap``: none around them, so that each dpaudit run's own block grows its heap from what was
given back, as a one-seed ``train()`` call does, where the block before it grew the resident set by 64 MiB or
more). The system CPU time and minor page faults per step are printed beside (the kernel's share: faulting in and
zeroing memory glibc had handed back); for dpaudit's rows they include ``_run_one``'s model set-up, its
per-epoch validation pass and epsilon, which the CPU time column leaves out (the evaluation) or the reference
loops do not have.

Usage::

    python bench/bench_train.py [--sizes 28,64,128] [--archs resnet9,smallcnn] [--n-train 512] [--repeats 2]
                                [--kinds dpaudit-dp,dpaudit-nonprivate,...] [--fresh-heap]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

BATCH = 64
KINDS = ["dpaudit-dp", "dpaudit-dp-hooks", "opacus-hooks", "opacus-ew", "opacus-functorch", "opacus-ghost",
         "dpaudit-nonprivate", "torch-nonprivate"]


def _group(kinds: list[str], arch: str, size: int, n_train: int, repeats: int, fresh_heap: bool = False
           ) -> dict[str, list[dict[str, float]]]:
    """Run every case ``repeats`` times in this process, alternating; return each run's throughput."""
    import torch

    torch.set_num_threads(1)
    import opacus.data_loader
    import opacus.optimizers
    import opacus.utils.batch_memory_manager  # noqa: F401 (warm imports)
    from opacus.grad_sample import GradSampleModule

    import dpaudit.audit.grad_sample as G
    from dpaudit.audit import train as T
    from dpaudit.bounds import epsilon_rdp
    from dpaudit.data import make_demo
    from dpaudit.heap import reuse_freed_memory

    splits = make_demo(int(n_train / 0.7) + 1, image_size=size, seed=0)
    n = len(splits.train)
    q = BATCH / n
    steps = -(-n // BATCH)
    # Imports and first calls outside the timed region (_run_one imports Opacus, computes epsilon per epoch and
    # evaluates; the bare loops build their optimizer before the clock starts).
    epsilon_rdp(1.0, q, steps, 1e-5)
    warm = T.build_model(arch, num_classes=splits.num_classes)
    torch.optim.NAdam(warm.parameters())  # the first optimizer imports torch._dynamo (about 2 s)
    shipped = G.FastConvGradSampleModule
    tiny = make_demo(2 * BATCH, image_size=size, seed=1)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    # Every case in one dpaudit.heap block, as train() runs its seeds (--fresh-heap: each case's heap given back
    # first, as a single one-seed train() call starts).
    with contextlib.nullcontext() if fresh_heap else reuse_freed_memory():
        for r in range(-1, repeats):  # round -1: every case once on a tiny set (first calls, allocator), not timed
            data, q, steps = (tiny, BATCH / len(tiny.train), 1) if r < 0 else (splits, BATCH / n, -(-n // BATCH))
            for kind in kinds:  # alternate, so that background load hits every case alike
                if kind.startswith("dpaudit"):
                    private = kind.startswith("dpaudit-dp")
                    physical = None
                    if kind == "dpaudit-dp-hooks":  # dpaudit's previous step
                        G.FastConvGradSampleModule = GradSampleModule  # type: ignore[misc]
                        physical = BATCH
                    cfg = T.TrainConfig(noise_multiplier=1.0 if private else None, non_private=not private, arch=arch,
                                        epochs=1, batch_size=BATCH, physical_batch_size=physical, image_size=size,
                                        threads=1)
                    c0, t0, u0 = time.process_time(), time.perf_counter(), _usage()
                    T._run_one(cfg, data, 0, 1.0 if private else 0.0, q, steps, 1e-5, None, 0, steps)
                    cpu, wall, usage = time.process_time() - c0, time.perf_counter() - t0, _usage() - u0
                    G.FastConvGradSampleModule = shipped  # type: ignore[misc]
                    # _run_one also evaluates the validation split once per epoch; time that alone and take it off.
                    c0, t0 = time.process_time(), time.perf_counter()
                    T._evaluate(warm, data.val, data.mean, data.std, unit=data.unit, split="validation")
                    cpu, wall = cpu - (time.process_time() - c0), wall - (time.perf_counter() - t0)
                    seen = len(data.train)  # one epoch: n expected samples (Poisson for DP)
                else:
                    u0 = _usage()
                    seen, cpu, wall = _bare(kind, arch, data.train, steps)
                    usage = _usage() - u0
                if r < 0:
                    continue
                runs[kind].append({"step_cpu_ms": 1e3 * cpu / steps, "samples_per_cpu_s": seen / cpu,
                                   "samples_per_s": seen / wall, "step_sys_ms": 1e3 * usage[0] / steps,
                                   "faults_per_step": usage[1] / steps})
                print(f"  .. {arch} {size}px {kind} repeat {r + 1}: {runs[kind][-1]['step_cpu_ms']:.0f} CPU ms/step",
                      file=sys.stderr, flush=True)
    return runs


def _usage():  # type: ignore[no-untyped-def]
    """(system CPU seconds, minor page faults) of this process so far, as a numpy array (differences)."""
    import resource

    import numpy as np

    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_stime, r.ru_minflt], dtype=float)


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


def _spawn(kinds: list[str], arch: str, size: int, n_train: int, repeats: int, fresh_heap: bool
           ) -> dict[str, list[dict[str, float]]]:
    res = subprocess.run([sys.executable, __file__, "--group", "--kinds", ",".join(kinds), "--archs", arch,
                          "--sizes", str(size), "--n-train", str(n_train), "--repeats", str(repeats)]
                         + (["--fresh-heap"] if fresh_heap else []),
                         stdout=subprocess.PIPE, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="28,64,128")
    ap.add_argument("--archs", default="resnet9,smallcnn")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--fresh-heap", action="store_true",
                    help="run each case outside any dpaudit.heap block, so that its own block (in _run_one) starts "
                    "from a heap given back to the system, as a one-seed train() call does")
    ap.add_argument("--group", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    archs = args.archs.split(",")
    kinds = args.kinds.split(",")
    if args.group:
        runs = _group(kinds, archs[0], sizes[0], args.n_train, args.repeats, args.fresh_heap)
        print(json.dumps({k: v for k, v in runs.items()}))
        return
    rows = []
    for arch in archs:
        for size in sizes:
            runs = _spawn(kinds, arch, size, args.n_train, args.repeats, args.fresh_heap)
            med = {k: {m: statistics.median(v[m] for v in runs[k]) for m in runs[k][0]} for k in kinds if runs[k]}
            rows.append((arch, size, med, len(next(iter(runs.values())))))
    print(f"\nDemo data, {args.n_train} train images, batch {BATCH}, one epoch, 1 torch thread; medians of "
          f"{args.repeats} alternating repeats in one process per model and size; CPU time of the training loop "
          "(empirical; a shared machine)")
    head = (f"{'model':<9} {'input':<10} {'case':<19} {'CPU ms/step':>11} {'x non-priv':>10} {'img/CPU-s':>10} "
            f"{'img/s wall':>10} {'sys ms/step':>11} {'faults/step':>11}")
    print(head)
    print("-" * len(head))
    for arch, size, med, _ in rows:
        base = med.get("dpaudit-nonprivate", {}).get("step_cpu_ms", float("nan"))
        for k, m in med.items():
            print(f"{arch:<9} {size:>3}x{size:<3}x3 {k:<19} {m['step_cpu_ms']:11.0f} {m['step_cpu_ms'] / base:10.2f} "
                  f"{m['samples_per_cpu_s']:10.1f} {m['samples_per_s']:10.1f} {m['step_sys_ms']:11.0f} {m['faults_per_step']:11.0f}")
        if "dpaudit-dp" in med and any(k.startswith("opacus") for k in med):
            dp = med["dpaudit-dp"]["step_cpu_ms"]
            best = min((m["step_cpu_ms"], k) for k, m in med.items() if k.startswith("opacus"))
            print(f"{arch:<9} {size:>3}x{size:<3}x3 DP / non-private: dpaudit {dp / base:.2f}x (goal <= 1.5x at 64 px); "
                  f"fastest Opacus mode {best[1]} {best[0] / base:.2f}x; dpaudit DP / {best[1]} = {dp / best[0]:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: training and the attack on a GPU against the CPU of the same machine, in one process.

Three sections, each on ``--device`` (default ``cuda``) and on the CPU, side by side:

* ``train``: images per second of one epoch of ``dpaudit.audit.train``'s DP-SGD step as shipped (Opacus hooks
  mode, dpaudit's grouped ``Conv2d`` per-sample gradients where they pay: on the CPU only; Poisson batches of
  expected size 64, physical batches of up to 128) and of the non-private step, registry ResNet-9 (width 16) on
  demo data at each ``--sizes``; the ratio device/CPU. Only the training loop is timed (``_run_one``'s own
  figure: no data generation, evaluation or accounting).
* ``utility``: a short fixed-seed DP fit (demo data, epsilon 8) on both: test MCC and accuracy of each and their
  difference. A GPU's kernels are not bitwise the CPU's and the noise comes from the device's own random stream
  (``TrainConfig.device``), so the two models differ; the tolerance is the spread between seeds, measured on the
  CPU with ``--cpu-seeds`` seeds.
* ``attack``: ``run_attack`` as ``bench/bench_attack.py`` runs it (9 noise levels, strong and paper decoders,
  nearest-match SSIM scoring) at 64 and 224 px on both: successes per row on each, the largest |SSIM difference|,
  seconds per image, the ratio. Only the model's passes run on the device; the noise, the decoders and the scoring
  stay on the CPU (``run_attack``'s ``device``).

Time is wall time (``time.perf_counter``; a GPU's queue is drained before the clock stops). The CPU runs with
torch's default thread count (every core of the machine; printed). Every section checks the total ``--budget-s``
before each case and skips what would not fit (a note says what); a failing section is printed and the others
run. ``--quick`` shrinks everything (a smoke test of the script, e.g. ``--device cpu --quick`` on a machine
without a GPU: both sides then run on the CPU).

Usage::

    python bench/bench_gpu.py [--device cuda] [--json PATH] [--budget-s 240] [--sizes 28,64,128]
        [--attack-sizes 64,224] [--quick]

Run from the repository root; an installed ``dpaudit`` is used when there is one, else the checkout's folders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The 9 noise levels of bench/bench_attack.py, and its normalisation.
GRID = [0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
BATCH = 64
WIDTH = 16


def _import_dpaudit() -> None:
    """``import dpaudit`` from the checkout when it is not installed: pyproject.toml maps ``dpaudit`` to ``core/``
    and ``dpaudit.X`` to ``X/``, so the package's search path is both folders."""
    try:
        import dpaudit  # noqa: F401
        return
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpaudit", ROOT / "core" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "core"), str(ROOT)])
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["dpaudit"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]


class Budget:
    """The run's total time: a case starts only when its estimate fits in what is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.perf_counter()
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def allows(self, what: str, estimate: float) -> bool:
        if estimate <= self.left():
            return True
        note = f"skipped {what}: about {estimate:.0f} s needed, {max(self.left(), 0):.0f} s of --budget-s left"
        print(f"note: {note}", flush=True)
        self.skipped.append(note)
        return False


def _sync(device) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _devices(name: str):  # type: ignore[no-untyped-def]
    """(device under test, the CPU): the device first, so that a missing GPU fails before any work."""
    import torch

    from dpaudit.runtime import resolve_device

    return resolve_device(name), torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------------
# a. training throughput


def train_section(args, budget: Budget) -> dict:  # type: ignore[no-untyped-def]
    from dpaudit.audit import train as T
    from dpaudit.bounds import epsilon_rdp
    from dpaudit.data import make_demo

    dev, cpu = _devices(args.device)
    rows = []
    last: dict[str, tuple[int, float]] = {}  # device kind -> (size, seconds of its last case), for the estimates
    for size in args.sizes:
        splits = make_demo(int(args.n_train / 0.7) + 4, image_size=size, seed=0)
        tiny = make_demo(2 * BATCH, image_size=size, seed=1)
        n = len(splits.train)
        q, steps = BATCH / n, -(-n // BATCH)
        epsilon_rdp(1.0, q, steps, 1e-5)  # imports and first calls outside the clock
        row: dict = {"size": size, "n_train": n}
        for side, device in (("device", dev), ("cpu", cpu)):
            for private in (True, False):
                kind = f"{side}-{'dp' if private else 'nonprivate'}"
                prev = last.get(kind)
                estimate = 2 * prev[1] * (size / prev[0]) ** 2 if prev else 0.0
                if not budget.allows(f"train {size}px {kind}", estimate):
                    continue
                cfg = T.TrainConfig(noise_multiplier=1.0 if private else None, non_private=not private,
                                    arch="resnet9", arch_args={"width": WIDTH}, epochs=1, batch_size=BATCH,
                                    image_size=size, device=str(device))
                sigma = 1.0 if private else 0.0
                t0 = time.perf_counter()
                # warm-up on a tiny set (first calls, cuDNN autotuning, allocator), then one timed epoch
                T._run_one(cfg, tiny, 0, sigma, BATCH / len(tiny.train), 1, 1e-5, None, 0, 1, device)
                _, _, speed = T._run_one(cfg, splits, 0, sigma, q, steps, 1e-5, None, 0, steps, device)
                _sync(device)
                last[kind] = (size, time.perf_counter() - t0)
                row[f"{side}_{'dp' if private else 'nonprivate'}_images_per_s"] = speed
                print(f"  .. train {size}px {kind} ({device}): {speed:.1f} images/s", flush=True)
        for mode in ("dp", "nonprivate"):
            a, b = row.get(f"device_{mode}_images_per_s"), row.get(f"cpu_{mode}_images_per_s")
            row[f"ratio_{mode}"] = a / b if a and b else None
        rows.append(row)
    print(f"\n== a. training throughput (images/s, ResNet-9 width {WIDTH}, logical batch {BATCH}; "
          f"CPU: {_cpu_threads()} torch threads) ==")
    print(f"{'size':>5} {'n':>5} | {'DP ' + str(dev):>14} {'DP cpu':>10} {'ratio':>7} | "
          f"{'non-DP ' + str(dev):>14} {'non-DP cpu':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['size']:>5} {r['n_train']:>5} | {_f(r.get('device_dp_images_per_s')):>14} "
              f"{_f(r.get('cpu_dp_images_per_s')):>10} {_f(r.get('ratio_dp'), 'x'):>7} | "
              f"{_f(r.get('device_nonprivate_images_per_s')):>14} {_f(r.get('cpu_nonprivate_images_per_s')):>10} "
              f"{_f(r.get('ratio_nonprivate'), 'x'):>7}", flush=True)
    return {"rows": rows, "width": WIDTH, "batch": BATCH}


# ----------------------------------------------------------------------------------------------------------------
# b. utility


def utility_section(args, budget: Budget) -> dict:  # type: ignore[no-untyped-def]
    from dpaudit.audit.train import TrainConfig, train

    dev, cpu = _devices(args.device)
    out: dict = {"epsilon": 8.0, "epochs": args.utility_epochs, "max_images": args.utility_images, "runs": []}

    def fit(device, seed: int) -> dict:  # type: ignore[no-untyped-def]
        cfg = TrainConfig(dataset="demo", max_images=args.utility_images, epsilon=8.0, epochs=args.utility_epochs,
                          batch_size=BATCH, seed=seed, device=str(device), threads=_cpu_threads())
        t0 = time.perf_counter()
        r = train(cfg)
        _sync(device)
        run = {"device": str(device), "seed": seed, "mcc": r.metrics.mcc, "accuracy": r.metrics.accuracy,
               "epsilon": r.epsilon_achieved, "noise_multiplier": r.noise_multiplier,
               "seconds": time.perf_counter() - t0}
        print(f"  .. utility {device} seed {seed}: MCC {run['mcc']:.3f}, accuracy {run['accuracy']:.3f} "
              f"({run['seconds']:.1f} s)", flush=True)
        out["runs"].append(run)
        return run

    first_cpu = fit(cpu, 0) if budget.allows("utility cpu seed 0", 0.0) else None  # first: also the estimate
    cpu_s = first_cpu["seconds"] if first_cpu else 0.0
    first_dev = fit(dev, 0) if budget.allows(f"utility {dev} seed 0", cpu_s) else None
    cpu_runs = [first_cpu] if first_cpu else []
    for seed in range(1, args.cpu_seeds):
        if budget.allows(f"utility cpu seed {seed}", 1.2 * cpu_s):
            cpu_runs.append(fit(cpu, seed))
    print(f"\n== b. utility: DP fit at epsilon 8, demo data ({args.utility_images} images, "
          f"{args.utility_epochs} epochs), seed 0 on both; CPU seeds for the spread ==")
    if first_cpu and first_dev:
        for key in ("mcc", "accuracy"):
            diff = first_dev[key] - first_cpu[key]
            vals = [r[key] for r in cpu_runs]
            spread = statistics.stdev(vals) if len(vals) > 1 else None
            within = None if spread is None else abs(diff) <= 2 * spread
            out[f"{key}_difference"] = diff
            out[f"{key}_cpu_seed_std"] = spread
            out[f"{key}_within_2_std"] = within
            print(f"{key:>9}: {dev} {first_dev[key]:.3f}, cpu {first_cpu[key]:.3f}, difference {diff:+.3f}; "
                  f"CPU seed std {_f(spread, digits=3)} over {len(vals)} seeds; within 2 std: {within}", flush=True)
        out["seconds_ratio_cpu_over_device"] = first_cpu["seconds"] / first_dev["seconds"]
        print(f"wall time of the whole fit (data, training, evaluation): {dev} {first_dev['seconds']:.1f} s, "
              f"cpu {first_cpu['seconds']:.1f} s", flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# c. the attack


def attack_section(args, budget: Budget) -> dict:  # type: ignore[no-untyped-def]
    import numpy as np
    import torch

    from dpaudit.attacks.reconstruction import run_attack
    from dpaudit.data import make_demo
    from dpaudit.models import build_model

    dev, cpu = _devices(args.device)
    rows = []
    cpu_per_image: tuple[int, float] | None = None
    for size in args.attack_sizes:
        n = args.attack_images if size <= 64 else max(2, args.attack_images // 4)
        images = make_demo(int(n / 0.7) + 20, image_size=size, seed=0).train.images[:n]  # patients split whole
        labels = torch.arange(len(images)) % 7
        torch.manual_seed(0)
        model = build_model("resnet9", num_classes=7, width=WIDTH)
        estimate = 0.0 if cpu_per_image is None else 3 * cpu_per_image[1] * n * (size / cpu_per_image[0]) ** 2
        if not budget.allows(f"attack {size}px", estimate):
            continue
        results, seconds = {}, {}
        t_case = time.perf_counter()
        for side, device in (("device", dev), ("cpu", cpu)):
            run_attack(model, images[:2], labels[:2], mean=MEAN, std=STD, noise_multipliers=GRID,
                       decoders=("strong", "paper"), device=str(device))  # warm-up: every first call, each side
            t0 = time.perf_counter()
            results[side] = run_attack(model, images, labels, mean=MEAN, std=STD, noise_multipliers=GRID,
                                       decoders=("strong", "paper"), device=str(device))
            _sync(device)
            seconds[side] = time.perf_counter() - t0
            print(f"  .. attack {size}px {side} ({device}): {seconds[side] / len(images):.3f} s/image", flush=True)
        cpu_per_image = (size, (time.perf_counter() - t_case) / 2 / len(images))
        a, b = results["device"], results["cpu"]
        same = [ra.success_rate == rb.success_rate for ra, rb in zip(a.rows, b.rows, strict=True)]
        max_diff = max(float(np.max(np.abs(ra.ssim - rb.ssim))) for ra, rb in zip(a.rows, b.rows, strict=True))
        rows.append({
            "size": size, "n_images": len(images), "rows": len(a.rows), "rows_with_same_successes": sum(same),
            "successes_device": [round(r.success_rate * r.n_images) for r in a.rows],
            "successes_cpu": [round(r.success_rate * r.n_images) for r in b.rows],
            "max_abs_ssim_difference": max_diff, "rho_max_abs_difference": float(np.max(np.abs(a.rho - b.rho))),
            "device_s_per_image": seconds["device"] / len(images), "cpu_s_per_image": seconds["cpu"] / len(images),
            "ratio_cpu_over_device": seconds["cpu"] / seconds["device"]})
    print(f"\n== c. attack: 9 noise levels, strong + paper decoders, nearest-match SSIM, ResNet-9 width {WIDTH} "
          f"(the model's passes on the device; decoders and scoring on the CPU) ==")
    print(f"{'size':>5} {'n':>3} | {'same successes':>14} {'max |dSSIM|':>12} | {str(dev) + ' s/img':>12} "
          f"{'cpu s/img':>10} {'speed-up':>9}")
    for r in rows:
        print(f"{r['size']:>5} {r['n_images']:>3} | {r['rows_with_same_successes']:>6}/{r['rows']:<7} "
              f"{r['max_abs_ssim_difference']:>12.2e} | {r['device_s_per_image']:>12.4f} {r['cpu_s_per_image']:>10.4f} "
              f"{_f(r['ratio_cpu_over_device'], 'x'):>9}", flush=True)
    return {"rows": rows, "grid": GRID, "width": WIDTH}


# ----------------------------------------------------------------------------------------------------------------


def _cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


def _f(value, unit: str = "", digits: int = 1) -> str:  # type: ignore[no-untyped-def]
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}{unit}" if unit != "x" else f"{value:.2f}x"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (cuda, cuda:N, cpu)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--budget-s", type=float, default=240.0, help="total seconds; cases past it are skipped")
    ap.add_argument("--sizes", type=_ints, default=[28, 64, 128], help="training image sizes")
    ap.add_argument("--attack-sizes", type=_ints, default=[64, 224], help="attack image sizes")
    ap.add_argument("--n-train", type=int, default=512, help="training images per throughput case")
    ap.add_argument("--utility-images", type=int, default=600, help="demo images of the utility fit")
    ap.add_argument("--utility-epochs", type=int, default=3)
    ap.add_argument("--cpu-seeds", type=int, default=3, help="CPU seeds for the utility spread")
    ap.add_argument("--attack-images", type=int, default=16, help="images attacked at 64 px (a quarter at 224)")
    ap.add_argument("--sections", default="train,utility,attack")
    ap.add_argument("--quick", action="store_true", help="everything small (a smoke test of this script)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.attack_sizes, args.n_train = [28], [64], 64
        args.utility_images, args.utility_epochs, args.cpu_seeds, args.attack_images = 150, 1, 2, 3
    _import_dpaudit()
    import torch

    threads = torch.get_num_threads()  # torch's default: every core (the CPU side's thread count)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_threads": threads,
            "cpu_count": os.cpu_count(), "device": args.device,
            "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "budget_s": args.budget_s, "quick": args.quick}
    print(f"bench_gpu: {args.device} ({info['device_name'] or 'no CUDA device'}) against the CPU "
          f"({threads} torch threads, {os.cpu_count()} cores); torch {torch.__version__}; budget {args.budget_s:.0f} s",
          flush=True)
    budget = Budget(args.budget_s)
    report: dict = {"info": info}
    sections = {"train": train_section, "utility": utility_section, "attack": attack_section}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            report[name] = sections[name](args, budget)
        except Exception as exc:  # a bench reports a failing section and runs the others
            traceback.print_exc()
            print(f"section {name} failed: {type(exc).__name__}: {exc}", flush=True)
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report[name]["seconds"] = time.perf_counter() - t0
        torch.set_num_threads(threads)  # training sets its own threads; the next section starts as the first
    report["skipped"] = budget.skipped
    report["seconds"] = time.perf_counter() - budget.t0
    print(f"\ntotal {report['seconds']:.0f} s; skipped: {len(budget.skipped)}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}", flush=True)


if __name__ == "__main__":
    main()

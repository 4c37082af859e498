"""Benchmark: a profile on a local Dask cluster (``--workers 2``) against the in-process executor.

Two measurements, each side by side in one run (this 2-core machine is shared, so only same-run ratios count):

1. **Profile sweep.** A 4-epsilon x 2-seed demo profile at tiny settings (smallcnn, 16 px, a few hundred demo
   images, 2 epochs, no non-private baseline, no PDF): 8 training runs, 4 + curve bounds tasks, 4 attacks. Each
   side is one ``dpaudit profile`` command in a new process, so the Dask time includes everything the user waits
   for with ``--workers 2``: importing dask, starting the LocalCluster, the workers' own imports of torch/opacus,
   and shutting it down; the in-process run uses the default executor (training picks its threads from the idle
   cores). Both write a fresh folder; the results are compared (they must be identical, durations aside).
2. **Overhead on a single trivial task.** One tiny ``BoundsTask`` (a ReRo curve point; milliseconds of work) in
   process, on a cold local cluster of one worker (start, run, shut down: what ``--workers 1`` costs), and on a
   warm cluster (submit and gather only). The issue's limit: the Dask path adds under 2 s.

Usage::

    python bench/bench_distributed.py [--images 240] [--epochs 2] [--repeats 1] [--overhead-repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import Comparison, report

from dpaudit.audit.profile import BoundsTask, InProcessExecutor, TaskStore
from dpaudit.audit.profile.distributed import DaskExecutor
from dpaudit.audit.profile.schema import Profile, results_json

# What two runs must agree on: the profile without when, where and how fast it ran (computed_on included: the
# worker processes' record says where they resolved the device, the in-process one says cpu).
_results = results_json


def _options(tokens: list[str]) -> dict[str, str | None]:
    """Command-line tokens as {option: value, or None for a flag}: ``--name=value``, ``--name value`` (a value is
    any next token not starting with ``--``) or ``--flag``."""
    options: dict[str, str | None] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise SystemExit(f"bench_distributed: {token!r} is not an option (expected --name, --name value or "
                             "--name=value)")
        name, eq, value = token.partition("=")
        if eq:
            options[name] = value
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            options[name] = tokens[i + 1]
            i += 1
        else:
            options[name] = None
        i += 1
    return options


def _profile_cli(args: argparse.Namespace, out: Path, extra: list[str]) -> Profile:
    """``dpaudit profile`` in a new process (each side pays its own imports and data loading, as a user does)."""
    options = _options(["--out", str(out), "--dataset", "demo", "--image-size", str(args.image_size),
                        "--max-images", str(args.images), "--arch", "smallcnn", "--epsilons", "1,4,8,20",
                        "--no-non-private", "--seeds", "2", "--epochs", str(args.epochs), "--batch-size", "16",
                        "--attack-images", "8", "--attack-epochs", "1", "--no-render", "--json"])
    options.update(_options(extra))  # an option in `extra` replaces the default (profile refuses one given twice)
    cmd = [sys.executable, "-c", "from dpaudit.cli.main import app; app()", "profile",
           *(a for name, value in options.items() for a in ((name,) if value is None else (name, value)))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"dpaudit profile exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return Profile.from_json((out / "profile.json").read_text())


def sweep(args: argparse.Namespace, root: Path) -> Comparison:
    counter = iter(range(10_000))
    row = Comparison.run(
        f"profile 4 eps x 2 seeds, {args.images} img (wall)",
        ours=lambda: _profile_cli(args, root / f"dask{next(counter)}", ["--workers", "2"]),
        reference=lambda: _profile_cli(args, root / f"local{next(counter)}", []), repeats=args.repeats)
    same = _results(row.ours_value) == _results(row.reference_value)
    stages_d = {s.stage: s.seconds for s in row.ours_value.stages}
    stages_l = {s.stage: s.seconds for s in row.reference_value.stages}
    print(f"results identical (durations aside): {same}")
    print("stage seconds of the last run, dask | in-process: " + "; ".join(
        f"{k} {stages_d[k]:.1f} | {stages_l[k]:.1f}" for k in stages_d))
    return row


_ONE_TASK = """
import sys, time
t0 = time.perf_counter()
from dpaudit.audit.profile import BoundsTask, InProcessExecutor, TaskStore
task = BoundsTask(epsilon_target=8.0, noise_multiplier=None, sampling_probability=0.2, steps=10,
                  target_delta=1e-5, records_per_patient=1, kappa_train=0.01, kappas=(), curves=False)
def main():
    store = TaskStore(sys.argv[2])
    if sys.argv[1] == "dask":
        from dpaudit.audit.profile.distributed import DaskExecutor
        with DaskExecutor(workers=1) as ex:
            ex.map([task], store.put)
    else:
        InProcessExecutor().map([task], store.put)
    r = store.get(task)
    print(repr((r.noise_multiplier, r.epsilon, r.rero)), time.perf_counter() - t0)
if __name__ == "__main__":
    main()
"""


def _tiny_task() -> BoundsTask:
    # A ReRo curve point of a tiny configuration: the cheapest real task of a profile (milliseconds of work).
    return BoundsTask(epsilon_target=8.0, noise_multiplier=None, sampling_probability=0.2, steps=10,
                      target_delta=1e-5, records_per_patient=1, kappa_train=0.01, kappas=(), curves=False)


def _fresh(kind: str, root: Path, counter) -> str:  # type: ignore[no-untyped-def]
    """Run the one-task script in a new Python process; its output is the result (wall time is measured outside)."""
    script = root / "one_task.py"
    script.write_text(_ONE_TASK)
    done = subprocess.run([sys.executable, str(script), kind, str(root / f"f{next(counter)}")], check=True,
                          capture_output=True, text=True)
    return done.stdout.rsplit(" ", 1)[0]


def overhead(args: argparse.Namespace, root: Path) -> list[Comparison]:
    task = _tiny_task()
    counter = iter(range(10_000))

    def local_map(executor) -> object:  # type: ignore[no-untyped-def]
        store = TaskStore(root / f"o{next(counter)}")
        executor.map([task], store.put)
        return dataclasses.replace(store.get(task), seconds=0.0)  # the result, without its duration

    in_process = InProcessExecutor()
    # Cold: a new process per run, each side paying its own imports (what `dpaudit profile [--workers 1]` costs).
    rows = [Comparison.run("1 task, new process (--workers 1)", ours=lambda: _fresh("dask", root, counter),
                           reference=lambda: _fresh("inprocess", root, counter), repeats=args.overhead_repeats)]
    # Warm: a running cluster whose worker has imported the task's modules; the driver likewise.
    local_map(in_process)
    with DaskExecutor(workers=1) as ex:
        local_map(ex)
        rows.append(Comparison.run("1 task, warm cluster (submit+gather)", ours=lambda: local_map(ex),
                                   reference=lambda: local_map(in_process), repeats=args.overhead_repeats))
    # A whole one-budget profile (1 training run, its bounds and attack) through the CLI in a new process: the local
    # cluster starts in the background while the driver loads the data, as a user's `dpaudit profile` does.
    small = ["--epsilons", "8", "--seeds", "1"]
    rows.append(Comparison.run(
        "1-budget profile, new process (--workers 1)",
        ours=lambda: _results(_profile_cli(args, root / f"pd{next(counter)}", ["--workers", "1", *small])),
        reference=lambda: _results(_profile_cli(args, root / f"pl{next(counter)}", small)),
        repeats=args.overhead_repeats))
    for r in rows:
        added = statistics.median(a - b for a, b in zip(r.ours_s, r.reference_s, strict=True))
        print(f"{r.name}: Dask adds {added:.3f} s (median of {len(r.ours_s)}; limit 2 s) -> "
              f"{'OK' if added < 2.0 else 'OVER'}; same result: {r.ours_value == r.reference_value}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=240, help="demo images in total (train is ~70%%)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="profile runs per side (alternating)")
    parser.add_argument("--overhead-repeats", type=int, default=3)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        rows = overhead(args, root)
        if not args.skip_sweep:
            rows.insert(0, sweep(args, root))
        print()
        print("ours = Dask (--workers 2 for the profile, 1 worker for the overhead rows); ref = in-process")
        report(rows, value_label="result", fmt=lambda v: type(v).__name__)
        print(f"(benchmark wall {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

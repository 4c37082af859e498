"""Benchmark: the README's main command, ``dpaudit profile --dataset demo --out DIR --max-rero 0.05``, with its
tasks in worker processes against the same command in one process.

Cases (each one ``dpaudit profile`` in a new process, so that each pays its own imports, data and start-up):

* ``workers``: the default on a machine with two idle cores: one worker process per idle core, one torch thread
  each (``dpaudit.audit.profile.executor.LocalProcessExecutor``). The bench tells the command that two cores are
  idle (``dpaudit.runtime.idle_cores``), whatever other users of a shared machine are doing;
* ``threads-2``: every task in the command's process with two torch threads: what the default did before on a quiet
  2-core machine (``--threads 2``);
* ``threads-1``: in process with one thread (``--threads 1``): the same numbers as ``workers``, the CPU time of the
  work itself.

Reported per case: wall time, CPU time (the command and its worker processes), the load average before and after
(the machine is shared: wall times are only comparable within one run and at a similar load), the stage times,
and the mean test MCC per budget with its standard deviation over seeds (empirical). ``workers`` and ``threads-1``
must agree exactly; ``threads-2`` differs in the last bits of training (the thread count changes summation order),
hence a little in MCC.

Usage::

    python bench/bench_profile.py [--cases workers,threads-2,threads-1] [--seeds 3] [--epsilons 1,8,20,1e9]
        [--extra "--attack-images 8"]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "workers": ([], 2),  # (extra flags, idle cores the command is told about)
    "threads-2": (["--threads", "2"], None),
    "threads-1": (["--threads", "1"], None),
}

# ``dpaudit profile`` with the idle-core count fixed when asked (the bench's only change to the command).
_RUN = """
import sys
idle = sys.argv.pop(1)
if idle != "-":
    import dpaudit.runtime
    dpaudit.runtime.idle_cores = lambda: int(idle)
from dpaudit.cli.main import app
app()
"""


def run_case(name: str, args: argparse.Namespace, root: Path) -> dict:
    flags, idle = CASES[name]
    out = root / name
    cmd = [sys.executable, "-c", _RUN, "-" if idle is None else str(idle), "profile", "--dataset", "demo",
           "--out", str(out), "--max-rero", "0.05", "--seeds", str(args.seeds), "--epsilons", args.epsilons,
           "--json", *shlex.split(args.extra), *flags]
    load0 = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and, once reaped, its worker processes
    if res.returncode != 0:
        raise SystemExit(f"{name} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    summary = json.loads(res.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mcc = {lv["epsilon_target"]: (lv["mcc_mean"], lv["mcc_std"]) for lv in summary["levels"]}
    stages = {s["stage"]: s["seconds"] for s in summary["stages"]}
    print(f"  .. {name}: wall {wall:.0f} s, CPU {cpu:.0f} s, load {load0:.2f} -> {os.getloadavg()[0]:.2f}",
          file=sys.stderr, flush=True)
    return {"wall": wall, "cpu": cpu, "load": (load0, os.getloadavg()[0]), "mcc": mcc, "stages": stages}


def _num(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="workers,threads-2,threads-1")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epsilons", default="1,8,20,1e9")
    ap.add_argument("--extra", default="", help="more flags for every case, e.g. '--epochs 2'")
    args = ap.parse_args()
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: run_case(name, args, Path(tmp)) for name in cases}
    print(f"\n`dpaudit profile --dataset demo --max-rero 0.05 --seeds {args.seeds} --epsilons {args.epsilons}"
          f"{' ' + args.extra if args.extra else ''}`, {os.cpu_count()} cores, one run per case, back to back")
    ref = rows.get("threads-2")
    head = f"{'case':<10} {'wall s':>7} {'CPU s':>7} {'load before/after':>18} {'wall / threads-2':>17}  stages (s)"
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        ratio = f"{r['wall'] / ref['wall']:.2f}" if ref else "-"
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items())
        print(f"{name:<10} {r['wall']:7.0f} {r['cpu']:7.0f} {r['load'][0]:8.2f} / {r['load'][1]:<7.2f} {ratio:>17}  "
              f"{stages}")
    print("\ntest MCC per budget, mean (std over seeds), empirical:")
    for name, r in rows.items():
        print(f"{name:<10} " + "  ".join(f"{'non-private' if k is None else f'eps {k:g}'}: {_num(m)} ({_num(s)})"
                                       for k, (m, s) in r["mcc"].items()))
    if "workers" in rows and "threads-1" in rows:
        print(f"workers and threads-1 give the same MCC: {rows['workers']['mcc'] == rows['threads-1']['mcc']}")


if __name__ == "__main__":
    main()

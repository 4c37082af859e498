"""Benchmark: one federated round of 10 clients against the same 10 local trainings back to back.

Both sides train the same 10 clients (the demo at 28x28x3, IID partition, ResNet-9 width 16, DP-SGD at sigma 1.0,
one local epoch, batch 32) from the same initial model with the same seeds: "ours" is
``run_federated(rounds=1)`` (partition, schedule, the ClientTasks on the in-process executor, FedAvg aggregation and
the evaluation of the global model on the pooled and per-site test splits); the reference calls the training loop
(``dpaudit.audit.train._run_one``) on each client's data directly. The ratio is what the federated machinery costs
around the local trainings. One torch thread on both sides. The printed values are the summed squared difference
between the aggregated model and the FedAvg of the reference's local models (0 when the round is the same
computation).

Usage::

    python bench/bench_federated.py [--clients 10] [--repeats 2] [--max-images 2000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Comparison, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=2000)
    parser.add_argument("--warmup", action="store_true", help="Run each side once untimed first.")
    args = parser.parse_args()

    import torch

    from dpaudit.audit.federated import FederatedConfig, run_federated
    from dpaudit.audit.federated.fedavg import _client_splits
    from dpaudit.audit.federated.partition import parse_partition, partition_indices
    from dpaudit.audit.train import TrainConfig, _run_one
    from dpaudit.data import load_splits
    from dpaudit.models import build_model

    torch.set_num_threads(1)
    splits = load_splits("demo", image_size=28, max_images=args.max_images, seed=0)
    config = FederatedConfig(image_size=28, clients=args.clients, rounds=1, batch_size=32, dp_level="sample",
                             noise_multiplier=1.0, target_delta=1e-5, threads=1)

    cpu: dict[str, list[float]] = {"federated": [], "back_to_back": []}

    def timed(name, fn):
        def run():
            t0 = time.process_time()
            value = fn()
            cpu[name].append(time.process_time() - t0)
            return value
        return run

    def federated():
        return run_federated(config, splits=splits).state

    def back_to_back():
        idx = partition_indices([s.labels.numpy() for s in (splits.train, splits.val, splits.test)],
                                [s.patient_ids for s in (splits.train, splits.val, splits.test)], [None] * 3,
                                parse_partition("iid"), args.clients, num_classes=splits.num_classes, seed=0)
        torch.manual_seed(0)
        init = build_model("resnet9", num_classes=splits.num_classes, in_channels=3).state_dict()
        total, acc = 0, None
        for k in range(args.clients):
            cs = _client_splits(splits, idx, k)
            n = len(cs.train)
            b = min(32, n)
            local = TrainConfig(image_size=28, epochs=1, batch_size=b, noise_multiplier=1.0, target_delta=1e-5, seed=k,
                                device="cpu", threads=1)
            steps = math.ceil(n / b)
            model, _, _ = _run_one(local, cs, k, 1.0, b / n, steps, 1e-5, None, 0, steps, initial_state=init)
            sd = model.state_dict()
            acc = {key: sd[key].double() * n for key in sd} if acc is None else {
                key: acc[key] + sd[key].double() * n for key in sd}
            total += n
        return {key: (v / total) for key, v in acc.items()}

    row = Comparison.run(f"1 round, {args.clients} clients, 28 px", ours=timed("federated", federated),
                         reference=timed("back_to_back", back_to_back), repeats=args.repeats, warmup=args.warmup)
    ours, ref = row.ours_value, row.reference_value
    diff = sum(float(((ours[k].double() - ref[k]) ** 2).sum()) for k in ours if ours[k].is_floating_point())
    report([row], value_label="sum sq. diff of models", fmt=lambda v: f"{diff:.2e}" if v is ours else "-")
    print(f"federated round: {row.ours_median:.2f} s; the same local trainings back to back: "
          f"{row.reference_median:.2f} s; overhead {row.ours_median / row.reference_median - 1:+.1%} (wall)")
    from dpaudit.audit.federated import sample_level_accounting

    idx = partition_indices([s.labels.numpy() for s in (splits.train, splits.val, splits.test)],
                            [s.patient_ids for s in (splits.train, splits.val, splits.test)], [None] * 3,
                            parse_partition("iid"), args.clients, num_classes=splits.num_classes, seed=0)
    sizes = [len(_client_splits(splits, idx, k).train) for k in range(args.clients)]
    t0 = time.process_time()
    sample_level_accounting(sizes, 32, 1, [1] * args.clients, 1e-5, noise_multiplier=1.0)
    print(f"of which per-site accounting ({args.clients} tight PLD epsilons): {time.process_time() - t0:.2f} s CPU")
    f, r = statistics.median(cpu["federated"]), statistics.median(cpu["back_to_back"])
    print(f"process CPU time (robust to the other engineers' load): federated {f:.2f} s, back to back {r:.2f} s, "
          f"overhead {f / r - 1:+.1%}")


if __name__ == "__main__":
    main()

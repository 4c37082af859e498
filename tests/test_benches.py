"""Every benchmark script runs to the end at its smallest settings (slow: about 2 minutes in all).

The benchmarks reach into dpaudit's internals (a training step without its evaluation, the attack's stages, the
profile's command line), so a change there can break them without any other test noticing: bench_train called
``train._evaluate`` without the ``unit`` and ``split`` it had gained, and bench_distributed passed ``--epsilons``
twice after the command line began to refuse a repeated option. Run with ``python3.11 -m pytest -m slow
tests/test_benches.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

CASES = {
    "bench_bounds": ["--quick", "--sections", "rero,relaxed,epsilon,k,profile"],
    "bench_attack": ["--sizes", "32", "--n-images", "2", "--repeats", "1"],
    "bench_train": ["--sizes", "16", "--archs", "smallcnn", "--n-train", "128", "--repeats", "1"],
    "bench_segmentation": ["--sizes", "28", "--steps", "3", "--repeats", "1"],
    "bench_decode": ["--size", "1000", "--repeats", "1"],
    "bench_loader": ["--dicom-files", "20", "--nifti-files", "4", "--repeats", "1"],
    "bench_federated": ["--clients", "3", "--repeats", "1", "--max-images", "200"],
    "bench_distributed": ["--images", "60", "--epochs", "1", "--image-size", "16", "--skip-sweep",
                          "--overhead-repeats", "1"],
    "bench_gpu": ["--device", "cpu", "--quick"],
    "bench_profile": ["--cases", "threads-1", "--seeds", "1", "--epsilons", "1", "--extra",
                      "--epochs 1 --max-images 100"],
    "fuzz_bounds": ["--points", "2", "--seed", "1", "--max-steps", "1000"],
}


def test_every_benchmark_has_a_case() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"harness"}
    assert scripts == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs(script: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), *CASES[script]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

"""The computing block (dpaudit.heap) of the bounds and of training: freed memory kept for reuse and one BLAS thread;
only where memory comes from and how many threads sum change, never a number.

References: the same computation (bounds, DP-SGD and non-private training) without the block (bit for bit), the
in-place spectrum power against the copying one (bit for bit), glibc's allocator serving large arrays inside the
block from any thread, the allocator calls recorded by a stand-in libc, forked children, and threadpoolctl's own
report of the BLAS thread counts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import dpaudit.bounds.pld as pld
from dpaudit import heap
from dpaudit.bounds import epsilon_bound, rero_bound
from dpaudit.bounds.pld import _int_power, _spectrum_power, clear_caches


@pytest.mark.parametrize("steps", (2, 3, 99, 300, 1000, 65537))
def test_in_place_power_is_the_copying_one_bit_for_bit(steps: int) -> None:
    # Every frequency live (|z| near 1, as a spike-like step's spectrum at T 300) and some dead ones.
    rng = np.random.default_rng(steps)
    for scale in (1e-9, 1.0):
        z = np.exp(1j * rng.uniform(-np.pi, np.pi, 4097)) * (1.0 - rng.uniform(0.0, scale / steps, 4097))
        want = _spectrum_power(z.copy(), steps)
        got = _spectrum_power(z.copy(), steps, overwrite=True)
        assert np.array_equal(got.view(np.float64), want.view(np.float64))
        assert np.array_equal(_int_power(z.copy(), steps, overwrite=True).view(np.float64),
                              _int_power(z, steps).view(np.float64))


def test_the_block_nests_and_restores() -> None:
    with heap.reuse_freed_memory():
        with heap.reuse_freed_memory():
            assert heap._depth in (0, 2)  # 0 off glibc: nothing is counted
        assert heap._depth in (0, 1)
    assert heap._depth == 0
    with pytest.raises(ZeroDivisionError), heap.reuse_freed_memory():
        raise ZeroDivisionError
    assert heap._depth == 0


def test_large_arrays_inside_the_block_from_threads() -> None:
    # With mmap off, a thread's own arena cannot hold 200 MB: glibc must fall back to the main heap, not fail.
    sums = []

    def work() -> None:
        a = np.ones(25_000_000)
        sums.append(float(a.sum()))

    with heap.reuse_freed_memory():
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        work()
    assert sums == [25_000_000.0] * 3


def test_bounds_are_the_same_bit_for_bit_without_the_block(monkeypatch) -> None:
    # The slowest epsilon corner of bench_bounds (window 9.6e6 points) is too slow for the default run; a smaller
    # window of the same kind (spike-like step at small q, every frequency live) and a relaxed ReRo run.
    def values():
        clear_caches()
        eps = epsilon_bound(0.5, 1e-5, 30, 1e-5).value
        clear_caches()
        gamma = rero_bound(1.0, 0.01, 1000, [1e-6, 1e-3, 0.1], threat_model="relaxed", records_per_patient=2).gamma
        return eps, [float(g) for g in gamma]

    with_block = values()
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    monkeypatch.setattr(heap, "_blas", [None])  # and BLAS with its own thread count
    monkeypatch.setattr(pld, "_spectrum_power", lambda z, steps, masses=None, width=None, overwrite=False:
                        _spectrum_power(z, steps, masses, width))
    assert values() == with_block


def test_refine_opens_the_block_only_from_windows_of_heap_block_window_points(monkeypatch) -> None:
    # Short runs (windows of a few thousand points) pay nothing for the block; longer ones run in it from their first
    # round of HEAP_BLOCK_WINDOW points (an estimate), unless an earlier block set a policy that keeps arrays of that
    # size anyway. Either way the same numbers, bit for bit.
    entered = []
    real = heap.reuse_freed_memory

    @contextlib.contextmanager
    def spy() -> Iterator[None]:
        entered.append(True)
        with real():
            yield

    monkeypatch.setattr(pld, "reuse_freed_memory", spy)

    def values() -> list[float]:
        out = []
        for steps in (10, 1000):
            clear_caches()
            out.append(epsilon_bound(5.0, 0.1, steps, 1e-5).value)
        return out

    monkeypatch.setattr(heap, "_restored", False)  # (a fresh process: glibc's own policy)
    lazily = values()
    if heap._glibc() is None:
        assert not entered  # (off glibc there is no policy to set: never a block)
        return
    assert len(entered) == 1  # T 1000 (windows of 30720 points), not T 10 (3200)
    entered.clear()
    # Once a block has set the policy, glibc keeps arrays of such windows outside blocks too: no block.
    assert heap._restored and heap.heap_keeps(8 * 30720) and not heap.heap_keeps(8 * (1 << 20))
    assert values() == lazily and not entered
    monkeypatch.setattr(pld, "HEAP_BLOCK_WINDOW", 0)
    monkeypatch.setattr(pld, "heap_keeps", lambda array_bytes: False)  # every run in the block
    assert values() == lazily and len(entered) == 2


def test_blas_is_held_to_one_thread_around_the_bounds_matrix_vector_products(monkeypatch) -> None:
    # The block over a whole refinement no longer limits BLAS: the two places the bounds call it do, for the products
    # themselves (the epsilon reader's block sums, the accurate route's spectrum sums).
    threadpoolctl = pytest.importorskip("threadpoolctl")
    counts = []
    real = heap.one_blas_thread

    @contextlib.contextmanager
    def spy() -> Iterator[None]:
        with real():
            counts.append({lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"})
            yield

    monkeypatch.setattr(pld, "one_blas_thread", spy)
    masses = np.full(10 * pld.COARSE_BLOCK, 1e-6)
    pld._skip_blocks(masses, 0.0, 1e-3, 1, masses.size, 0.0, 0.0, 0.0, 1e-3)
    x = np.zeros(4096)
    x[2000:2100] = 0.01
    assert pld._accurate_power(x, np.arange(8), pld.ACCURATE_STEPS) is not None
    assert len(counts) == 2 and all(c <= {1} for c in counts)


def test_the_resident_set_is_read_from_a_descriptor_kept_open_and_a_forked_child_opens_its_own() -> None:
    import os

    with open("/proc/self/statm", "rb") as f:
        plain = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    got = heap._resident_bytes()
    if heap._statm_fd is not None and heap._statm_fd < 0:
        pytest.skip("no /proc/self/statm here")
    assert abs(got - plain) <= 64 * 1024 * 1024  # (the same set, read a moment apart)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's descriptor names the parent's process; it must not be read
        try:
            os.write(write, f"{heap._statm_fd}".encode())
        finally:
            os._exit(0)
    os.close(write)
    got_child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert got_child == "None" and heap._statm_fd is not None


class _FakeLibc:
    """Records the allocator calls a block makes (the real glibc's effects cannot be read back)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.mark.parametrize(("growth", "trimmed"), [(0, False), (heap.TRIM_GROWTH - 1, False), (heap.TRIM_GROWTH, True)])
def test_freed_memory_is_given_back_only_after_a_block_that_grew(monkeypatch, growth: int, trimmed: bool) -> None:
    # malloc_trim walks every free chunk (tens of ms on a fragmented heap): a loop of small bounds would pay it on
    # every call. Settings are set on entry and restored on exit either way.
    fake = _FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: fake)
    sizes = iter([1_000_000, 1_000_000 + growth])
    monkeypatch.setattr(heap, "_resident_bytes", lambda: next(sizes))
    with heap.reuse_freed_memory(), heap.reuse_freed_memory():
        pass
    assert fake.calls[:2] == [("mallopt", heap.M_MMAP_MAX, 0), ("mallopt", heap.M_TRIM_THRESHOLD, heap.KEEP_ALL)]
    assert fake.calls[2:5] == [("mallopt", heap.M_MMAP_MAX, heap.DEFAULT_MMAP_MAX),
                               ("mallopt", heap.M_MMAP_THRESHOLD, heap.ADAPTIVE_MMAP_CEILING),
                               ("mallopt", heap.M_TRIM_THRESHOLD, 2 * heap.ADAPTIVE_MMAP_CEILING)]
    assert (("malloc_trim", 0) in fake.calls) is trimmed
    assert heap._depth == 0


def _child_report(queue) -> None:  # what a forked child sees of the block count, before, inside and after
    before = heap._depth
    with heap.reuse_freed_memory():
        inside = heap._depth
    queue.put((before, inside, heap._depth))


def test_a_child_forked_while_another_thread_holds_a_block_starts_with_none_open() -> None:
    import multiprocessing

    if heap._glibc() is None:
        pytest.skip("the block is a no-op off glibc")
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with heap.reuse_freed_memory():
            entered.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(30)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_report, args=(queue,))
        child.start()
        got = queue.get(timeout=60)
        child.join(60)
    finally:
        leave.set()
        holder.join(30)
    assert got == (0, 1, 0) and child.exitcode == 0
    assert heap._depth == 0


def test_a_block_open_at_a_fork_ends_in_the_child_without_touching_the_count() -> None:
    import os

    if heap._glibc() is None:
        pytest.skip("the block is a no-op off glibc")
    read, write = os.pipe()
    pid = -1
    try:
        with heap.reuse_freed_memory():
            pid = os.fork()
        if pid == 0:  # the child: its copy of the block has just ended
            os.write(write, f"{heap._depth}".encode())
    finally:
        if pid == 0:
            os._exit(0)
    os.close(write)
    got = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert got == "0" and heap._depth == 0


def test_one_blas_thread_inside_and_the_earlier_count_after() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg  # noqa: F401 (loads scipy's BLAS beside numpy's)

    with heap.one_blas_thread():  # (forms the controller)
        pass
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    with heap.computing_block():
        inside = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    assert inside and set(inside) == {1} and after == before


@contextlib.contextmanager
def _glibc_default_mmap() -> Iterator[None]:
    """glibc's default mmap threshold (128 KiB, fixed) for the block's reference runs: every larger array comes fresh
    from mmap and goes back at free, as before the block; the block's restored policy after."""
    libc = heap._glibc()
    if libc is None:
        yield
        return
    libc.mallopt(heap.M_MMAP_THRESHOLD, 128 * 1024)
    try:
        yield
    finally:
        heap._restore(libc)


def test_training_runs_in_the_block_and_learns_the_same_weights_bit_for_bit(monkeypatch: pytest.MonkeyPatch
                                                                          ) -> None:
    # DP-SGD (Opacus' DPOptimizer on per-sample gradients) and non-private steps, with the block and without it:
    # the same weights to the last bit. The block is open while the steps run and closed after.
    import torch

    import dpaudit.audit.train as train_mod
    from dpaudit.audit.train import TrainConfig, _run_one
    from dpaudit.data import load_splits

    splits = load_splits("demo", image_size=16, max_images=96, seed=0)
    n = len(splits.train)
    depths: list[int] = []
    real_epoch = train_mod._epoch
    monkeypatch.setattr(train_mod, "_epoch", lambda *a, **k: (depths.append(heap._depth), real_epoch(*a, **k))[1])
    for private in (True, False):
        cfg = TrainConfig(noise_multiplier=1.0 if private else None, non_private=not private, arch="resnet9",
                          arch_args={"width": 8}, epochs=2, batch_size=16, image_size=16, threads=1)
        states = []
        for block in (True, False):
            monkeypatch.setattr(train_mod, "reuse_freed_memory",
                                heap.reuse_freed_memory if block else contextlib.nullcontext)
            # Without the block, glibc's default policy: the per-sample gradients (1.6 MB here) come fresh from mmap.
            with contextlib.nullcontext() if block else _glibc_default_mmap():
                model = _run_one(cfg, splits, 0, 1.0 if private else 0.0, 16 / n, 2 * -(-n // 16), 1e-5, None, 0,
                                 1)[0]
            states.append(model.state_dict())
        assert states[0].keys() == states[1].keys()
        for name, value in states[0].items():
            assert torch.equal(value, states[1][name]), name
    assert depths == [1, 1, 0, 0, 1, 1, 0, 0] and heap._depth == 0


def test_attack_runs_in_the_block_and_gives_the_same_result_bit_for_bit() -> None:
    # run_attack inside the block and its undecorated body under glibc's default mmap policy: every SSIM and
    # success the same to the last bit.
    import torch

    from dpaudit.attacks.reconstruction import run_attack
    from dpaudit.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=4, in_channels=3)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), noise_multipliers=(0.0, 1e-4, 1e-2),
              decoders=("strong", "paper"))
    seen: list[int] = []
    real_resident = heap._resident_bytes

    def spy() -> int:
        seen.append(heap._depth)
        return real_resident()

    heap._resident_bytes = spy  # read once on entering the outermost block
    try:
        inside = run_attack(model, images, torch.arange(3), **kw)
    finally:
        heap._resident_bytes = real_resident
    with _glibc_default_mmap():
        outside = run_attack.__wrapped__(model, images, torch.arange(3), **kw)
    assert heap._depth == 0 and (seen or heap._glibc() is None)
    for a, b in zip(inside.rows, outside.rows, strict=True):
        assert (a.decoder, a.noise_multiplier, a.success_rate) == (b.decoder, b.noise_multiplier, b.success_rate)
        assert np.array_equal(np.asarray(a.ssim), np.asarray(b.ssim))

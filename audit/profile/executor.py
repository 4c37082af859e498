"""Where the profile's tasks run (:class:`Executor`: :class:`InProcessExecutor`, :class:`LocalProcessExecutor`)
and where their results are kept (:class:`TaskStore` in ``DIR/tasks/``, so an interrupted profile resumes and a
finished task never runs again).

A distributed executor (:class:`dpaudit.audit.profile.distributed.DaskExecutor`) implements the same two methods.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dpaudit.audit.profile.schema import StageTime
from dpaudit.audit.profile.tasks import Task
from dpaudit.codec import encode, from_plain
from dpaudit.errors import ConfigError, DpAuditError, invalid
from dpaudit.outputs import write_atomic

ProgressFn = Callable[[str, int, int, str], None]  # (stage, done, total, message)

# --------------------------------------------------------------------------------------------------------------
# Executors and the resumable store
# --------------------------------------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs tasks; reports each result in the calling process as soon as it is available.

    ``map`` calls ``on_done(task, result)`` once per successful task, in completion order, from the thread that
    called ``map`` (so the caller can write the store without locks). A failing task raises from ``map``; an
    implementation that runs tasks in parallel lets the others finish (and reports them) before raising, so no
    finished result is lost. Tasks and results are picklable.
    """

    def map(self, tasks: Sequence[Task], on_done: Callable[[Task, Any], None]) -> None: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Runs every task in this process, one after the other (the default; what CI uses)."""

    def map(self, tasks: Sequence[Task], on_done: Callable[[Task, Any], None]) -> None:
        for task in tasks:
            on_done(task, task.run())

    def close(self) -> None:
        return None


class TaskFailedError(DpAuditError):
    """One or more tasks failed on worker processes; every other result was kept."""


def with_threads(task: Task, threads: int) -> Task:
    """``task`` with its ``threads`` field (torch intra-op threads: a location field, not part of the key) set to
    ``threads``; a task without one (bounds) unchanged."""
    if dataclasses.is_dataclass(task) and any(f.name == "threads" for f in dataclasses.fields(task)):
        return dataclasses.replace(task, threads=threads)  # type: ignore[type-var]
    return task


#: Memory a worker needs beyond what this process holds when the pool starts (its imports and loaded data, which
#: a worker holds too): a training run's activations, per-sample gradients and optimiser state. Measured: a demo
#: profile DP training task peaks 0.7 GB above the process that loaded the data (331 MB -> 1048 MB). Training in
#: dpaudit.heap's block keeps freed memory for reuse: the whole demo profile's peak rose by about 15% (1.56-1.63 to
#: 1.80-1.85 GB), which a task's 0.7 GB leaves inside this headroom (an estimate: not measured per task).
WORKER_HEADROOM_BYTES = 1 << 30


def workers_that_fit(wanted: int) -> int:
    """How many of ``wanted`` worker processes fit in the free memory, each holding about what this process holds
    now plus :data:`WORKER_HEADROOM_BYTES` (a worker loads the same data: HAM10000 at 224 px is 6 GB per process).
    Where the memory cannot be read (not Linux), ``wanted``."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        with open("/proc/self/statm", encoding="ascii") as fh:
            resident = int(fh.read().split()[1]) * page
    except (ValueError, OSError, AttributeError, IndexError):
        return wanted
    return int(max(0, min(wanted, free // (resident + WORKER_HEADROOM_BYTES))))


#: How often a worker checks that the process that started it is still there (seconds).
PARENT_POLL_SECONDS = 1.0


def _exit_with_parent(parent: int) -> None:
    """Stop this worker process once ``parent`` has gone (killed with SIGKILL, or dead before it could stop its
    workers): a worker left behind would train on for minutes, holding a core and the data, for nobody."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # the parent is gone: nothing to hand a result to, nothing to clean up

    threading.Thread(target=watch, name="dpaudit-parent-watch", daemon=True).start()


def _start_worker(torch_threads: int, parent: int | None = None) -> None:
    """A worker process's start: torch gets ``torch_threads`` threads for everything outside the tasks too (data
    loading); each task sets its own from its ``threads`` field (:func:`with_threads`). With ``parent`` (the
    pool's process id) the worker ends itself when that process is gone."""
    import logging

    import torch

    if parent is not None:
        _exit_with_parent(parent)

    torch.set_num_threads(torch_threads)
    # The driver loaded the data first and named every file it skipped; the workers' loads would repeat it.
    logging.getLogger("dpaudit.data.skipped").setLevel(logging.ERROR)


#: How long an interrupted run's workers get to end after SIGTERM before SIGKILL (seconds).
KILL_GRACE_SECONDS = 3.0


def _run(task: Task) -> Any:
    """Run one task in a worker process (module level: the worker imports it; the task is pickled by value)."""
    return task.run()


class LocalProcessExecutor:
    """Runs tasks in ``workers`` processes on this machine, one task and one torch thread per process.

    The standard library's ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method (a fork of a
    process that holds OpenMP threads can hang). Why processes and not threads in one process: the demo profile's
    training steps are small (ResNet-9 on 28 px images, batches of 64), where a second torch thread adds little
    while a second process doubles the throughput, and a one-thread process never spins waiting for a busy core (a
    2-thread training step was up to 6x slower under other users' load, :func:`dpaudit.runtime.idle_cores`).

    Results are those of the same tasks run in process with one thread (``--threads 1``): every task seeds what
    it draws from its own fields. ``map`` hands each result to ``on_done`` in the calling process as it
    completes; a task that raises is re-raised after every other task has finished and been handed over; a worker
    that dies (killed, out of memory) is reported in a :class:`TaskFailedError`, the finished results kept.
    Processes start at the first ``map`` and stay until :meth:`close`.
    """

    def __init__(self, workers: int, *, torch_threads: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise invalid("workers", workers, "an integer >= 1")
        if isinstance(torch_threads, bool) or not isinstance(torch_threads, int) or torch_threads < 1:
            raise invalid("torch_threads", torch_threads, "an integer >= 1")
        self.workers, self.torch_threads = workers, torch_threads
        self._pool: Any = None
        self._in_process = False

    def describe(self) -> str:
        """One line for the progress log: where tasks run."""
        return (f"running tasks in {self.workers} worker processes, one torch thread each (fewer if memory is "
                "short; --threads N runs them in this process)")

    def _ensure_pool(self) -> Any:
        """The pool, started at the first call with as many workers as fit in memory; None when fewer than two do
        (the tasks then run in this process, with the workers' thread count: the same results)."""
        if self._pool is None and not self._in_process:
            workers = workers_that_fit(self.workers)
            if workers < 2:
                self._in_process = True
                return None
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self.torch_threads, os.getpid()))
        return self._pool

    def map(self, tasks: Sequence[Task], on_done: Callable[[Task, Any], None]) -> None:
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        tasks = list(tasks)
        if not tasks:
            return
        pool = self._ensure_pool()
        if pool is None:
            for task in tasks:
                on_done(task, with_threads(task, self.torch_threads).run())
            return
        futures = {pool.submit(_run, with_threads(t, self.torch_threads)): i for i, t in enumerate(tasks)}
        errors: dict[int, BaseException] = {}
        lost: list[int] = []
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    lost.append(i)
                    continue
                except Exception as exc:
                    errors[i] = exc
                    continue
                on_done(tasks[i], result)
        except BaseException:
            self.close(kill=True)  # Ctrl-C, SIGTERM, or an error in on_done: stop the running work too
            raise
        if lost:
            self.close()  # a broken pool takes no more work
            raise TaskFailedError(
                f"{len(lost)} of {len(tasks)} task(s) did not finish because a worker process died (killed, e.g. "
                f"out of memory), first {tasks[min(lost)].describe()}; the other finished results are stored in "
                "the profile folder's tasks/. Fix: re-run the same command (only the unfinished tasks run again), "
                "or pass --threads 1 to run the tasks one at a time in this process.")
        if errors:
            raise errors[min(errors)]  # what the in-process executor raises: the first failing task's error

    def close(self, *, kill: bool = False) -> None:
        """Stop the worker processes: pending work is cancelled; running tasks finish first, or with ``kill`` (an
        interrupted run) are stopped at once (SIGTERM, then SIGKILL for a worker that has not ended after
        :data:`KILL_GRACE_SECONDS`)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not kill:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        # The standard library (before Python 3.14's terminate_workers) waits for running tasks: a training run
        # would go on for minutes after Ctrl-C. Its process table is the one way to stop them.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)

    def __enter__(self) -> LocalProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)


def default_executor(threads: int | None = None) -> InProcessExecutor | LocalProcessExecutor:
    """The executor of ``dpaudit profile`` without --scheduler/--workers: one worker process per idle core (one
    torch thread each) when at least two cores are idle, else this process. ``threads`` given (``--threads N``):
    this process, with N threads, as asked."""
    from dpaudit.runtime import idle_cores

    idle = idle_cores() if threads is None else 1
    return LocalProcessExecutor(idle) if idle >= 2 else InProcessExecutor()


class TaskStore:
    """Finished task results in ``DIR/tasks/<key>.json`` (task configuration and result), written atomically.

    A result is reused only when the stored task configuration equals the task's (the key is a hash of it; the
    comparison guards against collisions and hand edits), and when every file the result names (a task's
    ``files(result)``: the checkpoint it trained or attacked, the images it saved; paths relative to ``DIR``) is
    the file it was: each one's SHA-256 is stored with the result, and a file replaced since (another
    configuration's run in the same folder) or missing makes the task run again.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.folder = Path(root)
        self.root = self.folder / "tasks"

    def _path(self, task: Task) -> Path:
        return self.root / f"{task.key()}.json"

    def _digests(self, task: Task, result: Any) -> dict[str, str | None]:
        names = getattr(task, "files", None)
        if names is None:
            return {}
        from dpaudit.audit.profile.tasks import file_sha256

        out: dict[str, str | None] = {}
        for name in dict.fromkeys(names(result)):
            path = self.folder / name
            out[name] = file_sha256(str(path)) if path.is_file() else None
        return out

    def get(self, task: Task) -> Any | None:
        path = self._path(task)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is recomputed
        if data.get("task") != task.identity():  # type: ignore[attr-defined]
            return None
        try:
            result = from_plain(task.result_type, data.get("result"))
        except ConfigError:
            return None
        # The files the result names must be those it was computed with (an entry written before digests were
        # stored cannot show that: it runs again, and a training run reuses its checkpoint when that matches).
        if getattr(task, "files", None) is not None and data.get("files") != self._digests(task, result):
            return None
        return result

    def put(self, task: Task, result: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(task)
        payload = {"kind": task.stage, "task": task.identity(), "result": encode(result),  # type: ignore[attr-defined]
                   "files": self._digests(task, result)}
        write_atomic(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")


def _run_stage(name: str, tasks: Sequence[Task], store: TaskStore, executor: Executor,
               progress: ProgressFn | None) -> tuple[dict[str, Any], StageTime]:
    """Run the tasks not yet in the store; return every result by key and the stage's timing."""
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    pending = []
    for task in tasks:
        cached = store.get(task)
        if cached is not None:
            results[task.key()] = cached
        else:
            pending.append(task)
    reused = len(results)
    total = len(tasks)
    if progress is not None:
        progress(name, reused, total, f"{reused} reused from a previous run" if reused else "starting")

    def on_done(task: Task, result: Any) -> None:
        store.put(task, result)
        results[task.key()] = result
        if progress is not None:
            secs = getattr(result, "seconds", float("nan"))
            progress(name, len(results), total, f"{task.describe()} done in {secs:.1f} s")

    if pending:
        executor.map(pending, on_done)
    missing = [t.describe() for t in tasks if t.key() not in results]
    if missing:
        raise ConfigError(f"the executor returned without results for {len(missing)} task(s): {missing[:3]}. "
                          "Fix: re-run the same command; finished tasks are kept and not run again.")
    return results, StageTime(name, time.perf_counter() - t0, len(pending), reused)



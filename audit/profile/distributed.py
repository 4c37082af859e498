"""``DaskExecutor``: run the profile's pure tasks on a Dask cluster.

The profile (:mod:`dpaudit.audit.profile`) is a fan-out of independent, picklable tasks (every privacy level times
every seed trains a model, then bounds and attacks). :class:`DaskExecutor` implements the same two-method
:class:`~dpaudit.audit.profile.Executor` interface as the in-process default, on `Dask distributed
<https://distributed.dask.org>`_:

* ``DaskExecutor(scheduler="tcp://HOST:8786")`` connects to an existing cluster (started with ``dask scheduler``
  and ``dask worker``, or by an HPC/Kubernetes deployment);
* ``DaskExecutor(workers=N)`` starts a ``LocalCluster`` on this machine: N worker processes with one thread each,
  listening on the loopback interface only (127.0.0.1), dashboard off.

Every task is submitted at once; results come back in the driver as each future completes
(``distributed.as_completed``) and ``run_profile`` writes them to the shared ``DIR/tasks/`` store at once, so a
finished task is never run again and a worker that dies loses nothing that already came back. A task that raises
is retried (``retries``, default 2) and a task whose worker dies is re-scheduled by Dask (up to its
``distributed.scheduler.allowed-failures``); a task that still fails is reported in a :class:`TaskFailedError`
after every other task has finished and been stored.

The numbers do not depend on where a task runs: a task is a frozen configuration whose ``run()`` seeds everything
it draws from its own fields (``tests/test_distributed.py`` checks that a local cluster writes the same
``profile.json`` results as the in-process run). Workers run torch with one intra-op thread (``torch_threads``):
each worker runs one task at a time, so N workers keep N cores busy without oversubscribing them.

Dask is an optional dependency (``pip install "dpaudit[distributed]"``) imported only when an executor is built.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from dpaudit.audit.profile import AttackTask, Task
from dpaudit.audit.profile.executor import TaskFailedError, default_executor, with_threads
from dpaudit.errors import MissingDependencyError, invalid

__all__ = ["DaskExecutor", "TaskFailedError", "make_executor"]

#: Seconds to wait for a remote scheduler to answer, and for at least one worker to join it.
CONNECT_TIMEOUT_S = 30
#: Longest exception text quoted per failed task (messages are ours: no image data, but keep the line short).
_MESSAGE_CHARS = 240

_INSTALL_FIX = 'install the optional extra: pip install "dpaudit[distributed]"'


def _import_distributed() -> Any:
    """The ``distributed`` module, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError(
            f"running a profile on a Dask cluster (--scheduler / --workers) needs dask.distributed, which is not "
            f"installed ({exc}). Fix: {_INSTALL_FIX}, or leave out --scheduler/--workers to run on this machine."
        ) from None
    return distributed


def _run_task(task: Task, torch_threads: int | None) -> Any:
    """Run one task on a worker (a module-level function: the worker imports it, nothing is pickled by value)."""
    if torch_threads is not None and isinstance(task, AttackTask):
        # Training sets its own threads (TrainTask.threads); the attack at most the process setting. Bounds tasks
        # never import torch (dpaudit.bounds is numpy/scipy only), so a bounds-only worker stays light.
        import torch

        torch.set_num_threads(torch_threads)
    return task.run()


def _worker_check(paths: Sequence[str]) -> tuple[str | None, list[str]]:
    """On a worker: the dpaudit version it imports (None if absent) and which of ``paths`` it cannot see."""
    try:
        from dpaudit import __version__ as version
    except ImportError:
        version = None
    return version, [p for p in paths if not os.path.isdir(p)]


class DaskExecutor:
    """Run profile tasks on a Dask cluster: an existing one (``scheduler``) or a local one (``workers``).

    Parameters
    ----------
    scheduler:
        Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``. Every worker must have dpaudit installed
        (the same version as here) and see the profile folder and ``data_dir`` at the same paths (a shared file
        system): training writes checkpoints there and the attack reads them.
    workers:
        Start a ``LocalCluster`` with this many worker processes (one thread each, host 127.0.0.1, no dashboard).
        It is shut down by :meth:`close`.
    retries:
        Extra attempts for a task that raises (``client.submit(..., retries=)``). A task whose worker dies is
        re-scheduled by Dask itself, up to ``distributed.scheduler.allowed-failures`` times (default 3).
    torch_threads:
        torch intra-op threads per task on the workers (1: one task per core); None leaves them as they are.
    connect_timeout:
        Seconds to wait for the scheduler and for its first worker.

    Exactly one of ``scheduler`` and ``workers`` is given. Use as a context manager or call :meth:`close`.

    Notes
    -----
    Local workers are started with the ``spawn`` method (Dask's default): a script that builds
    ``DaskExecutor(workers=N)`` must do so under ``if __name__ == "__main__":``. The ``dpaudit`` command does.
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None, *, retries: int = 2,
                 torch_threads: int | None = 1, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        if (scheduler is None) == (workers is None):
            raise invalid("scheduler/workers", {"scheduler": scheduler, "workers": workers},
                          "exactly one of them", "pass either --scheduler tcp://HOST:8786 (an existing cluster) "
                          "or --workers N (a local cluster), not both")
        if scheduler is not None and (not isinstance(scheduler, str) or "://" not in scheduler
                                      or not scheduler.split("://", 1)[1]):
            raise invalid("scheduler", scheduler, "a scheduler address PROTOCOL://HOST:PORT",
                          "pass e.g. --scheduler tcp://10.0.0.5:8786 (printed by `dask scheduler`)")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise invalid("workers", workers, "an integer >= 1", "pass e.g. --workers 2 (one per free core)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise invalid("retries", retries, "an integer >= 0")
        if torch_threads is not None and (isinstance(torch_threads, bool) or not isinstance(torch_threads, int)
                                          or torch_threads < 1):
            raise invalid("torch_threads", torch_threads, "an integer >= 1 or None")
        distributed = _import_distributed()
        self.retries = retries
        self.torch_threads = torch_threads
        self._cluster: Any = None
        if workers is not None:
            # Loopback only, no dashboard, processes (torch and the GIL), one thread each (one task per core).
            # Dask keeps a small HTTP server (/health) even without a dashboard: on loopback, on a free port
            # (its default, 8787, may be another user's).
            self._cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.ERROR)
            self.address = self._cluster.scheduler_address
        else:
            self.address = scheduler
        try:
            self.client = distributed.Client(self._cluster if self._cluster is not None else scheduler,
                                             timeout=connect_timeout, set_as_default=False)
        except OSError as exc:  # TimeoutError and connection refusals are OSErrors
            self._close_cluster()
            raise invalid("scheduler", scheduler, "the address of a running Dask scheduler",
                          f"start one (`dask scheduler`) or check the address and firewall; the connection "
                          f"failed with {type(exc).__name__}: {exc}") from None
        try:
            self.client.wait_for_workers(1, timeout=connect_timeout)
        except (TimeoutError, OSError):
            self.close()
            raise invalid("scheduler", scheduler, "a scheduler with at least one worker",
                          f"start workers with `dask worker {scheduler} --nthreads 1` (no worker joined within "
                          f"{connect_timeout:g} s)") from None
        self._checked: set[str] = set()  # folders every worker was seen to reach
        self._version_checked = False

    # ----------------------------------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for the progress log: where tasks run."""
        n = len(self.client.scheduler_info().get("workers", {}))
        kind = "local cluster on 127.0.0.1" if self._cluster is not None else f"cluster at {self.address}"
        return f"Dask {kind}: {n} worker(s), {self.retries} retries per task"

    def _preflight(self, tasks: Sequence[Task]) -> None:
        """Fail early, naming the fix, when a worker lacks dpaudit or cannot see the profile's folders."""
        paths: set[str] = set()
        for task in tasks:
            out_dir = getattr(task, "out_dir", None)
            data = getattr(task, "data", None)
            paths.update(p for p in (out_dir, getattr(data, "data_dir", None)) if p)
        paths -= self._checked
        if not paths and self._version_checked:
            return
        from dpaudit import __version__

        answers = self.client.run(_worker_check, sorted(paths))
        for worker, (version, missing) in sorted(answers.items()):
            if version != __version__:
                raise MissingDependencyError(
                    f"worker {worker} imports dpaudit {version or '(not installed)'}, this process {__version__}. "
                    f"Fix: install dpaudit {__version__} in every worker's environment (pip install "
                    f"\"dpaudit[distributed]=={__version__}\") and restart the workers.")
            if missing:
                raise invalid("out/data_dir", missing[0], f"a folder that worker {worker} can see at the same path",
                              "put the profile folder (--out) and --data-dir on a file system shared by every "
                              "worker, mounted at the same path")
        self._checked |= paths
        self._version_checked = True

    def map(self, tasks: Sequence[Task], on_done: Callable[[Task, Any], None]) -> None:
        """Submit every task; call ``on_done(task, result)`` in this thread as each one completes.

        Raises
        ------
        TaskFailedError
            After every other task has finished (and been handed to ``on_done``), naming each task that still
            failed after its retries and why.
        """
        distributed = _import_distributed()
        tasks = list(tasks)
        if not tasks:
            return
        self._preflight(tasks)
        by_key: dict[str, Task] = {}
        futures = []
        run_id = uuid.uuid4().hex[:8]  # a fresh key per attempt: never a stale erred future of an earlier run
        for task in tasks:
            submitted = task
            if self.torch_threads is not None:
                # threads is a location field: the task key (and the store entry) stay those of `task`. Every task
                # with the field gets it (training, the membership audit's training, the federated section).
                submitted = with_threads(task, self.torch_threads)
            fut = self.client.submit(_run_task, submitted, self.torch_threads, key=f"dpaudit-{task.key()}-{run_id}",
                                     retries=self.retries, pure=False)
            by_key[fut.key] = task
            futures.append(fut)
        failures: list[tuple[Task, str]] = []
        finished = 0
        try:
            for fut in distributed.as_completed(futures, loop=self.client.loop):
                task = by_key[fut.key]
                if fut.status == "finished":
                    result = fut.result()
                    fut.release()  # the driver holds the result now; the worker may drop it
                    on_done(task, result)
                    finished += 1
                elif fut.cancelled():
                    failures.append((task, "cancelled (the scheduler lost it)"))
                else:
                    exc = fut.exception()
                    failures.append((task, f"{type(exc).__name__}: {exc}"))
        finally:
            # On Ctrl-C or an error in on_done, do not leave work running on a shared cluster.
            pending = [f for f in futures if not f.done()]
            if pending:
                self.client.cancel(pending)
        if failures:
            listed = "; ".join(f"{t.describe()}: {_clip(why)}" for t, why in failures[:5])
            more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
            raise TaskFailedError(
                f"{len(failures)} of {len(tasks)} task(s) failed on the Dask cluster after {self.retries} "
                f"retries (a worker that died counts as a failure after Dask's own re-scheduling): {listed}{more}. "
                f"The other {finished} result(s) are stored in the profile folder's tasks/. Fix: remove the "
                "cause and re-run the same command: only the failed and unfinished tasks run again.")

    def close(self) -> None:
        """Disconnect; shut the local cluster down (a remote cluster keeps running)."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        self._close_cluster()

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS - 3] + "..."


def make_executor(scheduler: str | None = None, workers: int | None = None, *, threads: int | None = None,
                  **kwargs: Any) -> Any:
    """The executor the CLI flags ask for: a :class:`DaskExecutor` for ``--scheduler``/``--workers``, else
    :func:`dpaudit.audit.profile.executor.default_executor` (one worker process per idle core when at least two
    are idle, else in process; in process with ``--threads N``).

    ``--scheduler`` and ``--workers`` are mutually exclusive (a :class:`~dpaudit.errors.ConfigError` says so).
    """
    if scheduler is None and workers is None:
        return default_executor(threads)
    if scheduler is not None and workers is not None:
        raise invalid("--scheduler/--workers", f"--scheduler {scheduler} --workers {workers}",
                      "used one at a time", "pass --scheduler to use an existing cluster or --workers N to start "
                      "a local one, not both")
    return DaskExecutor(scheduler=scheduler, workers=workers, **kwargs)

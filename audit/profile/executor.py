"""Where the profile's tasks run (:class:`Executor`, :class:`InProcessExecutor`) and where their results are kept
(:class:`TaskStore` in ``DIR/tasks/``, so an interrupted profile resumes and a finished task never runs again).

A distributed executor (:class:`dpaudit.audit.profile.distributed.DaskExecutor`) implements the same two methods.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dpaudit.audit.profile.schema import StageTime
from dpaudit.audit.profile.tasks import Task
from dpaudit.codec import encode, from_plain
from dpaudit.errors import ConfigError

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


class TaskStore:
    """Finished task results in ``DIR/tasks/<key>.json`` (task configuration and result), written atomically.

    A result is reused only when the stored task configuration equals the task's (the key is a hash of it; the
    comparison guards against collisions and hand edits).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root) / "tasks"

    def _path(self, task: Task) -> Path:
        return self.root / f"{task.key()}.json"

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
            return from_plain(task.result_type, data.get("result"))
        except ConfigError:
            return None

    def put(self, task: Task, result: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(task)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        payload = {"kind": task.stage, "task": task.identity(), "result": encode(result)}  # type: ignore[attr-defined]
        tmp.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)


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



"""What tests/test_executor.py and tests/test_distributed.py share: the tiny profile both run, how two profiles are
compared (results only, not the run's timings), and probe tasks (the Task protocol without the cost of training)."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dpaudit.audit.profile import TaskStore
from dpaudit.audit.profile.schema import results_json

# The tiny profile of tests/test_profile.py: smallcnn on 60 demo images of 16 px, one epoch, 6 attacked images.
TINY = dict(dataset="demo", image_size=16, max_images=60, arch="smallcnn", epsilons=(8.0,), non_private=True,
            seeds=1, epochs=1, batch_size=8, attack_images=6, attack_epochs=1)
#: What two runs of one configuration must agree on (the profile's JSON without when, where and how fast they ran).
results = results_json


@dataclass(frozen=True)
class ProbeResult:
    index: int
    square: int


@dataclass(frozen=True)
class ProbeTask:
    """Records each attempt in ``folder``; ``kill`` ends its own worker process once (after ``wait_for`` other
    results are stored), ``fail`` always raises ``error``."""

    stage: ClassVar[str] = "probe"
    result_type: ClassVar[type] = ProbeResult

    index: int
    folder: str
    kill: bool = False
    fail: bool = False
    wait_for: int = 0
    error: type[Exception] = RuntimeError

    def identity(self) -> dict:
        return {"index": self.index, "kill": self.kill, "fail": self.fail}

    def key(self) -> str:
        return f"probe-{self.index}"

    def describe(self) -> str:
        return f"probe {self.index}"

    def run(self) -> ProbeResult:
        folder = Path(self.folder)
        (folder / f"attempt-{self.index}-{uuid.uuid4().hex}").touch()
        marker = folder / "killed"
        if self.kill and not marker.exists():
            # Die only after the other tasks' results are in the driver's store (at most 400 polls): the marker
            # lists the tasks already stored, which must never run again.
            for _ in range(400):
                stored = sorted(p.stem for p in (folder / "tasks").glob("probe-*.json"))
                if len(stored) >= self.wait_for:
                    break
                time.sleep(0.05)
            marker.write_text(json.dumps(stored))
            os._exit(1)  # the worker process dies mid-task, as on an out-of-memory kill
        if self.fail:
            raise self.error(f"probe {self.index} always fails")
        time.sleep(0.05)
        return ProbeResult(self.index, self.index ** 2)


@dataclass(frozen=True)
class FileTask(ProbeTask):
    """A probe whose result names a file in the profile folder (as a training run names its checkpoint)."""

    def files(self, result: ProbeResult) -> tuple[str, ...]:
        return (f"out/{self.index}.bin",)


def attempts(folder: Path, index: int) -> int:
    """How many times the probe ``index`` started in ``folder``."""
    return len(list(folder.glob(f"attempt-{index}-*")))


def map_into_store(executor, tasks, folder: Path) -> TaskStore:  # type: ignore[no-untyped-def]
    """Run ``tasks`` on ``executor``, each result stored in ``folder``'s task store as it arrives."""
    store = TaskStore(folder)
    executor.map(tasks, lambda task, result: store.put(task, result))
    return store

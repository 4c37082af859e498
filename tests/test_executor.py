"""The local worker processes of ``dpaudit profile`` (:class:`LocalProcessExecutor`): when they are used, the same
results as in process with one thread, and what happens when a task fails or a worker dies.

The reference for "the same results" is the in-process executor with one torch thread (each worker runs one task
with one thread): the two ``profile.json`` files must agree field for field once the fields that describe the run
(timestamps, durations, the output folder in the command line) are removed, and the weights bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from child_process import sigint_as_default
from probe_tasks import TINY, FileTask, ProbeResult, ProbeTask, map_into_store, results
from typer.testing import CliRunner

import dpaudit.runtime
from dpaudit.audit.profile import InProcessExecutor, TaskStore, run_profile
from dpaudit.audit.profile.distributed import make_executor
from dpaudit.audit.profile.executor import LocalProcessExecutor, TaskFailedError
from dpaudit.audit.profile.schema import Profile, ProfileConfig
from dpaudit.cli.main import app
from dpaudit.errors import ConfigError

TINY_ARGS = ["--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn", "--epsilons",
             "8", "--seeds", "1", "--epochs", "1", "--batch-size", "8", "--attack-images", "6", "--attack-epochs",
             "1", "--no-render", "--json"]
@pytest.mark.parametrize("idle, threads, kind, workers", [
    (1, None, InProcessExecutor, None),       # one idle core: this process
    (2, None, LocalProcessExecutor, 2),       # one worker process per idle core
    (2, 1, InProcessExecutor, None),          # --threads pins the run to this process
    (2, 2, InProcessExecutor, None),
])
def test_default_executor_follows_the_idle_cores_unless_threads_are_pinned(monkeypatch, idle, threads, kind,
                                                                          workers) -> None:
    monkeypatch.setattr(dpaudit.runtime, "idle_cores", lambda: idle)
    ex = make_executor(None, None, threads=threads)
    assert type(ex) is kind and getattr(ex, "workers", None) == workers
    ex.close()  # no process was started: they start at the first map


def test_workers_that_do_not_fit_in_memory_run_in_this_process(monkeypatch, tmp_path) -> None:
    import dpaudit.audit.profile.executor as executor

    assert 1 <= executor.workers_that_fit(2) <= 2  # this machine: at least one fits
    monkeypatch.setattr(executor, "workers_that_fit", lambda wanted: 1)
    tasks = [ProbeTask(i, str(tmp_path)) for i in range(3)]
    with LocalProcessExecutor(2) as ex:
        store = map_into_store(ex, tasks, tmp_path)
        assert ex._pool is None  # no process was started
    assert all(store.get(t) == ProbeResult(t.index, t.index ** 2) for t in tasks)


def test_bad_worker_count_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        LocalProcessExecutor(0)


def test_cli_default_runs_worker_processes_with_the_results_of_one_thread(monkeypatch, tmp_path) -> None:
    import torch

    local_dir, pool_dir = tmp_path / "local", tmp_path / "pool"
    local = run_profile(ProfileConfig(**TINY), local_dir, executor=InProcessExecutor(), threads=1)
    monkeypatch.setattr(dpaudit.runtime, "idle_cores", lambda: 2)
    res = CliRunner().invoke(app, ["profile", "--out", str(pool_dir), *TINY_ARGS])
    assert res.exit_code == 0, res.output
    assert "2 worker processes, one torch thread each" in res.stderr
    assert json.loads(res.stdout)["profile"] == str(pool_dir / "profile.json")
    pooled = Profile.from_json((pool_dir / "profile.json").read_text())
    assert results(pooled) == results(local)
    for t in local.train:
        a = torch.load(local_dir / t.checkpoint, weights_only=True)["state_dict"]
        b = torch.load(pool_dir / t.checkpoint, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), t.checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Failures: probe tasks (tests/probe_tasks.py: the Task protocol without the cost of training)
# ---------------------------------------------------------------------------------------------------------------


def test_a_failing_task_raises_its_own_error_after_the_others_are_stored(tmp_path) -> None:
    good = [ProbeTask(i, str(tmp_path)) for i in range(3)]
    bad = ProbeTask(7, str(tmp_path), fail=True, error=ConfigError)
    with LocalProcessExecutor(2) as ex, pytest.raises(ConfigError, match="probe 7 always fails"):
        map_into_store(ex, [bad, *good], tmp_path)
    store = TaskStore(tmp_path)
    assert all(store.get(t) == ProbeResult(t.index, t.index ** 2) for t in good)
    assert store.get(bad) is None


def test_a_killed_worker_loses_no_finished_result_and_names_the_fix(tmp_path) -> None:
    others = [ProbeTask(i, str(tmp_path)) for i in range(4)]
    killer = ProbeTask(99, str(tmp_path), kill=True, wait_for=len(others))
    ex = LocalProcessExecutor(2)
    with pytest.raises(TaskFailedError) as info:
        map_into_store(ex, [killer, *others], tmp_path)
    message = " ".join(str(info.value).split())
    assert "a worker process died" in message and "re-run the same command" in message
    assert "--threads 1" in message
    store = TaskStore(tmp_path)
    assert all(store.get(t) == ProbeResult(t.index, t.index ** 2) for t in others)
    assert ex._pool is None  # the broken pool was shut down


def test_a_stored_result_is_reused_only_while_the_files_it_names_are_unchanged(tmp_path) -> None:
    task = FileTask(3, str(tmp_path))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "3.bin").write_bytes(b"the weights it was computed with")
    store = TaskStore(tmp_path)
    store.put(task, task.run())
    assert store.get(task) == ProbeResult(3, 9)
    assert TaskStore(tmp_path).get(task) == ProbeResult(3, 9)  # the digest is stored with the result
    (tmp_path / "out" / "3.bin").write_bytes(b"another configuration's weights")  # same path, other file
    assert store.get(task) is None
    (tmp_path / "out" / "3.bin").unlink()
    assert store.get(task) is None
    # An entry written before digests were stored cannot show that its files match: it runs again.
    (tmp_path / "out" / "3.bin").write_bytes(b"the weights it was computed with")
    entry = store.root / f"{task.key()}.json"
    data = json.loads(entry.read_text())
    assert data["files"] == {"out/3.bin": hashlib.sha256(b"the weights it was computed with").hexdigest()}
    del data["files"]
    entry.write_text(json.dumps(data))
    assert store.get(task) is None
    # A task that names no files needs no digests.
    plain = ProbeTask(4, str(tmp_path))
    store.put(plain, plain.run())
    assert store.get(plain) == ProbeResult(4, 16)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("signame", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow),
                                     pytest.param("SIGKILL", marks=pytest.mark.slow)])
def test_a_stopped_profile_leaves_no_worker_process_running(tmp_path, signame: str) -> None:
    """``dpaudit profile`` stopped while its worker processes train (SIGTERM from ``kill`` or a batch scheduler,
    SIGINT, or SIGKILL, which the parent cannot catch) leaves none of them behind: the parent stops them, and a
    worker whose parent is gone ends itself."""
    import signal
    import subprocess
    import sys

    # The real command line, with two idle cores so that the tasks run in worker processes.
    code = ("import sys, dpaudit.runtime as r; r.idle_cores = lambda: 2; from dpaudit.cli.main import main; "
            "sys.argv = ['dpaudit', *sys.argv[1:]]; main()")
    args = [a for a in TINY_ARGS if a != "--json"]
    args[args.index("--epochs") + 1] = "50"  # trains long enough to be stopped mid-task
    proc = subprocess.Popen([sys.executable, "-c", code, "profile", *args, "--out", str(tmp_path / "p")],
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    workers: list[int] = []
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if " train 0/" in line:
                break
        assert any("2 worker processes" in x for x in lines), "".join(lines)
        for _ in range(300):  # bounded polls while the pool starts its two workers
            if len(_children(proc.pid)) >= 2:
                break
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers
        time.sleep(1.0)  # the workers are importing torch or training
        proc.send_signal(getattr(signal, signame))
        proc.communicate(timeout=30)
        if signame != "SIGKILL":
            assert proc.returncode != 0
        # Bounded work, not time: the parent stops them at once; the orphans' watch polls once a second.
        for _ in range(100):
            alive = [w for w in workers if _running(w)]
            if not alive:
                break
            time.sleep(0.1)
        assert not alive, f"{signame} left {alive} running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:  # a failing check leaves nothing behind either
            if _running(w):
                os.kill(w, 9)


def test_the_default_in_process_executor_runs_each_task_on_one_thread(monkeypatch) -> None:
    """With fewer than two idle cores at the start, tasks run in this process on one torch thread (the worker
    processes' results), not on the cores idle at each task's own start: a run's MCC depended on the load."""
    from dpaudit.audit.profile.executor import InProcessExecutor, LocalProcessExecutor, default_executor
    from dpaudit.cli.profile_cmd import one_thread_in_process

    monkeypatch.setattr(dpaudit.runtime, "idle_cores", lambda: 1)
    ex = default_executor(None)
    assert type(ex) is InProcessExecutor and one_thread_in_process(ex, None) == 1
    assert one_thread_in_process(InProcessExecutor(), 2) == 2  # --threads as given
    assert one_thread_in_process(LocalProcessExecutor(2), None) is None  # workers: one thread each already

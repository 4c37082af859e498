"""The Dask executor: the same profile results as in process, retries, a killed worker, missing dask, the CLI flags.

Everything runs on a ``LocalCluster`` on this machine, listening on 127.0.0.1 only. The reference for "the same
results" is the in-process executor (the default path, tested on its own in ``tests/test_profile.py``): the two
``profile.json`` files must agree field for field once the fields that describe the run rather than its results
(timestamps, durations, the output folder in the command line) are removed. The model weights are compared
bit for bit as well.
"""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("distributed")

from probe_tasks import TINY, ProbeResult, ProbeTask, attempts, map_into_store, results
from typer.testing import CliRunner

from dpaudit.audit.profile import InProcessExecutor, TaskStore, run_profile
from dpaudit.audit.profile.distributed import DaskExecutor, TaskFailedError, make_executor
from dpaudit.audit.profile.schema import Profile, ProfileConfig
from dpaudit.cli.main import app
from dpaudit.errors import ConfigError, MissingDependencyError


@pytest.fixture(scope="module")
def executor():
    """One loopback LocalCluster with 2 single-threaded worker processes, shared by this module's tests."""
    with DaskExecutor(workers=2, retries=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def both_profiles(executor, tmp_path_factory):
    config = ProfileConfig(**TINY)
    local_dir = tmp_path_factory.mktemp("inprocess")
    dask_dir = tmp_path_factory.mktemp("dask")
    # One torch thread in process, as on each single-threaded Dask worker: results depend on the thread count in
    # the last bits (documented), and an unpinned run takes the idle cores, which vary with the machine's load.
    local = run_profile(config, local_dir, executor=InProcessExecutor(), threads=1)
    seen: list[tuple[str, int, int]] = []
    remote = run_profile(config, dask_dir, executor=executor,
                         progress=lambda stage, done, total, msg: seen.append((stage, done, total)))
    return local, local_dir, remote, dask_dir, seen


def test_local_cluster_is_loopback_only_one_thread_per_worker_no_dashboard(executor) -> None:
    from urllib.error import HTTPError
    from urllib.parse import urlsplit
    from urllib.request import urlopen

    assert urlsplit(executor.address).hostname == "127.0.0.1"
    nthreads = executor.client.nthreads()
    assert len(nthreads) == 2 and set(nthreads.values()) == {1}
    assert {urlsplit(w).hostname for w in nthreads} == {"127.0.0.1"}
    # Dask keeps a small HTTP server for /health; it listens on loopback too, and serves no dashboard.
    scheduler = executor._cluster.scheduler
    assert scheduler.http_server.address == "127.0.0.1"
    with pytest.raises(HTTPError) as info:
        urlopen(f"http://127.0.0.1:{scheduler.http_server.port}/status", timeout=10)
    assert info.value.code == 404


def test_same_profile_json_in_process_and_on_a_local_cluster(both_profiles) -> None:
    local, _, remote, dask_dir, _ = both_profiles
    assert results(remote) == results(local)
    # profile.json on disk says the same (it is what the report is rendered from).
    on_disk = Profile.from_json((dask_dir / "profile.json").read_text())
    assert results(on_disk) == results(local)
    assert [s.tasks_run for s in remote.stages] == [s.tasks_run for s in local.stages]


def test_workers_write_bit_identical_checkpoints(both_profiles) -> None:
    import torch

    local, local_dir, _, dask_dir, _ = both_profiles
    for t in local.train:
        a = torch.load(local_dir / t.checkpoint, weights_only=True)["state_dict"]
        b = torch.load(dask_dir / t.checkpoint, weights_only=True)["state_dict"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), t.checkpoint


def test_progress_is_reported_as_each_task_completes(both_profiles) -> None:
    seen = both_profiles[4]
    train = [(d, n) for s, d, n in seen if s == "train"]
    assert train == [(0, 2), (1, 2), (2, 2)]  # the start, then one line per finished task
    assert [d for s, d, _ in seen if s == "attack"] == [0, 1, 2]


def test_cli_scheduler_flag_gives_the_sameresults(both_profiles, executor, tmp_path) -> None:
    local = both_profiles[0]
    args = ["profile", "--out", str(tmp_path / "p"), "--dataset", "demo", "--image-size", "16", "--max-images",
            "60", "--arch", "smallcnn", "--epsilons", "8", "--seeds", "1", "--epochs", "1", "--batch-size", "8",
            "--attack-images", "6", "--attack-epochs", "1", "--no-render", "--json", "--scheduler", executor.address]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["profile"] == str(tmp_path / "p" / "profile.json")
    assert "Dask cluster at tcp://127.0.0.1" in res.stderr
    assert results(Profile.from_json((tmp_path / "p" / "profile.json").read_text())) == results(local)


# ---------------------------------------------------------------------------------------------------------------
# Failures: probe tasks (tests/probe_tasks.py: the Task protocol without the cost of training)
# ---------------------------------------------------------------------------------------------------------------


def test_a_killed_worker_loses_no_finished_result(executor, tmp_path) -> None:
    others = [ProbeTask(i, str(tmp_path)) for i in range(6)]
    killer = ProbeTask(99, str(tmp_path), kill=True, wait_for=len(others))
    store = map_into_store(executor, [killer, *others], tmp_path)
    # The run completed: Dask re-scheduled the killed task, and every result is in the store.
    for task in [killer, *others]:
        assert store.get(task) == ProbeResult(task.index, task.index ** 2)
    assert attempts(tmp_path, 99) == 2
    stored_before_kill = json.loads((tmp_path / "killed").read_text())
    assert stored_before_kill  # the killer died after at least one other task had been stored
    for task in others:
        if task.key() in stored_before_kill:
            assert attempts(tmp_path, task.index) == 1, task.key()
    # A finished task is never run again: a second pass over the store runs nothing.
    pending = [t for t in [killer, *others] if store.get(t) is None]
    assert pending == []
    executor.client.wait_for_workers(2, timeout=30)  # the nanny restarts the dead worker


def test_a_failing_task_is_retried_then_reported_without_losing_the_others(executor, tmp_path) -> None:
    good = [ProbeTask(i, str(tmp_path)) for i in range(3)]
    bad = ProbeTask(7, str(tmp_path), fail=True)
    with pytest.raises(TaskFailedError) as info:
        map_into_store(executor, [bad, *good], tmp_path)
    message = str(info.value)
    assert "1 of 4 task(s) failed" in message and "probe 7: RuntimeError: probe 7 always fails" in message
    assert "3 result(s) are stored" in message and "re-run the same command" in message
    assert attempts(tmp_path, 7) == 1 + executor.retries  # the first attempt and two retries
    store = TaskStore(tmp_path)
    assert all(store.get(t) == ProbeResult(t.index, t.index ** 2) for t in good)
    assert store.get(bad) is None


# ---------------------------------------------------------------------------------------------------------------
# Configuration errors, missing dask, the CLI flags
# ---------------------------------------------------------------------------------------------------------------


def test_missing_dask_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "dpaudit\[distributed\]"'):
        DaskExecutor(workers=1)
    res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "p"), "--workers", "2"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "needs dask.distributed, which is not installed" in text and 'pip install "dpaudit' in text
    assert "Traceback" not in res.output
    assert not (tmp_path / "p" / "profile.json").exists()


def test_cli_missing_dask_shows_the_extra_verbatim(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "p"), "--workers", "2"])
    assert 'pip install "dpaudit[distributed]"' in " ".join(res.output.split())


@pytest.mark.parametrize("args, message", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "--scheduler/--workers must be used one at a time"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--scheduler", "127.0.0.1:8786"], "scheduler must be a scheduler address PROTOCOL://HOST:PORT"),
])
def test_cli_flag_errors(tmp_path, args, message) -> None:
    res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "p"), *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_unreachable_scheduler_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="the address of a running Dask scheduler"):
        DaskExecutor(scheduler="tcp://127.0.0.1:9", connect_timeout=1)


def test_no_flags_run_in_process() -> None:
    assert isinstance(make_executor(None, None), InProcessExecutor)


"""Output folders: checked before any work, never silently replaced by another configuration's results, and a
failed write is one line naming --out, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.errors import DpAuditError
from dpaudit.outputs import refuse_replacing, writable_dir

runner = CliRunner()
TRAIN = ["train", "--dataset", "demo", "--max-images", "120", "--image-size", "16", "--arch", "smallcnn",
         "--width", "4", "--epochs", "1", "--batch-size", "8", "--threads", "1"]


def _no_data(*args: object, **kwargs: object) -> None:
    raise AssertionError("the data were loaded before --out was checked")


def test_writable_dir_creates_the_folder_and_names_out_when_it_cannot(tmp_path: Path) -> None:
    assert writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DpAuditError, match=r"^out must be a folder that can be created and written to"):
        writable_dir(tmp_path / "file" / "run")


def test_writable_dir_tolerates_other_processes_making_and_removing_the_same_parents(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile's worker processes each make their own checkpoints/<run> folder: a parent another process makes
    between our look and our mkdir is no error (and not ours to remove), a parent another process removes under
    us is made again (was: '--out must be a folder ... (File exists)' from one worker)."""
    real_mkdir = Path.mkdir
    parent = tmp_path / "pool" / "checkpoints"
    events = []

    def racing_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == parent and not events:  # another worker wins the race for the shared parent
            real_mkdir(self)
            events.append("made by the other")
            raise FileExistsError(17, "File exists", str(self))
        if self.parent == parent and events == ["made by the other"]:  # ... and another run's check removes it
            events.append("removed by the other")
            self.parent.rmdir()
            raise FileNotFoundError(2, "No such file or directory", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert writable_dir(parent / "nonprivate-seed0").is_dir()
    assert events == ["made by the other", "removed by the other"]


def _make_run_folder(base: str, i: int) -> None:
    writable_dir(Path(base) / "checkpoints" / f"run{i}")


def test_writable_dir_in_many_processes_at_once(tmp_path: Path) -> None:
    """The real thing: processes making sibling folders under one missing parent at the same time."""
    import concurrent.futures
    import multiprocessing

    for attempt in range(5):
        base = tmp_path / f"pool{attempt}"
        with concurrent.futures.ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as ex:
            list(ex.map(_make_run_folder, [str(base)] * 8, range(8)))
        assert sorted(p.name for p in (base / "checkpoints").iterdir()) == [f"run{i}" for i in range(8)]


@pytest.mark.parametrize("command", [
    [*TRAIN, "--epsilon", "8"],
    ["attack", "--arch", "smallcnn", "--dataset", "demo", "--sigmas", "0", "--n-images", "2"],
    ["profile", "--dataset", "demo", "--epsilons", "8", "--seeds", "1", "--epochs", "1", "--max-images", "120"],
])
def test_an_unwritable_out_fails_before_any_work(command: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import dpaudit.audit.profile.run as run
    import dpaudit.audit.train as train
    import dpaudit.data as data

    for module, name in ((train, "load_data"), (data, "load_splits"), (run, "_data_spec")):
        monkeypatch.setattr(module, name, _no_data)
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, [*command, "--out", str(tmp_path / "file" / "run")])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: --out must be a folder that can be created and written to") and "Fix: pass --out" in line


def test_a_failed_checkpoint_write_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a write that fails (no space, a folder made read-only while training ran) as a
    RuntimeError ("enforce fail at inline_container.cc"); it must reach the user as one line naming --out."""
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:747] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", fail)
    res = runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "--out" in res.output and "model.pt can be written" in res.output
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_train_refuses_to_replace_another_configuration(tmp_path: Path) -> None:
    out = str(tmp_path / "r")
    assert runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", out]).exit_code == 0
    before = (tmp_path / "r" / "metrics.json").read_text()
    res = runner.invoke(app, [*TRAIN, "--epsilon", "2", "--out", out])
    assert res.exit_code == 2, res.output
    assert "another configuration" in res.output and "--overwrite" in res.output and "new --out" in res.output
    assert (tmp_path / "r" / "metrics.json").read_text() == before
    # The same configuration again (elsewhere it would write the same run) is no replacement; --overwrite is asked.
    assert runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", out]).exit_code == 0
    assert runner.invoke(app, [*TRAIN, "--epsilon", "2", "--out", out, "--overwrite"]).exit_code == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epsilon_target"] == 2


def test_profile_and_attack_refuse_a_folder_of_another_configuration(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import dpaudit.audit.profile.run as run
    import dpaudit.data as data

    monkeypatch.setattr(run, "_data_spec", _no_data)
    monkeypatch.setattr(data, "load_splits", _no_data)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "profile.json").write_text(json.dumps({"config": {"epsilons": [8.0]}, "decision": None}))
    res = runner.invoke(app, ["profile", "--dataset", "demo", "--epsilons", "2", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "already holds profile.json" in res.output and "--overwrite" in res.output
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ssim_error_cdf.png").write_bytes(b"")  # outputs without their record: another's
    res = runner.invoke(app, ["attack", "--arch", "smallcnn", "--dataset", "demo", "--sigmas", "0", "--out",
                              str(tmp_path / "a")])
    assert res.exit_code == 2 and "already holds ssim_error_cdf.png" in res.output


def test_same_profile_compares_the_configuration_and_the_limits() -> None:
    from dpaudit.audit.decision import Limit
    from dpaudit.audit.profile.run import same_profile
    from dpaudit.audit.profile.schema import ProfileConfig
    from dpaudit.codec import encode

    config = ProfileConfig(dataset="demo", epsilons=(8.0,))
    limits = (Limit(kind="rero", maximum=0.05),)
    stored = json.loads(json.dumps({"config": encode(config), "decision": {"limits": encode(limits)}}))
    assert same_profile(config, limits, stored)
    assert not same_profile(config, (), stored)  # the board's decision would be dropped
    assert not same_profile(ProfileConfig(dataset="demo", epsilons=(2.0,)), limits, stored)
    stored["config"]["task_defaults"] = ["lr"]  # which values were defaults is not what ran
    assert same_profile(config, limits, stored)


def test_refuse_replacing_accepts_an_empty_folder_and_overwrite(tmp_path: Path) -> None:
    refuse_replacing(tmp_path, "r.json", outputs=("x.pt",), same=lambda d: False, overwrite=False, what="w")
    (tmp_path / "x.pt").write_bytes(b"")
    refuse_replacing(tmp_path, "r.json", outputs=("x.pt",), same=lambda d: False, overwrite=True, what="w")
    with pytest.raises(DpAuditError, match=r"--out .* already holds x.pt"):
        refuse_replacing(tmp_path, "r.json", outputs=("x.pt",), same=lambda d: True, overwrite=False, what="w")


# ---------------------------------------------------------------------------------------------------------------
# A folder is one configuration's: reused results match their files, --overwrite replaces everything or nothing
# ---------------------------------------------------------------------------------------------------------------

PROFILE = ["profile", "--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn",
           "--epsilons", "8", "--no-non-private", "--seeds", "1", "--batch-size", "8", "--attack-images", "4",
           "--attack-epochs", "1", "--decoder", "strong", "--no-render", "--threads", "1", "--json"]


def _replaced(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (an option given twice is refused, not the last one taken)."""
    i = args.index(flag)
    return [*args[:i + 1], value, *args[i + 2:]]


def _checkpoint_mechanism(path: Path) -> tuple[float, int]:
    from dpaudit.checkpoint import load_checkpoint

    dp = load_checkpoint(path).dp
    return dp.noise_multiplier, dp.steps


def test_a_reused_task_result_matches_the_checkpoint_it_names(tmp_path: Path) -> None:
    """Two configurations run into one folder through the Python API (no --out check there): the second replaces
    checkpoints/eps8-seed0/model.pt, so the first one's stored training result no longer describes that file and
    its rerun trains (and attacks) again instead of reusing it."""
    from dpaudit.audit.profile import run_profile
    from dpaudit.audit.profile.schema import ProfileConfig

    tiny = dict(dataset="demo", image_size=16, max_images=60, arch="smallcnn", epsilons=(8.0,), non_private=False,
                seeds=1, batch_size=8, attack_images=4, attack_epochs=1, decoders=("strong",))
    first = run_profile(ProfileConfig(**tiny, epochs=1), tmp_path)
    weights = (tmp_path / first.train[0].checkpoint).read_bytes()
    run_profile(ProfileConfig(**tiny, epochs=2), tmp_path)  # the same checkpoint path, another model
    again = run_profile(ProfileConfig(**tiny, epochs=1), tmp_path)
    stages = {s.stage: s for s in again.stages}
    assert stages["train"].tasks_run == 1
    # The attack result is reused only against the very weights it attacked (training here is bit-reproducible).
    same_weights = (tmp_path / again.train[0].checkpoint).read_bytes() == weights
    assert stages["attack"].tasks_reused == int(same_weights) and again.attacks == first.attacks
    t = again.train[0]
    assert _checkpoint_mechanism(tmp_path / t.checkpoint) == (t.noise_multiplier, t.steps)
    assert (t.noise_multiplier, t.steps) == (first.train[0].noise_multiplier, first.train[0].steps)


def test_overwrite_replaces_the_whole_folder_and_reuses_nothing_of_another_configuration(tmp_path: Path) -> None:
    """The sequence of a user's report: epochs 1, then epochs 2 --overwrite, then epochs 1 --overwrite again (all
    tasks were reused, against the epochs-2 checkpoint); and stale images and checkpoints left by --overwrite."""
    out = tmp_path / "p"
    (tmp_path / "p").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    res = runner.invoke(app, [*PROFILE, "--epochs", "1", "--include-images", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "images" / "reconstructions-eps8.png").is_file()
    res = runner.invoke(app, [*_replaced(PROFILE, "--epsilons", "2"), "--epochs", "2", "--out", str(out)])
    assert res.exit_code == 2 and "another configuration" in res.output
    res = runner.invoke(app, [*_replaced(PROFILE, "--epsilons", "2"), "--epochs", "2", "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (out / "images").exists() and not (out / "checkpoints" / "eps8-seed0").exists()
    assert not list(out.glob(".dpaudit-replaced*")) and (out / "notes.txt").read_text() == "the user's own file"
    res = runner.invoke(app, [*PROFILE, "--epochs", "1", "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    stages = {s["stage"]: s for s in json.loads(res.stdout)["stages"]}
    assert all(s["tasks_reused"] == 0 for s in stages.values())
    prof = json.loads((out / "profile.json").read_text())
    (t,) = prof["train"]
    assert _checkpoint_mechanism(out / t["checkpoint"]) == (t["noise_multiplier"], t["steps"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["eps8-seed0"]
    # The same configuration again resumes (every task reused), --overwrite or not.
    res = runner.invoke(app, [*PROFILE, "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert all(s["tasks_run"] == 0 for s in json.loads(res.stdout)["stages"] if s["stage"] != "data")


def test_an_interrupted_run_owns_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's folder refuses another configuration from the start, not only once profile.json is written."""
    import dpaudit.audit.profile as profile

    def interrupted(config, out_dir, **kwargs):
        (Path(out_dir) / "tasks").mkdir(parents=True)
        (Path(out_dir) / "tasks" / "train-eps8-seed0-0.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(profile, "run_profile", interrupted)
    out = str(tmp_path / "p")
    res = runner.invoke(app, [*PROFILE, "--epochs", "1", "--out", out])
    assert res.exit_code == 130
    res = runner.invoke(app, [*PROFILE, "--epochs", "2", "--out", out])
    assert res.exit_code == 2 and "already holds tasks of another configuration, an unfinished run" in res.output
    assert (tmp_path / "p" / "tasks" / "train-eps8-seed0-0.json").is_file()


def test_a_failed_write_puts_the_previous_outputs_back_and_names_out(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import dpaudit.audit.train as train

    out = tmp_path / "r"
    assert runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args: object, **kwargs: object) -> None:  # the last file written: a full disk, an immutable file
        raise PermissionError(13, "Permission denied", str(out / "training_curve.png"))

    monkeypatch.setattr(train, "_plot_curve", fail)
    res = runner.invoke(app, [*TRAIN, "--epsilon", "2", "--out", str(out), "--overwrite"])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: --out must be a folder where training_curve.png can be written")
    assert "previous outputs were put back" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # model.pt and metrics.json both epsilon 8


def test_attack_overwrite_leaves_no_stale_reconstructions(tmp_path: Path) -> None:
    attack = ["attack", "--arch", "smallcnn", "--dataset", "demo", "--sigmas", "0", "--n-images", "2",
              "--image-size", "16", "--threads", "1", "--out", str(tmp_path / "a")]
    assert runner.invoke(app, [*attack, "--save-images"]).exit_code == 0
    assert (tmp_path / "a" / "best_reconstructions.png").is_file()
    res = runner.invoke(app, [*attack, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "a" / "best_reconstructions.png").exists() and (tmp_path / "a" / "attack.json").is_file()


def test_claim_moves_aside_only_dpaudit_outputs_and_restores_a_leftover(tmp_path: Path) -> None:
    from dpaudit.outputs import BACKUP, MARKER, claim_folder

    def claim(config: str, overwrite: bool = False):
        return claim_folder(tmp_path, command="test", record="r.json", identity={"c": config},
                            outputs=("model.pt", "imgs", "report-*.pdf"), same=lambda d: d.get("c") == config,
                            overwrite=overwrite, what="w")

    with claim("a").writing():
        (tmp_path / "r.json").write_text(json.dumps({"c": "a"}))
        (tmp_path / "model.pt").write_text("a")
        (tmp_path / "report-x.pdf").write_text("a")
    (tmp_path / "mine.txt").write_text("user")
    b = claim("b", overwrite=True)
    with pytest.raises(KeyboardInterrupt), b.writing():  # killed mid-run: the backup stays
        (tmp_path / "model.pt").write_text("b")
        (tmp_path / "imgs").mkdir()
        raise KeyboardInterrupt
    assert (tmp_path / BACKUP / "model.pt").read_text() == "a"
    assert json.loads((tmp_path / MARKER).read_text())["record"] == {"c": "b"}
    # Another configuration than the interrupted one: the earlier outputs come back first (then it is refused).
    with pytest.raises(DpAuditError, match=r"already holds r\.json, model\.pt, report-x\.pdf of another"):
        claim("c")
    assert not (tmp_path / BACKUP).exists() and not (tmp_path / "imgs").exists()
    assert (tmp_path / "model.pt").read_text() == "a" and (tmp_path / "mine.txt").read_text() == "user"
    assert json.loads((tmp_path / MARKER).read_text())["record"] == {"c": "a"}


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` (the marker included) with its bytes; None when the folder is not there."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def test_a_claim_changes_nothing_until_the_run_writes(tmp_path: Path) -> None:
    from dpaudit.outputs import MARKER, claim_folder

    def claim(folder: Path, config: str):
        return claim_folder(folder, command="test", record="r.json", identity={"c": config}, outputs=("model.pt",),
                            same=lambda d: d.get("c") == config, overwrite=False, what="w")

    new = tmp_path / "a" / "b"
    claim(new, "x")
    assert not (tmp_path / "a").exists()  # checked (created, probed, removed), not left behind
    with claim(new, "x").writing():
        (new / "model.pt").write_text("x")
        (new / "r.json").write_text(json.dumps({"c": "x"}))
    before = _snapshot(new)
    claim(new, "x")  # the same configuration again: claimed, the marker untouched until it writes
    assert _snapshot(new) == before
    assert json.loads((new / MARKER).read_text())["record"] == {"c": "x"}


@pytest.mark.parametrize("interrupt", [False, True])
def test_a_run_that_fails_before_writing_leaves_no_trace(tmp_path: Path, interrupt: bool) -> None:
    from dpaudit.errors import DataError
    from dpaudit.outputs import MARKER, claim_folder

    error = KeyboardInterrupt if interrupt else DataError

    def claim(folder: Path, config: str):
        return claim_folder(folder, command="test", record="r.json", identity={"c": config},
                            outputs=("model.pt", "imgs"), same=lambda d: d.get("c") == config, overwrite=False,
                            what="w")

    new = tmp_path / "new" / "run"
    with pytest.raises(error), claim(new, "x").writing():
        raise error("the dataset is not there")
    assert not (tmp_path / "new").exists()
    # A folder of this configuration (the marker and its outputs, and a user's file): as it was, marker included.
    done = tmp_path / "done"
    with claim(done, "x").writing():
        (done / "model.pt").write_text("x")
        (done / "r.json").write_text(json.dumps({"c": "x"}))
    (done / "mine.txt").write_text("user")
    before = _snapshot(done)
    if not interrupt:  # (an interruption keeps what it moved aside, for the same command to resume)
        with pytest.raises(error), claim(done, "x").writing():
            raise error("no GPU")
        assert _snapshot(done) == before
    # A marker-only folder of another configuration (an earlier run refused before it wrote): its marker stays.
    other = tmp_path / "other"
    other.mkdir()
    (other / MARKER).write_text(json.dumps({"command": "test", "record": {"c": "y"}}))
    before = _snapshot(other)
    with pytest.raises(error), claim(other, "x").writing():
        raise error("no GPU")
    assert _snapshot(other) == before
    # What a run wrote before it failed keeps its marker: it says whose the outputs are.
    with pytest.raises(error), claim(tmp_path / "half", "x").writing():
        (tmp_path / "half" / "imgs").mkdir()
        raise error("failed half-way")
    assert json.loads((tmp_path / "half" / MARKER).read_text())["record"] == {"c": "x"}


REFUSED_ATTACK = ["attack", "--arch", "smallcnn", "--dataset", "demo", "--image-size", "16", "--sigmas", "0", "--n-images", "2"]
REFUSED_PROFILE = ["profile", "--dataset", "demo", "--epsilons", "8", "--seeds", "1", "--epochs", "1", "--max-images", "120",
           "--image-size", "16", "--arch", "smallcnn", "--no-render"]


@pytest.mark.parametrize("command", [[*TRAIN, "--epsilon", "8"], REFUSED_ATTACK, REFUSED_PROFILE])
@pytest.mark.parametrize("fault", ["device", "dataset", "model"])
def test_a_refused_run_creates_and_changes_nothing_in_out(command: list[str], fault: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run refused with exit 2 (no GPU, a dataset that is not there, a --model file that is not there) leaves
    --out as it was: a new folder is not created, an existing one keeps its files and its marker byte for byte."""
    import dpaudit.audit.profile.run as run
    import dpaudit.audit.train as train
    import dpaudit.data as data

    if fault == "model" and command[0] != "attack":
        pytest.skip("--model is the attack's")
    for module, name in ((train, "load_data"), (data, "load_splits"), (run, "_data_spec")):
        monkeypatch.setattr(module, name, _no_data)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = tmp_path / "missing"
    args = {"device": ["--device", "cuda"], "model": ["--model", str(missing / "model.pt")],
            "dataset": ["--dataset", f"folder:{missing}"]}[fault]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / ".dpaudit-run.json").write_text(json.dumps({"command": command[0], "record": {"earlier": 1}}))
    (existing / "notes.txt").write_text("user")
    before = _snapshot(existing)
    for out in (tmp_path / "new" / "run", existing):
        res = runner.invoke(app, [*command, *args, "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: ") and "Traceback" not in res.output
    assert not (tmp_path / "new").exists()
    assert _snapshot(existing) == before


def test_a_refused_train_leaves_an_existing_run_folder_as_it_was(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same configuration again, refused (no GPU; a failure while loading the data, inside the run): the
    earlier model.pt, metrics.json and marker stay exactly as they were (no marker saying cuda beside a CPU model)."""
    import dpaudit.audit.train as train
    from dpaudit.errors import DataError

    out = tmp_path / "r"
    assert runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", str(out)]).exit_code == 0
    before = _snapshot(out)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = runner.invoke(app, [*TRAIN, "--epsilon", "8", "--device", "cuda", "--out", str(out)])
    assert res.exit_code == 2 and "--device" in res.output, res.output
    assert _snapshot(out) == before

    def fail(*args: object, **kwargs: object) -> None:
        raise DataError("the data could not be read. Fix: check the files.")

    monkeypatch.setattr(train, "load_data", fail)
    res = runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", str(out)])
    assert res.exit_code == 2 and "could not be read" in res.output, res.output
    assert _snapshot(out) == before


def test_a_refused_mia_audit_writes_no_out_file(tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    res = runner.invoke(app, ["mia", "audit", "--dataset", f"folder:{tmp_path / 'missing'}", "--epsilon", "8",
                              "--out", str(out)])
    assert res.exit_code == 2 and "is not an existing folder" in res.output, res.output
    assert not out.exists()

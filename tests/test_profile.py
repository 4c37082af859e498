"""The profile: configuration checks, the task store, resuming an interrupted profile, checkpoint reuse, the CLI.

A tiny profile (smallcnn, 16x16 demo images, a few dozen images, one epoch) runs end to end in seconds; the
numbers it produces are not checked for quality here (that is the job of the train, attack and bounds tests),
only that they flow unchanged from the tasks into profile.json and the PDF, and that nothing is run twice.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from dpaudit.audit.profile import (
    InProcessExecutor,
    TaskStore,
    plan_training,
    run_profile,
)
from dpaudit.audit.profile.schema import Profile, ProfileConfig
from dpaudit.audit.report import render_report
from dpaudit.cli.main import app
from dpaudit.errors import ConfigError

TINY = dict(dataset="demo", image_size=16, max_images=60, arch="smallcnn", epsilons=(8.0,), non_private=True,
            seeds=1, epochs=1, batch_size=8, attack_images=6, attack_epochs=1)


class _Interrupt(KeyboardInterrupt):
    pass


class CountingExecutor(InProcessExecutor):
    """Runs tasks in process, counts them by stage, and can simulate Ctrl-C after ``stop_after`` tasks."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.ran: list[str] = []
        self.stop_after = stop_after

    def map(self, tasks, on_done) -> None:
        for task in tasks:
            if self.stop_after is not None and len(self.ran) >= self.stop_after:
                raise _Interrupt
            self.ran.append(task.key())
            on_done(task, task.run())


@pytest.mark.parametrize("kwargs, field", [
    (dict(epsilons=(0.0, 8.0)), "epsilons"),
    (dict(epsilons=(-1.0,)), "epsilons"),
    (dict(epsilons=(float("inf"),)), "epsilons"),
    (dict(epsilons=(8.0, 8.0)), "epsilons"),
    (dict(epsilons=()), "epsilons"),
    (dict(seeds=0), "seeds"),
    (dict(kappas=(1.5,)), "kappa"),
    (dict(decoders=("strongest",)), "decoders"),
    (dict(connection="diagonal"), "connection"),
    (dict(image_size=4), "image_size"),
    (dict(records_per_patient=0), "records_per_patient"),
])
def test_config_rejects_bad_values(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=field):
        ProfileConfig(**kwargs)


def test_config_sorts_epsilons_and_reproduces_its_command() -> None:
    c = ProfileConfig(epsilons=(20, 1, 8, 1e9), kappas=(1e-3,))
    assert c.epsilons == (1.0, 8.0, 20.0, 1e9)
    assert c.levels == (1.0, 8.0, 20.0, 1e9, None)
    cmd = c.command("runs/x")
    assert "--epsilons 1,8,20,1e9" in cmd and "--kappa 0.001" in cmd and cmd.endswith("--out runs/x")
    assert ProfileConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("computed_on, flag", [
    ("cpu", "--device cpu"),
    ("cuda:1 (NVIDIA H200)", "--device cuda:1"),
    ("cuda (resolved on each worker)", "--device cuda"),
    ("auto (resolved on each worker)", None),  # the default: nothing to add
    ("cpu (this invocation; 2 of 5 training and attack results were reused from an earlier one and ran where it "
     "ran)", None),  # the reused ones may have run elsewhere
    (None, None),  # written before it was recorded
])
def test_command_names_the_device_the_passes_ran_on(computed_on, flag) -> None:
    """A GPU's utility differs from the CPU's in the last bits and ``auto`` picks a GPU wherever one is visible, so
    the reproducing command names the device; the configuration hash does not depend on it."""
    c = ProfileConfig(kappas=(1e-3,))
    cmd = c.command("runs/x", (), computed_on)
    assert cmd.endswith("--out runs/x")
    if flag is None:
        assert "--device" not in cmd and cmd == c.command("runs/x")
    else:
        assert cmd == c.command("runs/x").replace("--out runs/x", f"{flag} --out runs/x")


@pytest.mark.parametrize("args, message", [
    (["--epsilons", "0,8"], "--epsilons must be finite numbers > 0"),
    (["--epsilons", "8,abc"], "--epsilons must be a comma-separated list"),
    (["--seeds", "0"], "--seeds must be an integer >= 1"),
    (["--decoder", "best"], "'best' is not one of 'strong'"),  # the parser's own (an Enum choice)
    (["--kappa", "2"], "--kappa must be in (0, 1)"),
    (["--max-rero", "2"], "--max-rero must be in (0, 1)"),
    (["--threat-model", "relaxed"], "--threat-model must be given with --max-rero"),
    (["--max-rero", "0.05", "--threat-model", "paranoid"], "--threat-model must be worst-case, relaxed or realistic"),
    (["--max-mia-tpr", "1e-4", "--at-fpr", "1e-3"], "--max-mia-tpr must be above the FPR"),
])
def test_cli_profile_bad_inputs(tmp_path, args, message) -> None:
    res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "p"), *args])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    if text.startswith("error: Invalid value for"):  # the parser's own, in one line: the option, the choices, a fix
        assert message in text and "Fix:" in text and len(res.output.strip().splitlines()) == 1, text
    else:
        assert text.startswith(f"error: {message}") and "Fix:" in text, text
    assert "Traceback" not in res.output
    assert not (tmp_path / "p" / "profile.json").exists()


def test_tasks_are_picklable_and_keys_ignore_the_folder(tmp_path) -> None:
    config = ProfileConfig(**TINY)
    a = plan_training(config, tmp_path / "a")
    b = plan_training(config, tmp_path / "b")
    assert [t.key() for t in a] == [t.key() for t in b]  # a moved folder still resumes
    assert len({t.key() for t in a}) == len(a) == 2
    for t in a:
        assert pickle.loads(pickle.dumps(t)) == t


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """Run the tiny profile, interrupt it after the first training task, then resume it."""
    out = tmp_path_factory.mktemp("profile")
    config = ProfileConfig(**TINY)
    first = CountingExecutor(stop_after=1)
    with pytest.raises(_Interrupt):
        run_profile(config, out, executor=first)
    assert len(first.ran) == 1 and not (out / "profile.json").exists()
    second = CountingExecutor()
    prof = run_profile(config, out, executor=second)
    render_report(prof, out / "report.pdf", base_dir=out)
    return out, config, first, second, prof


def test_interrupted_profile_resumes_without_rerunning(interrupted_then_resumed) -> None:
    out, _, first, second, prof = interrupted_then_resumed
    assert first.ran[0] not in second.ran  # the finished epsilon-8 training was not run again
    stages = {s.stage: s for s in prof.stages}
    assert stages["train"].tasks_reused == 1 and stages["train"].tasks_run == 1
    assert stages["attack"].tasks_run == 2
    assert Profile.from_json((out / "profile.json").read_text()) == prof
    # Every level has its training, bounds (private only) and attack.
    levels = prof.levels()
    assert [lv.epsilon_target for lv in levels] == [8.0, None]
    assert levels[0].bounds is not None and levels[0].attack is not None and levels[1].attack is not None
    t = levels[0].train[0]
    assert t.epsilon is not None and t.epsilon <= 8.0  # achieved epsilon never above the target
    assert levels[0].bounds.noise_multiplier == t.noise_multiplier  # bounds of the mechanism that ran
    assert levels[0].bounds.kappa_train == pytest.approx(1 / prof.dataset.n_train)
    assert (out / t.checkpoint).is_file()


def test_finished_profile_reruns_nothing(interrupted_then_resumed, tmp_path) -> None:
    import shutil

    out, config, _, _, prof = interrupted_then_resumed
    shutil.copytree(out, tmp_path / "copy")  # leave the fixture's profile.json (and its date) untouched
    third = CountingExecutor()
    again = run_profile(config, tmp_path / "copy", executor=third)
    assert third.ran == []
    assert again.train == prof.train and again.bounds == prof.bounds and again.attacks == prof.attacks


def test_report_of_a_real_profile_has_its_numbers(interrupted_then_resumed) -> None:
    from dpaudit.audit import report_text as txt

    out, _, _, _, prof = interrupted_then_resumed
    text = "\n".join(p.extract_text() for p in PdfReader(out / "report.pdf").pages)
    lv = prof.levels()[0]
    assert txt.pct(lv.worst_case, direction="up") in text
    assert txt.pct(lv.relaxed, direction="up") in text
    assert txt.pct(lv.attack.strongest.success_rate) in text
    assert f"{lv.train[0].noise_multiplier:.4g}" in text
    # `dpaudit report` on the written profile.json reproduces the profile's own PDF byte for byte.
    res = CliRunner().invoke(app, ["report", str(out / "profile.json"), "-o", str(out / "again.pdf")])
    assert res.exit_code == 0, res.output
    assert (out / "again.pdf").read_bytes() == (out / "report.pdf").read_bytes()


def test_checkpoint_is_reused_when_the_store_entry_is_lost(interrupted_then_resumed, tmp_path) -> None:
    import shutil

    out, config, _, _, prof = interrupted_then_resumed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    task = plan_training(config, copy)[0]
    (TaskStore(copy).root / f"{task.key()}.json").unlink()
    outcome = task.run()
    assert outcome.reused_checkpoint
    assert outcome.utility == prof.train[0].utility and outcome.noise_multiplier == prof.train[0].noise_multiplier


def test_cli_profile_json(tmp_path) -> None:
    args = ["profile", "--out", str(tmp_path / "p"), "--dataset", "demo", "--image-size", "16", "--max-images",
            "60", "--arch", "smallcnn", "--epsilons", "8", "--no-non-private", "--seeds", "1", "--epochs", "1",
            "--batch-size", "8", "--attack-images", "4", "--attack-epochs", "1", "--decoder", "strong",
            "--no-render", "--json", "--max-rero", "0.5", "--threat-model", "realistic"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    # The board's limit reaches profile.json's decision block; the checklist is written with it.
    decision = data["decision"]
    assert decision["limits"] == [{"kind": "rero", "maximum": 0.5, "threat_model": "realistic", "at_fpr": None}]
    (check,) = decision["budgets"][0]["checks"]
    assert check["label"] == "empirical" and (decision["recommended"] == "ε = 8") == check["within"]
    text = (tmp_path / "p" / "profile.json").read_text()
    prof = Profile.from_json(text)
    # Both JSONs say what kind of number each block is: the summary --json prints and the profile.json it names.
    assert data["profile"] == str(tmp_path / "p" / "profile.json")
    assert data["labels"]["levels[].realistic"].startswith("empirical")
    assert json.loads(text)["labels"] == prof.labels and prof.labels["attacks[]"].startswith("empirical")
    assert prof.decision.recommended == decision["recommended"]
    assert prof.checklist.get("sampler").value.startswith("Poisson sampling, q = ")
    assert prof.train[0].optimizer == "NAdam"
    # The attack's success per subgroup: every scored image counted once per attribute (sex, age_band on demo); a
    # group whose attacked images are held by fewer than 5 patients is withheld (no count: those images are not
    # in the sums).
    row = prof.attacks[0].strongest
    for attr in ("sex", "age_band"):
        groups = [g for g in prof.attacks[0].subgroups_of(row.decoder) if g.attribute == attr]
        published = [g for g in groups if not g.withheld]
        assert all(g.units >= 5 for g in published)
        assert all(g.n_images is None and g.reason for g in groups if g.withheld)
        assert sum(g.n_images for g in published) <= row.n_images
        assert sum(g.successes for g in published) <= round(row.success_rate * row.n_images)
        if len(published) == len(groups):
            assert sum(g.n_images for g in groups) == row.n_images
            assert sum(g.successes for g in groups) == round(row.success_rate * row.n_images)
    assert [lv["epsilon_target"] for lv in data["levels"]] == [8.0]
    lv = data["levels"][0]
    assert 0 <= lv["relaxed"] <= lv["worst_case"] <= 1
    assert lv["realistic"]["decoder"] == "strong"
    assert Path(data["profile"]).is_file() and data["report"] is None
    assert "train" in res.stderr and "attack" in res.stderr  # progress per stage on stderr
    # Group privacy: with the patient as the unit, epsilon per patient is at least the per-image epsilon.
    assert lv["epsilon_patient"] is None or lv["epsilon_patient"] >= lv["epsilon"]
    # A report.pdf left from an earlier configuration is not left beside the rewritten profile.json.
    (tmp_path / "p" / "report.pdf").write_bytes(b"%PDF-1.4 earlier")
    res = CliRunner().invoke(app, args)  # every task reused
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "p" / "report.pdf").exists()
    assert (tmp_path / "p" / "report.stale.pdf").read_bytes() == b"%PDF-1.4 earlier"
    assert "may not match" in res.stderr


def test_pdf_is_a_pdf(interrupted_then_resumed) -> None:
    out = interrupted_then_resumed[0]
    reader = PdfReader(io.BytesIO((out / "report.pdf").read_bytes()))
    assert len(reader.pages) >= 8


def test_mia_audit_runs_per_budget_and_reaches_the_report(tmp_path) -> None:
    # A lower bound from the audit must never exceed the accountant's sound upper bound.
    args = ["profile", "--out", str(tmp_path / "p"), "--dataset", "demo", "--image-size", "16", "--max-images",
            "120", "--arch", "smallcnn", "--epsilons", "8", "--no-non-private", "--seeds", "1", "--epochs", "1",
            "--batch-size", "8", "--attack-images", "4", "--attack-epochs", "1", "--decoder", "strong",
            "--mia-audit", "--canaries", "24"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    prof = Profile.from_json((tmp_path / "p" / "profile.json").read_text())
    (audit,) = prof.mia_audits
    assert audit.epsilon_target == 8.0 and audit.canaries == 24
    assert 0.0 <= audit.epsilon_lower_bound <= audit.accountant_epsilon <= 8.0
    assert audit.epsilon_lower_bound <= audit.ceiling
    assert "--mia-audit --canaries 24" in prof.command
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(tmp_path / "p" / "report.pdf").pages).split())
    assert "Empirical canary audit" in text and "No empirical membership audit" not in text
    # Too many canaries for the training split: a clear error before any training.
    again = [*args[:-1], "500"]  # each option once: a repeated one is refused
    again[again.index("--out") + 1] = str(tmp_path / "q")
    res = CliRunner().invoke(app, again)
    assert res.exit_code == 2 and "canaries" in res.output and "Traceback" not in res.output


def test_threads_pin_the_training_runs_without_changing_task_keys(tmp_path) -> None:
    config = ProfileConfig(**TINY)
    free, pinned = plan_training(config, tmp_path), plan_training(config, tmp_path, threads=1)
    assert [t.threads for t in pinned] == [1] * len(pinned) and [t.threads for t in free] == [None] * len(free)
    assert [t.key() for t in pinned] == [t.key() for t in free]
    assert all(t.train_config().threads == 1 for t in pinned)
    res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "p"), "--threads", "0"])
    assert res.exit_code == 2 and "threads" in res.output


def test_device_reaches_every_model_pass_without_changing_task_keys(tmp_path, interrupted_then_resumed) -> None:
    """--device goes to the training runs, the attack and the membership audit, but not into any task key (a
    profile resumes on another machine, as with --threads); profile.json and the report say where the runs were
    computed; a device that is not there stops the run before the folder is claimed."""
    import dataclasses

    from dpaudit.audit.profile.tasks import MiaAuditTask

    config = ProfileConfig(**TINY)
    auto, cpu = plan_training(config, tmp_path), plan_training(config, tmp_path, device="cpu")
    assert [t.key() for t in auto] == [t.key() for t in cpu]
    assert all(t.train_config().device == "cpu" for t in cpu) and all(t.train_config().device == "auto" for t in auto)
    mia = MiaAuditTask(**{f.name: getattr(auto[0], f.name) for f in dataclasses.fields(MiaAuditTask)
                          if hasattr(auto[0], f.name)}, canaries=4)
    assert dataclasses.replace(mia, device="cpu").key() == mia.key()
    assert dataclasses.replace(mia, device="cpu")._train_config(None, None).device == "cpu"
    out, *_, prof = interrupted_then_resumed
    import torch

    # auto: the CPU on a machine without a GPU (CI), 'cuda:0 (NAME)' where one is visible
    here = "cpu" if not torch.cuda.is_available() else "cuda:"
    assert prof.computed_on.startswith(here)
    # resumed: the reused results may have been computed elsewhere, and the record says so
    assert "1 of 4 training and attack results were reused from an earlier one and ran where it ran" in prof.computed_on
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(out / "report.pdf").pages).split())
    assert f"model passes ran on {prof.computed_on}" in text
    for bad, said in (("gpu", "auto, cpu, cuda or cuda:N"), ("cuda:7", "--device")):
        res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "d"), "--device", bad])
        assert res.exit_code == 2 and said in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "d").exists()


def test_attack_task_runs_on_the_idle_cores_unless_threads_are_pinned(interrupted_then_resumed, monkeypatch) -> None:
    # Under load, torch's default (every core) made OpenMP threads wait on each other: the attack took 40x longer.
    import dataclasses

    import torch

    import dpaudit.attacks.scenario as scenario
    import dpaudit.runtime as runtime
    from dpaudit.audit.profile.tasks import AttackTask, DataSpec

    out, config, _, _, prof = interrupted_then_resumed

    class Stop(Exception):
        pass

    seen: list[int] = []

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(scenario, "attack_checkpoint", spy)
    monkeypatch.setattr(runtime, "idle_cores", lambda: 1)
    task = AttackTask(data=DataSpec(config.dataset, None, config.image_size, config.max_images, config.seed),
                      epsilon_target=8.0, checkpoint=prof.train[0].checkpoint, train_key="k", attack_epochs=1,
                      target_delta=1e-5, n_images=2, decoders=("strong",), connection="linear", bins=10,
                      observations=1, seed=0, include_images=False, out_dir=str(out))
    before = torch.get_num_threads()
    for threads in (None, 3):
        with pytest.raises(Stop):
            dataclasses.replace(task, threads=threads).run()
    assert seen == [min(before, 1), 3] and torch.get_num_threads() == before
    assert dataclasses.replace(task, threads=3).key() == task.key()


@pytest.mark.parametrize(("args", "message"), [
    (["--trainable", "head"], "--trainable head applies only to runs from a weights file in --inits"),
    (["--canaries", "16"], "--canaries applies only with --mia-audit"),
    (["--federated-clients", "3"], "--federated-clients applies only with --federated"),
    (["--federated-epsilon", "4"], "--federated-epsilon applies only with --federated"),
    (["--federated-partition", "dirichlet:0.5"], "--federated-partition applies only with --federated"),
])
def test_options_the_profile_would_not_use_are_refused(tmp_path, args, message) -> None:
    res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "p"), "--max-images", "60", *args])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert message in text and "Fix:" in text and "Traceback" not in text
    assert not (tmp_path / "p").exists()  # refused before any work


def test_options_given_with_their_switch_pass_the_check(tmp_path) -> None:
    from dpaudit.cli.profile_cmd import _refuse_unused

    _refuse_unused(mia_audit=False, federated=False, weights_file=False, trainable="head")  # nothing typed: no CLI
    res = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "p"), "--canaries", "16", "--mia-audit",
                                   "--federated-clients", "3", "--federated", "--threads", "0"])
    assert res.exit_code == 2 and "--threads" in res.output  # got past the check, to the next one


def test_the_console_tables_epsilon_stays_narrow_and_rounded_up() -> None:
    """A huge epsilon per patient (the dominating mechanism's RDP at tiny noise: 7.744e8) takes 2 significant digits
    in the 80-column table, rounded up; the report and profile.json keep 4."""
    from dpaudit.cli.profile_cmd import _eps_cell

    assert _eps_cell(7.744e8) == "7.8e+08" and _eps_cell(85.1399) == "85.14" and _eps_cell(99999.1) == "1e+05"
    assert _eps_cell(float("inf")) == "∞"

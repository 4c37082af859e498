"""`dpaudit profile --federated`: the federated section in profile.json and in the PDF."""

from __future__ import annotations

import json


def test_profile_with_federated_section(tmp_path) -> None:
    from dpaudit.audit.profile import run_profile
    from dpaudit.audit.profile.schema import Profile, ProfileConfig
    from dpaudit.audit.report import render_report

    config = ProfileConfig(max_images=120, image_size=16, arch="smallcnn", epsilons=(8.0,), non_private=False,
                           seeds=1, epochs=1, batch_size=16, attack_images=4, federated=True, federated_clients=2)
    assert "--federated --federated-clients 2" in config.command()
    import dataclasses

    from dpaudit.audit.profile import InProcessExecutor
    from dpaudit.audit.profile.federated_task import FederatedTask

    class Recording(InProcessExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.tasks: list = []

        def map(self, tasks, on_done) -> None:
            tasks = list(tasks)
            self.tasks.extend(tasks)
            super().map(tasks, on_done)

    executor = Recording()
    profile = run_profile(config, tmp_path, threads=1, device="cpu", executor=executor)
    # --device reaches the federated stage (the sites' training, the clients' attack steps), outside its key
    fed_task = next(t for t in executor.tasks if isinstance(t, FederatedTask))
    assert fed_task.device == "cpu" and dataclasses.replace(fed_task, device="auto").key() == fed_task.key()
    fed = profile.federated
    assert fed is not None and len(fed.sites) == 2
    assert all(s.epsilon <= 8.0 and s.kappa == 1.0 / s.n_train for s in fed.sites)
    assert {r.secure_aggregation for r in fed.attack} == {False, True}
    again = Profile.from_json((tmp_path / "profile.json").read_text())
    assert again.federated == fed
    data = json.loads((tmp_path / "profile.json").read_text())
    assert data["federated"]["sites"][0]["rero_worst_case"] <= 1.0
    # Every number in profile.json, the federated block's included, has a label.
    from test_json_strict import unlabelled

    assert unlabelled(data) == set() and "federated" in data["labels"]
    assert data["federated"]["labels"]["sites[].rero_worst_case"].startswith("sound upper bound")
    pdf = tmp_path / "report.pdf"
    render_report(profile, pdf)
    from pypdf import PdfReader

    text = " ".join(page.extract_text() for page in PdfReader(str(pdf)).pages)
    assert "Federated learning: privacy per site" in text and "bin attack" in text
    # '–' is explained for both cases where a site's MCC is not defined
    assert "holds no image, N_test 0, or one class only" in " ".join(text.split())
    # The demo's unit is the patient: each site's epsilon and ReRo are per patient of its k images too.
    from dpaudit.bounds import rero_bound

    assert profile.privacy().unit == "patient" and any(s.records_per_patient > 1 for s in fed.sites)
    for s in fed.sites:
        if s.records_per_patient > 1:
            assert s.epsilon_patient > s.epsilon
            per_patient = rero_bound(fed.noise_multiplier, s.sampling_probability, s.steps, [s.kappa],
                                     records_per_patient=s.records_per_patient).gamma[0]
            assert s.rero_worst_case == per_patient
    assert "per patient" in text and "moving together" in text


def test_profile_without_federated_reads_old_files() -> None:
    from dpaudit.audit.profile.schema import ProfileConfig

    assert ProfileConfig().federated is False and "--federated" not in ProfileConfig().command()

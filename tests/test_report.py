"""The PDF risk report, rendered from a synthetic profile (no training): sections, numbers, determinism, CLI.

The synthetic profile's numbers are illustrative (HAM10000 rows of the seed paper's Table 3 for the bounds and
utility, made-up attack results); the tests check that what is in ``profile.json`` is what the PDF says, with the
rounding direction the report promises (upper bounds rounded up).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from dpaudit.attacks.lower_bounds import OneRunBound, OneRunScoreAudit
from dpaudit.attacks.results import AttackRow
from dpaudit.audit.metrics import ClassificationMetrics, GroupMetrics
from dpaudit.audit.profile.schema import (
    SCHEMA_VERSION,
    AttackOutcome,
    AttackSubgroup,
    BoundsOutcome,
    DatasetInfo,
    FprTpr,
    PackageVersion,
    Profile,
    ProfileConfig,
    ReroPoint,
    StageTime,
)
from dpaudit.audit.results import CanaryAuditResult, TprAtFpr, TrainResult
from dpaudit.cli.main import app

# Seed paper Table 3, HAM10000 rows (epsilon: sigma, MCC mean, MCC std, worst case, relaxed). Illustrative only.
HAM = {1.0: (0.92, 0.1560, 0.0413, 0.0003, 0.0001), 8.0: (0.47, 0.3748, 0.0345, 0.0122, 0.0004),
       20.0: (0.40, 0.4283, 0.0237, 0.2230, 0.0078), 1e9: (0.02, 0.5198, 0.0252, 1.0, 1.0)}
N_TRAIN = 8000


def _roc(scale: float) -> tuple[FprTpr, ...]:
    fpr = np.geomspace(1e-6, 1, 25)
    return tuple(FprTpr(float(f), float(min(1.0, f ** (1 / (1 + scale))))) for f in fpr)


def synthetic_run(*, eps: float | None, seed: int, sigma: float, mcc: float,
                  groups: tuple[GroupMetrics, ...] = ()) -> TrainResult:
    """One training run as ``dpaudit.audit.train.train`` returns it (made-up utility, no history)."""
    metrics = ClassificationMetrics(n=1015, mcc=mcc, balanced_accuracy=0.7, auroc=0.8, accuracy=0.85, loss=0.5,
                                    subgroups=groups, threshold=0.5, mcc_argmax=mcc)
    return TrainResult(
        dataset="ham10000", task="classification", arch="resnet9", arch_args={}, init="scratch", trainable="all",
        seed=seed, epochs=20, batch_size=320, lr=2e-3, optimizer="NAdam", epsilon_target=eps, epsilon_achieved=eps,
        epsilon_rdp=None if eps is None else eps * 1.1, noise_multiplier=sigma, sampling_probability=0.04,
        steps=500, target_delta=8e-7, delta_rule="given (--delta)", max_grad_norm=None if eps is None else 1.0,
        n_train=N_TRAIN, label_names=("no treatment", "treatment"), metrics=metrics, val_metrics=metrics,
        history=(), per_seed=(metrics,), seed_summary={}, wall_seconds=10.0, train_samples_per_second=100.0,
        checkpoint=f"checkpoints/{eps}-{seed}/model.pt")


def synthetic_audit(eps: float, run: TrainResult) -> CanaryAuditResult:
    """A canary audit with made-up counts (the report reads its bound, ceiling and TPR)."""
    bound = OneRunBound(epsilon_lower_bound=0.1234, canaries=256, guesses=26, correct=20, delta=8e-7,
                        confidence=0.95, p_value=0.01, ceiling=3.456)
    return CanaryAuditResult(
        canaries=256, score="loss", confidence=0.95, selection="bonferroni", seed=0,
        one_run=OneRunScoreAudit(bound=bound, guesses_positive=13, guesses_negative=13, selection="bonferroni",
                                 tries=10, confidence=0.95),
        accountant_epsilon=eps, epsilon_rdp=eps * 1.1, epsilon_target=eps, target_delta=8e-7, ceiling=3.456,
        members=128, tpr_at_fpr=(TprAtFpr(0.01, 1.0, 3, 128, 1, 128, 0.02, 0.0, 0.07, 0.0078, 0.04),),
        roc=((0.0, 0.0), (1.0, 1.0)), auc=0.5, train=run, seconds=3.0)


def synthetic_profile(*, with_mia_audit: bool = True, subgroups: bool = True, seeds: int = 2) -> Profile:
    rng = np.random.default_rng(7)
    config = ProfileConfig(dataset="ham10000", image_size=64, epsilons=tuple(HAM), seeds=seeds, kappas=(1e-3,),
                           mia_audit=with_mia_audit)
    train, bounds, attacks, audits = [], [], [], []
    for eps in (*HAM, None):
        sigma, mcc, std, worst, relaxed = HAM[eps] if eps is not None else (0.0, 0.5166, 0.0138, 1.0, 1.0)
        for s in range(seeds):
            groups = (GroupMetrics("sex", "female", 700, mcc - 0.02 + 0.01 * s, 0.8),
                      GroupMetrics("sex", "male", 800, mcc + 0.01, 0.81)) if subgroups else ()
            train.append(synthetic_run(eps=eps, seed=s, sigma=sigma, mcc=mcc + (std if s else -std) / np.sqrt(2),
                                       groups=groups))
        if eps is not None:
            kappas = np.geomspace(1 / N_TRAIN, 1, 12)
            curve = tuple(ReroPoint(float(k), float(min(1, worst * (k * N_TRAIN) ** 0.5)),
                                    float(min(1, relaxed * (k * N_TRAIN) ** 0.5))) for k in kappas)
            bounds.append(BoundsOutcome(
                epsilon_target=eps, noise_multiplier=sigma, sampling_probability=0.04, steps=500, target_delta=8e-7,
                records_per_patient=1, epsilon=eps * 0.999, epsilon_rdp=eps * 1.1, kappa_train=1 / N_TRAIN,
                rero=(ReroPoint(1 / N_TRAIN, worst, relaxed), ReroPoint(1e-3, min(1, worst * 3), min(1, relaxed * 3))),
                rero_curve=curve, method="tight", mia_advantage=min(1.0, 0.05 * np.log1p(eps)),
                mia_tpr_at_fpr=tuple(FprTpr(f, min(1.0, f * np.exp(min(eps, 50)))) for f in
                                     (1e-5, 1e-4, 1e-3, 1e-2, 0.1)),
                mia_roc=_roc(np.log1p(eps)), seconds=1.0))
        ssim = rng.uniform(0.0, 0.5, 40) if eps is not None else rng.uniform(0.85, 1.0, 40)
        success = float(np.mean(ssim > 0.8))
        hits = int(np.sum(ssim > 0.8))
        # 40 attacked images: 18 female, 22 male (a made-up split; intervals are illustrative, not exact).
        att_groups = (AttackSubgroup("strong", "sex", "female", 18, hits * 18 // 40, 0.0, 0.19),
                      AttackSubgroup("strong", "sex", "male", 22, hits - hits * 18 // 40, 0.0, 0.16)) if subgroups else ()
        ci = (0.0, 0.09) if success == 0.0 else (0.91, 1.0)  # synthetic, consistent with the rate
        eta = np.full(40, 0.1)
        rows = (AttackRow(sigma / 10, eps, "strong", 40, success, *ci, float(ssim.mean()), 0.3, ssim, eta),
                AttackRow(sigma / 10, eps, "paper", 40, 0.0, 0.0, 0.09, float(ssim.mean()) / 2, 0.3, ssim / 2, eta))
        attacks.append(AttackOutcome(
            epsilon_target=eps, noise_multiplier=sigma / 10, sampling_probability=1 / N_TRAIN, steps=20 * N_TRAIN,
            target_delta=8e-7, checkpoint="x", n_excluded=1, image_shape=(3, 64, 64), ssim_variant="7x7 uniform",
            connection="linear", bins=10, observations=1, rows=rows, images=(), seconds=5.0, subgroups=att_groups))
        if with_mia_audit and eps is not None:
            audits.append(synthetic_audit(eps, train[-1]))
    return Profile(
        schema_version=SCHEMA_VERSION, dpaudit_version="0.1.0", created="2025-03-04T05:06:07+00:00",
        command=config.command("runs/ham"), config=config,
        dataset=DatasetInfo("ham10000", N_TRAIN, 1000, 1015, (3, 64, 64), ("no treatment", "treatment"),
                            ("sex",) if subgroups else ()),
        train=tuple(train), bounds=tuple(bounds), bounds_curve=(), attacks=tuple(attacks), mia_audits=tuple(audits),
        stages=(StageTime("train", 100.0, 10, 0),), environment=(PackageVersion("torch", "2.13.0"),))


def _text(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Profile, bytes, list[str]]:
    from dpaudit.audit.report import render_report

    prof = synthetic_profile()
    path = render_report(prof, tmp_path_factory.mktemp("r") / "report.pdf")
    pdf = path.read_bytes()
    return prof, pdf, _text(pdf)


def test_profile_json_round_trip_is_exact() -> None:
    prof = synthetic_profile()
    again = Profile.from_json(prof.to_json())
    assert again == prof
    assert again.to_json() == prof.to_json()


def test_pdf_has_every_section(rendered) -> None:
    _, pdf, pages = rendered
    assert pdf.startswith(b"%PDF")
    text = "\n".join(pages)
    for section in ("Privacy risk report", "Summary", "Risk and utility per privacy budget",
                    "Reconstruction risk: formal bounds", "Realistic attack: reconstruction errors",
                    "Membership inference", "Empirical canary audit", "Utility", "Subgroup utility",
                    "Privacy statement", "Not covered by these guarantees", "Hyperparameter tuning",
                    "Preprocessing", "Pre-training data", "Assumptions", "Limitations", "Glossary",
                    "Reproducibility", "dpaudit profile --dataset ham10000"):
        assert section in text, section
    # Title page: model, dataset, date, version, privacy unit.
    assert "resnet9" in pages[0] and "ham10000" in pages[0] and "2025-03-04" in pages[0]
    assert "0.1.0" in pages[0] and "privacy unit" in pages[0].lower() and "image" in pages[0]
    assert "Best reconstructions" not in text  # no images unless asked


def test_pdf_numbers_match_profile(rendered) -> None:
    prof, _, pages = rendered
    table = next(p for p in pages if "Risk and utility per privacy budget" in p)
    summary = next(p for p in pages if p.lstrip().startswith("Summary") or "\nSummary" in p[:200])
    # Seed paper HAM10000 epsilon 8: worst case 1.22%, relaxed 0.04%; epsilon 20: 22.30% -> '22.3%'.
    assert "1.22%" in table and "0.04%" in table and "22.3%" in table
    assert "1.22%" in summary and "22.3%" in summary
    # Utility: mean and 95% t-interval over the two synthetic seeds (mcc -/+ std/sqrt(2): sample std = std exactly),
    # the reference interval from scipy.stats.t (independent of dpaudit.audit.stats).
    from scipy import stats as sps

    mean, std = HAM[8.0][1], HAM[8.0][2]
    lo, hi = sps.t.interval(0.95, 1, loc=mean, scale=std / np.sqrt(2))
    assert f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" in " ".join(table.split())
    for label in ("sound upper bound", "empirical"):
        assert label in table
    # Labels next to every tier in the summary.
    assert summary.count("sound upper bound") >= 2 * len(prof.config.epsilons) - 1
    assert "empirical" in summary
    # Empirical epsilon lower bound rounded down (0.1234 -> 0.12) and the caveat sentence.
    at = next(i for i, p in enumerate(pages) if "Empirical canary audit" in p)
    mia = "\n".join(pages[at:at + 2])  # the table, and its caveat (on the next page when the table is long)
    assert "0.12" in mia and "does not prove" in mia.replace("\n", " ")


def test_upper_bounds_are_rounded_up() -> None:
    from dpaudit.audit.report_text import eps_down, eps_up, pct

    assert pct(0.012341, direction="up") == "1.24%"
    assert pct(0.012341) == "1.23%"
    assert pct(0.99996, direction="up") == "100%"
    assert pct(3e-7, direction="up") == "< 0.01%"
    assert pct(0.0, direction="up") == "0%"
    assert pct(0.2230, direction="up") == "22.3%"
    assert pct(0.22301, direction="up") == "22.4%"
    # four significant digits, the console's and the checklist's (dpaudit.numfmt)
    assert eps_up(68.5181) == "68.52" and eps_up(7.9912) == "7.992" and eps_up(7.99991) == "8"
    assert eps_down(0.129) == "0.129" and eps_down(1.23456) == "1.234"


def test_rendering_is_deterministic(tmp_path) -> None:
    from dpaudit.audit.report import render_report

    prof = synthetic_profile(with_mia_audit=False, subgroups=False, seeds=1)
    a = render_report(prof, tmp_path / "a.pdf").read_bytes()
    b = render_report(Profile.from_json(prof.to_json()), tmp_path / "b.pdf").read_bytes()
    assert a == b
    meta = PdfReader(io.BytesIO(a)).metadata
    assert meta["/CreationDate"].startswith("D:20250304050607")
    text = "\n".join(_text(a))
    assert "no subgroup metadata" in text and "No empirical membership audit" in text


def test_fonts_are_embedded(rendered) -> None:
    _, pdf, _ = rendered
    reader = PdfReader(io.BytesIO(pdf))
    fonts = set()
    for page in reader.pages:
        for f in page["/Resources"]["/Font"].values():
            font = f.get_object()
            desc = font.get("/FontDescriptor")
            if desc is None and "/DescendantFonts" in font:
                desc = font["/DescendantFonts"][0].get_object().get("/FontDescriptor")
            assert desc is not None and "/FontFile2" in desc.get_object(), font.get("/BaseFont")
            fonts.add(str(font["/BaseFont"]))
    assert any("DejaVuSans" in f for f in fonts)


def test_report_cli_renders_and_is_deterministic(tmp_path) -> None:
    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    (tmp_path / "profile.json").write_text(prof.to_json())
    runner = CliRunner()
    r1 = runner.invoke(app, ["report", str(tmp_path / "profile.json"), "-o", str(tmp_path / "a.pdf")])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "b.pdf"), "--json"])
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout)["pdf"].endswith("b.pdf")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()


def test_include_images_adds_a_warning_page(tmp_path) -> None:
    from matplotlib.figure import Figure

    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    fig = Figure(figsize=(4, 2))
    fig.add_subplot(1, 1, 1).imshow(np.zeros((8, 16)))
    fig.savefig(tmp_path / "recon.png")
    attacks = tuple(dataclasses.replace(a, images=("recon.png",)) if a.epsilon_target is None else a
                    for a in prof.attacks)
    prof = dataclasses.replace(prof, attacks=attacks)
    (tmp_path / "profile.json").write_text(prof.to_json())
    res = CliRunner().invoke(app, ["report", str(tmp_path / "profile.json"), "-o", str(tmp_path / "r.pdf"),
                                   "--include-images"])
    assert res.exit_code == 0, res.output
    text = "\n".join(_text((tmp_path / "r.pdf").read_bytes()))
    assert "Best reconstructions" in text and "Warning: this page shows training images" in text


@pytest.mark.parametrize("content, message", [
    (None, "does not exist: there is no profile.json to read"),
    ("", "is not a profile.json: it is not JSON (Expecting value at line 1, column 1; the file is empty)"),
    ("{not json", "is not a profile.json: it is not JSON"),
    ('{"schema_version": 1}', "is not a profile.json: it lacks the keys every profile.json has"),
    ("[[1.0, 0.01, 100]]", "is not a profile.json: it is a JSON list"),
    ('{"settings": {}, "per_image": {}, "rows": []}', "is not a profile.json: it is an attack.json (written by "
                                                      "`dpaudit attack --out DIR`)"),
    ('{"epsilon_achieved": 8, "metrics": {}}', "is not a profile.json: it is a metrics.json"),
    ('{"rero": [], "mia": {}, "epsilon": 1}', "is not a profile.json: it is the output of `dpaudit bounds --json`"),
    ('{"profile": "x/profile.json", "levels": []}', "it is the summary of `dpaudit profile --json`"),
])
def test_report_cli_bad_inputs(tmp_path, content, message) -> None:
    """A file that is not a profile.json is named as such (and as what it is, when dpaudit wrote it)."""
    path = tmp_path / "some.json"
    if content is not None:
        path.write_text(content)
    res = CliRunner().invoke(app, ["report", str(path), "-o", str(tmp_path / "r.pdf")])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert text.startswith(f"error: {str(path)!r}") and message in text, text
    assert "Fix: pass the profile.json written by `dpaudit profile --out DIR`" in text
    assert "Traceback" not in res.output


def test_report_names_the_file_of_a_damaged_profile_json(tmp_path) -> None:
    data = json.loads(synthetic_profile(seeds=1).to_json())
    data["train"][0]["steps"] = "many"
    (tmp_path / "profile.json").write_text(json.dumps(data))
    res = CliRunner().invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.pdf")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and f"profile {str(tmp_path / 'profile.json')!r}: $.train[0].steps" in text, text
    assert "Fix:" in text


def test_profile_json_rejects_wrong_types_and_unknown_fields() -> None:
    from dpaudit.errors import ConfigError

    data = json.loads(synthetic_profile(seeds=1).to_json())
    data["train"][0]["steps"] = "many"
    with pytest.raises(ConfigError, match=r"train\[0\]\.steps"):
        Profile.from_json(json.dumps(data))
    data = json.loads(synthetic_profile(seeds=1).to_json())
    data["config"]["surprise"] = 1
    with pytest.raises(ConfigError, match="surprise"):
        Profile.from_json(json.dumps(data))
    data = json.loads(synthetic_profile(seeds=1).to_json())
    data["schema_version"] = 99
    with pytest.raises(ConfigError, match="schema_version"):
        Profile.from_json(json.dumps(data))


def test_attack_rows_of_an_earlier_profile_json_still_load() -> None:
    """Files written when the profile kept its own copy of the attack row (no noise level, epsilon or eta per
    row) load: the noise level and epsilon come from the outcome, eta is NaN (not recorded)."""
    from dpaudit.codec import encode, from_plain

    new = encode(synthetic_profile().attacks[0])
    old = {**new, "rows": [{k: v for k, v in r.items() if k not in ("noise_multiplier", "epsilon", "eta")}
                           for r in new["rows"]]}
    back = from_plain(AttackOutcome, old)
    assert [r.success_rate for r in back.rows] == [r["success_rate"] for r in new["rows"]]
    assert all(r.noise_multiplier == new["noise_multiplier"] for r in back.rows)
    assert all(np.isnan(r.eta).all() for r in back.rows)


def _decided(prof: Profile, *limits) -> Profile:
    from dpaudit.audit.decision import decide

    return dataclasses.replace(prof, decision=decide(prof, limits))


def test_first_page_states_the_decision_and_marks_every_limit(tmp_path) -> None:
    from dpaudit.audit.decision import Limit
    from dpaudit.audit.report import render_report

    # realistic: 0 of 40 images, 95% interval up to 8.8%: conclusive for a 10% limit
    prof = _decided(synthetic_profile(), Limit("rero", 0.05), Limit("rero", 0.1, "realistic"))
    pages = _text(render_report(prof, tmp_path / "r.pdf").read_bytes())
    first = " ".join(pages[0].split())
    assert "Decision for the ethics board" in first
    assert "Recommended: ε = 8" in first  # worst case 1.22% <= 5% and the best MCC of epsilon 1 and 8
    # Marks in words and signs (not colour alone), plus one of each in the legend. Worst case: epsilon 1 and 8
    # within, 20, 10^9 and non-private over; realistic (0% on every private budget): 4 within, non-private over.
    assert first.count("✓ within") == 2 + 4 + 1 and first.count("✗ over") == 3 + 1 + 1
    assert "privacy unit: image" in first
    assert "Utility cost of ε = 8" in first and "Welch" in first
    for label in ("sound upper bound", "empirical"):
        assert label in first


def test_signoff_and_checklist_pages(rendered) -> None:
    import hashlib

    prof, _, pages = rendered
    signoff = " ".join(next(p for p in pages if "Sign-off" in p).split())
    # The hash of the configuration's canonical JSON, computed here independently of the report code: every
    # field but task_defaults (which options were left to their default; their values are stored resolved).
    plain = {k: v for k, v in json.loads(prof.config.to_json()).items() if k != "task_defaults"}
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert f"SHA-256 {digest}" in signoff and "dpaudit version 0.1.0" in signoff
    assert "8000 training, 1000 validation, 1015 test images" in signoff
    for field in ("Reviewer's role", "Name", "Date", "Decision", "Signature"):
        assert field in signoff
    checklist = " ".join(next(p for p in pages if "Reporting checklist" in p).split())
    for item in ("Accountant and version", "Neighbouring relation", "add/remove", "Privacy unit", "Poisson sampling",
                 "Clip norm", "Noise multiplier", "Batch size", "Steps and epochs", "NAdam", "Initialisation",
                 "hyperparameter tuning", "Seeds per budget", "Subgroups measured"):
        assert item in checklist, item


def test_subgroup_risk_stands_beside_subgroup_utility(rendered) -> None:
    _, _, pages = rendered
    text = " ".join(" ".join(pages).split())
    assert "Subgroups: utility and reconstruction risk" in text
    assert "sex = female" in text and "[0%, 19.0%]" in text  # the synthetic attack subgroup's interval
    assert "⚠ small" not in text.split("Subgroups: utility")[1].split("Test MCC: empirical")[0]


def test_report_without_limits_says_how_to_decide(rendered) -> None:
    _, _, pages = rendered
    assert "No limits were set" in " ".join(pages[0].split())


def test_report_cli_redecides_without_training(tmp_path) -> None:
    from dpaudit.audit.decision import Limit

    prof = _decided(synthetic_profile(with_mia_audit=False, seeds=2), Limit("rero", 0.05))
    (tmp_path / "profile.json").write_text(prof.to_json())
    before = (tmp_path / "profile.json").read_bytes()
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(tmp_path), "--max-rero", "0.01", "-o", str(tmp_path / "a.pdf"), "--json"])
    assert res.exit_code == 0, res.output
    decision = json.loads(res.stdout)["decision"]
    assert decision["within"] == ["ε = 1"] and decision["recommended"] == "ε = 1"  # 1.22% at epsilon 8 > 1%
    assert (tmp_path / "profile.json").read_bytes() == before  # the stored record is left as it was
    first = " ".join(_text((tmp_path / "a.pdf").read_bytes())[0].split())
    assert "Recommended: ε = 1" in first
    # Deterministic with the new limits too, and the reproducibility page gives the command with them.
    res = runner.invoke(app, ["report", str(tmp_path), "--max-rero", "0.01", "-o", str(tmp_path / "b.pdf")])
    assert res.exit_code == 0 and "recommended: ε = 1" in res.stdout
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    text = " ".join(" ".join(_text((tmp_path / "b.pdf").read_bytes())).split())
    assert "--max-rero 0.01 --threat-model worst-case" in text
    # Without limits the stored decision is shown.
    res = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "c.pdf")])
    assert "Recommended: ε = 8" in " ".join(_text((tmp_path / "c.pdf").read_bytes())[0].split())


def test_report_with_new_limits_leaves_report_pdf_as_profile_json_decides(tmp_path) -> None:
    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    (tmp_path / "profile.json").write_text(prof.to_json())
    runner = CliRunner()
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "report.pdf").read_bytes()
    res = runner.invoke(app, ["report", str(tmp_path), "--max-mia-tpr", "0.5"])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in tmp_path.glob("report-*.pdf"))
    assert len(written) == 1 and written[0].startswith("report-max-mia-tpr-0.5-at-fpr-"), written
    assert (tmp_path / "report.pdf").read_bytes() == before  # still profile.json's decision
    assert (tmp_path / "profile.json").read_text() == prof.to_json()
    text = " ".join(res.output.split())
    assert "differs from profile.json's" in text and "report.pdf stays as profile.json decides" in text
    # -o naming report.pdf itself is the user's choice, said aloud.
    res = runner.invoke(app, ["report", str(tmp_path), "--max-mia-tpr", "0.5", "-o", str(tmp_path / "report.pdf")])
    assert res.exit_code == 0 and "now disagrees with profile.json" in " ".join(res.output.split())


def test_reproduce_command_carries_the_limits_and_gives_the_same_hash(monkeypatch, tmp_path) -> None:
    """The report's command, run as printed, builds the same configuration (the same hash, though it spells out
    options that were left to their defaults) and the same limits; no profile is run (run_profile is stubbed)."""
    import shlex

    import dpaudit.audit.profile as profile_pkg
    from dpaudit.audit.decision import Limit
    from dpaudit.audit.report import _Report
    from dpaudit.audit.report_board import config_sha256
    from dpaudit.cli.main import app

    limits = (Limit("rero", 0.05), Limit("rero", 0.2, "realistic"), Limit("mia_tpr", 0.01, at_fpr=1e-3))
    prof = _decided(synthetic_profile(), *limits)
    prof = dataclasses.replace(prof, config=ProfileConfig(dataset="demo", epsilons=(8.0,), seeds=1, epochs=1,
                                                          max_images=300, attack_images=8),
                               command=f"dpaudit profile --dataset demo --out {tmp_path / 'p17'}",
                               computed_on="cpu")
    command = _Report(prof, None, False)._profile_command()
    assert "--max-rero 0.05 --threat-model worst-case" in command and "--max-mia-tpr 0.01" in command
    assert command.endswith(f"--device cpu --out {tmp_path / 'p17'}") and "--arch resnet9" in command  # defaults

    seen = {}

    class Stop(Exception):
        pass

    def fake_run_profile(config, out, **kwargs):
        seen.update(config=config, limits=kwargs["limits"], out=out, device=kwargs["device"])
        raise Stop

    monkeypatch.setattr(profile_pkg, "run_profile", fake_run_profile)
    res = CliRunner().invoke(app, shlex.split(command)[1:])
    assert isinstance(res.exception, Stop), res.output
    again = dataclasses.replace(prof, config=seen["config"])
    assert seen["config"].task_defaults != prof.config.task_defaults  # typed, not defaulted ...
    assert config_sha256(again) == config_sha256(prof)  # ... yet the same configuration
    assert tuple(seen["limits"]) == limits and str(seen["out"]) == str(tmp_path / "p17")
    assert seen["device"] == "cpu"  # where the passes ran, even on a machine where auto would pick a GPU


def test_include_images_without_stored_images_says_why_and_stamps_nothing(tmp_path) -> None:
    from dpaudit.cli.main import app

    (tmp_path / "profile.json").write_text(synthetic_profile().to_json(), encoding="utf-8")
    res = CliRunner().invoke(app, ["report", str(tmp_path), "--include-images", "-o", str(tmp_path / "r.pdf")])
    assert res.exit_code == 0, res.output
    assert "stores no reconstructions" in res.stderr and "--include-images" in res.stderr
    assert "warning" not in res.stderr
    text = " ".join(_text((tmp_path / "r.pdf").read_bytes()))
    assert "RESTRICTED" not in text and "Best reconstructions" not in text


def test_a_redecided_report_gives_the_command_the_profile_ran_and_the_one_that_redecided(tmp_path) -> None:
    # `dpaudit report DIR --max-rero 0.01`: the reproduce command keeps the limits the profile was run with (a
    # profile command with the new limits is refused in that folder); the re-render command carries the new ones.
    from dpaudit.audit.decision import Limit
    from dpaudit.audit.report import _Report

    ran, new = (Limit("rero", 0.05),), (Limit("rero", 0.01),)
    prof = dataclasses.replace(_decided(synthetic_profile(), *new), command="dpaudit profile --out p")
    rep = _Report(prof, None, False, run_limits=ran)
    assert rep._redecided()
    assert "--max-rero 0.05" in rep._profile_command() and "--max-rero 0.01" not in rep._profile_command()
    assert "--max-rero 0.01" in rep._render_command()
    same = _Report(prof, None, False)
    assert not same._redecided() and "--max-rero 0.01" in same._profile_command()


def test_a_copied_run_folder_gives_commands_that_work_from_the_copy(tmp_path, monkeypatch) -> None:
    # A profile run with --out orig, its folder copied to copy: `dpaudit report copy` must not send the reader back
    # to orig (which may hold another run, or nothing); in orig the commands stay as the profile printed them.
    import shutil

    from dpaudit.cli.main import app

    monkeypatch.chdir(tmp_path)
    prof = dataclasses.replace(synthetic_profile(with_mia_audit=False, seeds=1),
                               command="dpaudit profile --dataset demo --out orig")
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig" / "profile.json").write_text(prof.to_json(), encoding="utf-8")
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    runner = CliRunner()

    def appendix(folder: str) -> str:
        res = runner.invoke(app, ["report", folder, "--include-images"])
        assert res.exit_code == 0, res.output
        return " ".join(_text((tmp_path / folder / "report.pdf").read_bytes())), " ".join(res.stderr.split())

    text, note = appendix("copy")
    assert "--out copy" in text and "dpaudit report copy" in text and "--out orig" not in text
    assert "the profile was run in orig; this copy of its results is in copy" in text
    assert "--out copy --include-images --overwrite" in note and "--out orig" not in note
    text, note = appendix("orig")
    assert "--out orig" in text and "dpaudit report orig" in text and "this copy" not in text
    assert "--out orig --include-images --overwrite" in note
    # The profile's own command line in profile.json is a record of what ran, and stays as it was.
    assert "--out orig" in json.loads((tmp_path / "copy" / "profile.json").read_text())["command"]


@pytest.mark.parametrize("k", [1, 4])
def test_every_membership_inference_number_names_its_unit(k: int, tmp_path) -> None:
    """The MIA bounds are computed for the privacy unit (a patient's k images moving together): the summary, the
    utility table, the MIA page's sentence, table and caption, and the figure say per patient (per image at k = 1),
    so that a per-patient TPR beside a per-image budget does not read as per image."""
    import dataclasses

    from dpaudit.audit.profile.schema import PrivacyInfo
    from dpaudit.audit.report import render_report

    prof = synthetic_profile(with_mia_audit=False, subgroups=False, seeds=1)
    info = PrivacyInfo("patient", k, data_unit="patient" if k > 1 else "image", max_images_per_unit=k)
    prof = dataclasses.replace(prof, dataset=dataclasses.replace(prof.dataset, privacy=info))
    text = " ".join(" ".join(_text(render_report(prof, tmp_path / "r.pdf").read_bytes())).split())
    unit = "per patient" if k > 1 else "per image"
    summary = text.split("Membership inference. ", 1)[1].split("κ = 1/N_train", 1)[0]
    assert summary.count("at most") == summary.count(f"% {unit}") == len(HAM) and f"upper bound, {unit})" in summary
    assert f"MIA TPR at FPR 0.1% {unit}" in text and f"MIA advantage {unit}" in text
    assert f"TPR and advantage: sound upper bound for any attacker, {unit}" in text
    assert f"(TPR {unit})" in text and f"Advantage {unit}" in text
    assert f"membership-inference attacker, {unit} (same assumptions and unit" in text
    assert f"(sound upper bound, {unit}, from the same trade-off function" in text


@pytest.mark.parametrize("k", [1, 4])
def test_every_reconstruction_number_names_its_unit(k: int, tmp_path) -> None:
    """The worst-case and relaxed bounds are computed for the privacy unit (a patient's k images moving together):
    the board table, the summary, the risk table and its caption say per patient of up to k images (per image at
    k = 1); the realistic attack's success is per image."""
    import dataclasses

    from dpaudit.audit.profile.schema import PrivacyInfo
    from dpaudit.audit.report import render_report

    prof = synthetic_profile(with_mia_audit=False, subgroups=False, seeds=1)
    info = PrivacyInfo("patient", k, data_unit="patient" if k > 1 else "image", max_images_per_unit=k)
    prof = dataclasses.replace(prof, dataset=dataclasses.replace(prof.dataset, privacy=info))
    text = " ".join(" ".join(_text(render_report(prof, tmp_path / "r.pdf").read_bytes())).split())
    unit, long = ("per patient", "per patient of up to 4 images") if k > 1 else ("per image", "per image")
    assert f"Worst case {unit} κ = 1/" in text and f"Relaxed {unit} κ = 1/" in text
    assert "Realistic attack per image" in text
    assert f"Worst case / relaxed ({long}): highest probability" in text and "Realistic (per image)" in text
    assert f"(worst case, sound upper bound, {long})" in text and f"(relaxed, sound upper bound, {long})" in text
    assert f"Reconstruction bounds are {long} and the realistic attack's success per image" in text


def test_the_configuration_table_is_never_split_across_pages(tmp_path) -> None:
    """The configuration table (sign-off and appendix) stays on one page with its heading: a table split after its
    first rows left a page holding only its last few. Checked with a profile whose title rows are long (a
    federated one, as the tester's), and with the synthetic one."""
    import dataclasses

    from dpaudit.audit.report import _config_items, render_report

    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    fed = dataclasses.replace(prof, config=dataclasses.replace(prof.config, federated=True, federated_clients=3,
                                                               labels="/a/long/path/to/the/labels/file.csv"))
    for i, p in enumerate((prof, fed)):
        pages = [" ".join(t.split()) for t in _text(render_report(p, tmp_path / f"r{i}.pdf").read_bytes())]
        names = [k for k, _ in _config_items(p.config)]
        for heading in ("Configuration (the fields the hash covers)", "Reproducibility"):
            page = next(t for t in pages if heading in t)
            # every field of the table on the page of its heading
            assert all(n in page for n in names), [n for n in names if n not in page]



@pytest.mark.parametrize("header_rows", [1, 2])
def test_a_split_table_keeps_rows_and_its_footnote_on_each_page(header_rows: int, tmp_path, monkeypatch) -> None:
    """The report's tables (``grid``, ``page_table``) split across pages only with at least MIN_SPLIT_ROWS body
    rows on each side, the footnote with the last ones and not counted among them: a demo report left a page
    holding only the attack table's last row and its footnote, and a report with six attack rows split them four
    and two (the footnote made the third). The table is placed at every height of the page in turn; every split
    reportlab makes is recorded, and the pages are read back: a page holding rows of the table holds at least
    MIN_SPLIT_ROWS of them (all of a shorter table), and the footnote is never alone."""
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table

    from dpaudit.audit.report_layout import MIN_SPLIT_ROWS, grid, register_fonts, styles

    register_fonts()
    st = styles()
    pieces: list[int] = []  # body rows of each piece of a split table (the footnote, in the last piece, not counted)
    split = Table.split

    def recording(self, aw, ah):
        parts = split(self, aw, ah)
        if len(parts) > 1:
            pieces.extend(len(p._cellvalues) - header_rows - (p is parts[-1]) for p in parts)
        return parts

    monkeypatch.setattr(Table, "split", recording)
    for n_rows in (1, 4, 5, 6, 7, 40):
        for offset in range(0, 680, 23):  # points of the A4 frame taken above the table
            head = [[Paragraph(f"Head {i}", st["head"]) for _ in range(3)] for i in range(header_rows)]
            rows = [[Paragraph(f"row{r}", st["cell"]), Paragraph("x", st["cell"]), Paragraph("y", st["cell"])]
                    for r in range(n_rows)]
            doc = SimpleDocTemplate(str(tmp_path / "t.pdf"))
            doc.build([Spacer(1, offset), grid(head + rows, [doc.width / 3] * 3, header_rows=header_rows,
                                               note=Paragraph("FOOTNOTE of the table.", st["small"]))])
            for page in _text((tmp_path / "t.pdf").read_bytes()):
                shown = page.count("row")
                assert shown == 0 or shown >= min(n_rows, MIN_SPLIT_ROWS), (n_rows, offset, page)
                assert "FOOTNOTE" not in page or shown, (n_rows, offset, page)
    assert pieces and all(body >= MIN_SPLIT_ROWS for body in pieces), pieces


def test_every_report_table_is_built_by_the_layout_helpers() -> None:
    """The split rule lives in report_layout.page_table: no other report module builds a reportlab Table itself."""
    import dpaudit.audit as audit_pkg

    for path in Path(audit_pkg.__file__).parent.glob("report*.py"):
        if path.name != "report_layout.py":
            assert " Table(" not in path.read_text(encoding="utf-8"), path.name


def test_a_stored_decision_with_older_labels_renders(tmp_path: Path) -> None:
    """A profile.json written when a budget past the noise search range was labelled by its achieved epsilon
    rounded to the nearest ('ε = 4.8e+07', now rounded up: 'ε = 4.9e+07') stores its decision under the old label:
    the renderer matches budgets by label (StopIteration before); the budgets are renamed by epsilon_target."""
    import dataclasses

    from dpaudit.audit.decision import Limit, current_decision, decide
    from dpaudit.audit.profile import schema
    from dpaudit.audit.report import render_report

    prof = synthetic_profile()
    top = max(prof.config.epsilons)
    prof = dataclasses.replace(prof, train=tuple(dataclasses.replace(t, epsilon_achieved=4.84e7)
                                                 if t.epsilon_target == top else t for t in prof.train))
    new = next(lv.label for lv in prof.levels() if lv.epsilon_target == top)
    old = f"ε = {schema.fmt_eps(4.84e7)} (asked {schema.fmt_eps(top)})"
    assert new != old
    d = decide(prof, [Limit("rero", 0.999999)], calibrate_fn=lambda *a, **k: None)
    assert d.checks_of(new) is not None
    stored = dataclasses.replace(
        d, within=tuple(old if x == new else x for x in d.within),
        recommended=old if d.recommended == new else d.recommended,
        budgets=tuple(dataclasses.replace(b, budget=old) if b.budget == new else b for b in d.budgets))
    now = current_decision(dataclasses.replace(prof, decision=stored)).decision
    assert now.checks_of(new) is not None and now.checks_of(old) is None
    render_report(dataclasses.replace(prof, decision=stored), tmp_path / "r.pdf")


# -- no blank page -----------------------------------------------------------------------------------------------


def _page_bodies(pdf: bytes) -> list[tuple[list[str], int]]:
    """Each page's lines of text other than the running header and footer, and its number of images."""
    import re

    out = []
    for page in PdfReader(io.BytesIO(pdf)).pages:
        lines = [line for line in (page.extract_text() or "").splitlines() if line.strip()
                 and not re.fullmatch(r"dpaudit .* · \d{4}-\d{2}-\d{2}|page \d+", line.strip())
                 and "CONTAINS TRAINING IMAGES" not in line]
        out.append((lines, len(page.images)))
    return out


def test_no_page_of_a_report_is_blank(rendered, tmp_path: Path) -> None:
    """Sections end with a page break and some begin with one (the federated page follows the utility page's
    break): a plain PageBreak there left a blank page (page 13 of 17 in the federated report before the fix)."""
    from dpaudit.audit.profile.schema import FederatedOutcome
    from dpaudit.audit.report import render_report
    from tests.test_subgroup_cells import _sites

    fed = FederatedOutcome(8.0, "sample", "one image", "column:site", 3, 1, 1.1, 1e-5, 8.0, _sites(), 0.55, 0.19,
                           (), 1.0)
    federated = render_report(dataclasses.replace(synthetic_profile(), federated=fed), tmp_path / "f.pdf")
    for pdf in (rendered[1], federated.read_bytes()):
        bodies = _page_bodies(pdf)
        blank = [i + 1 for i, (lines, images) in enumerate(bodies) if not lines and not images]
        assert not blank, f"blank pages {blank} of {len(bodies)}"


def test_a_break_at_the_top_of_a_page_is_no_break(tmp_path: Path) -> None:
    """page_break() twice in a row, or at the start: one page per section, none blank."""
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    from dpaudit.audit.report_layout import page_break, register_fonts, styles

    register_fonts()
    body = styles()["body"]
    buf = io.BytesIO()
    SimpleDocTemplate(buf).build([page_break(), Paragraph("one", body), page_break(), page_break(),
                                  Paragraph("two", body), page_break()])
    pages = [p.extract_text().strip() for p in PdfReader(io.BytesIO(buf.getvalue())).pages]
    assert pages == ["one", "two"]


def test_the_report_breaks_pages_only_through_page_break() -> None:
    """One helper: a plain PageBreak() anywhere in the report modules would bring the blank page back."""
    root = Path(__file__).resolve().parents[1] / "audit"
    plain = [p.name for p in root.glob("report*.py") if "PageBreak(" in p.read_text(encoding="utf-8")
             and p.name != "report_layout.py"]
    assert not plain, plain


# -- what kind of number: the exact labels -----------------------------------------------------------------------


def test_each_kind_of_number_has_its_exact_label_in_the_report_and_json(rendered) -> None:
    """The realistic attack's success is an empirical lower bound (the true risk is never smaller); Opacus' RDP
    epsilon is also a sound upper bound, usually the larger (never called larger outright, never an estimate); the
    membership audit's empirical epsilon is a lower bound at 95% confidence. The same words in the PDF and JSON."""
    from dpaudit.numfmt import LABEL_RDP, LABEL_REALISTIC, empirical_epsilon_label

    prof, _, pages = rendered
    text = " ".join(" ".join(pages).split())
    assert LABEL_REALISTIC == "empirical lower bound: the true risk is never smaller than the attack's result"
    assert LABEL_RDP == "also a sound upper bound, usually the larger"
    assert empirical_epsilon_label(0.95) == "a lower bound at 95% confidence"
    for label in (LABEL_REALISTIC, LABEL_RDP, "a lower bound at 95% confidence"):
        assert label in text, label
    assert "and is larger" not in text and "RDP in parentheses, what Opacus reports)" not in text
    assert "Empirical ε per image (a lower bound at 95% confidence)" in text
    labels = prof.labels
    assert LABEL_REALISTIC in labels["attacks[]"] and LABEL_REALISTIC in labels["decision"]
    assert prof.train[0].labels["epsilon_rdp"].endswith(LABEL_RDP)  # after its kind: sound upper bound
    assert "a lower bound at 95% confidence" in prof.mia_audits[0].labels["epsilon_lower_bound"]


def test_segmentation_runs_show_the_metric_they_were_scored_with(tmp_path: Path) -> None:
    """A segmentation run is scored with Dice, and has no MCC: the appendix's training runs table heads its column
    'Test Dice (liver, tumour)', and the utility per initialisation shows Dice liver (it showed 'n/a' under
    'Test MCC' for every budget before)."""
    from dpaudit.audit.report import render_report
    from dpaudit.audit.segmentation import SegmentationMetrics

    def seg(t: TrainResult) -> TrainResult:
        m = SegmentationMetrics(n_volumes=4, dice={"liver": 0.453, "tumour": 0.05}, iou={"liver": 0.2, "tumour": 0.0},
                                dice_std={"liver": 0.1, "tumour": 0.1}, volumes_with_class={"liver": 4, "tumour": 2},
                                pixel_accuracy=0.9, loss=0.3)
        return dataclasses.replace(t, task="segmentation", metrics=m, val_metrics=m, per_seed=(m,))

    prof = synthetic_profile(with_mia_audit=False)
    runs = tuple(seg(t) for t in prof.train)
    prof = dataclasses.replace(prof, train=runs + tuple(dataclasses.replace(t, init="pre.pt") for t in runs))
    text = " ".join(" ".join(_text(render_report(prof, tmp_path / "seg.pdf").read_bytes())).split())
    runs_table = text.split("Training runs", 1)[1].split("Software and run time", 1)[0]
    assert "Test Dice (liver, tumou" in runs_table and "MCC" not in runs_table  # the header may wrap 'tumour'
    assert "45.3%, 5.0%" in runs_table
    inits = text.split("Utility per initialisation", 1)[1].split("The bounds and the attack use", 1)[0]
    assert "0.453 [0.453, 0.453], n = 2" in inits and "n/a" not in inits and "MCC" not in inits
    assert "Test Dice liver, mean [95% t-interval] over seeds" in inits
    # the subgroups (here from the attack only: test volumes carry no group labels) head the utility column with the
    # runs' metric and show '–', as their test images, where they showed 'Test MCC' over 'n/a (one class)'
    groups = text.split("Subgroups: utility and reconstruction risk", 1)[1].split("Privacy statement", 1)[0]
    assert "Test Dice liver: not measured per group ('–'): the test volumes carry no group labels." in groups
    assert "no Dice liver or attack success" in groups
    assert "MCC" not in groups and "one class" not in groups


@pytest.mark.parametrize("dataset", ["demo", "ham10000"])
def test_built_in_synthetic_data_are_said_to_be_synthetic_on_the_about_page(dataset: str, tmp_path) -> None:
    # On the page that describes the data (it closed the privacy statement, alone on a page of its own in the demo
    # profile's report); every built-in synthetic dataset (it was 'demo' alone: test_segmentation checks demo-ct's).
    from dpaudit.audit.report import render_report

    prof = synthetic_profile(seeds=1, subgroups=False, with_mia_audit=False)
    prof = dataclasses.replace(prof, config=dataclasses.replace(prof.config, dataset=dataset))
    pages = _text(render_report(prof, tmp_path / "r.pdf").read_bytes())
    about = next(i for i, t in enumerate(pages) if "About this report" in t)
    said = [i for i, t in enumerate(pages) if "is synthetic and built into dpaudit" in " ".join(t.split())]
    assert said == ([about] if dataset != "ham10000" else [])

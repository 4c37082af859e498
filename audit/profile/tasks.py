"""The profile's tasks: each a frozen, picklable dataclass (configuration in) whose ``run()`` returns a frozen
result dataclass (result out), keyed by a hash of its result-determining fields.

* :class:`TrainTask`: train one model at one privacy level and seed (``dpaudit.audit.train``), utility included;
* :class:`BoundsTask`: the formal guarantees of one DP-SGD configuration (``dpaudit.bounds.bounds_summary``);
* :class:`AttackTask`: the imprint-layer attack against one checkpoint (``dpaudit.attacks.scenario``);
* :class:`MiaAuditTask`: the one-run canary membership audit of one privacy level (``dpaudit.audit.canary``).

Nothing here imports torch at module level: tasks import what they need when they run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from dpaudit.attacks.scenario import AttackScenario
from dpaudit.audit.profile.schema import (
    AttackOutcome,
    AttackSubgroup,
    BoundsOutcome,
    FprTpr,
    ReroPoint,
    fmt_eps,
)
from dpaudit.audit.results import CanaryAuditResult, TrainResult
from dpaudit.codec import encode
from dpaudit.errors import DpAuditError

#: Points of the ReRo-against-kappa curve (Figure 2 right), log-spaced from 1/N_train to 1.
KAPPA_CURVE_POINTS = 13
#: Best reconstructions kept per privacy level with ``include_images``.
KEPT_IMAGES = 6

ProgressFn = Callable[[str, int, int, str], None]  # (stage, done, total, message)


# --------------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(encode(obj), sort_keys=True).encode()).hexdigest()[:16]


def _eps_tag(eps: float | None) -> str:
    return "nonprivate" if eps is None else f"eps{eps:.6g}".replace("+", "")


@dataclass(frozen=True)
class DataSpec:
    """How to load the dataset: the same splits for every task (split seed = the profile's first seed)."""

    dataset: str
    data_dir: str | None
    image_size: int
    max_images: int | None
    split_seed: int
    labels: str | None = None
    window: tuple[float, float] | None = None
    slice_axis: str = "axial"
    task: str = "classification"
    background_share: float = 1.0

    def load(self):
        """The :class:`dpaudit.data.DatasetSplits` (cached per process: tasks on one worker share it)."""
        key = dataclasses.astuple(self)
        if key not in _SPLITS_CACHE:
            from dpaudit.data import load_splits

            _SPLITS_CACHE.clear()  # one dataset at a time: bounded memory
            if self.task == "segmentation":
                from dpaudit.volumes import load_segmentation_splits

                _SPLITS_CACHE[key] = load_segmentation_splits(
                    self.dataset, image_size=self.image_size, seed=self.split_seed, max_volumes=self.max_images,
                    window=self.window, background_share=self.background_share)
            else:
                _SPLITS_CACHE[key] = load_splits(self.dataset, data_dir=self.data_dir, image_size=self.image_size,
                                                 seed=self.split_seed, max_images=self.max_images, labels=self.labels,
                                                 window=self.window, slice_axis=self.slice_axis)
        return _SPLITS_CACHE[key]


_SPLITS_CACHE: dict[tuple, Any] = {}


class Task(Protocol):
    """A unit of profile work: frozen configuration in, frozen JSON-serialisable result out."""

    stage: ClassVar[str]
    result_type: ClassVar[type]

    def key(self) -> str: ...

    def describe(self) -> str: ...

    def run(self) -> Any: ...


# A task whose result names files in the profile folder also has ``files(result) -> tuple[str, ...]`` (paths
# relative to the folder, inputs and outputs): the task store keeps their digests and reuses the result only while
# they are unchanged (:class:`dpaudit.audit.profile.executor.TaskStore`).


class _TaskBase:
    #: Fields that locate files but do not change the result (excluded from the key).
    _location_fields: ClassVar[tuple[str, ...]] = ()

    def identity(self) -> dict[str, Any]:
        out = {f.name: encode(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
               if f.name not in self._location_fields}
        data = out.get("data")
        if isinstance(data, dict):
            # The DICOM/NIfTI and segmentation options at their defaults leave the key as it was before they existed (profiles
            # resume).
            for name, default in (("labels", None), ("window", None), ("slice_axis", "axial"), ("task", "classification"),
                                  ("background_share", 1.0)):
                if data.get(name) == default:
                    data.pop(name, None)
        return out

    def key(self) -> str:
        return f"{self.stage}-{self.tag()}-{_hash(self.identity())}"  # type: ignore[attr-defined]

    def tag(self) -> str:
        return ""


@dataclass(frozen=True)
class _TrainingSpec(_TaskBase):
    """The fields of one training run (shared by the training and the membership-audit tasks)."""

    data: DataSpec
    arch: str
    epsilon_target: float | None
    seed: int
    epochs: int
    batch_size: int
    physical_batch_size: int | None
    max_grad_norm: float
    lr: float
    augment_multiplicity: int
    target_delta: float | None
    #: The architecture's arguments (canonical JSON) and the BatchNorm replacement; keyword-only, and left out of
    #: the key at their defaults so that earlier profiles resume.
    arch_args: str = field(default="{}", kw_only=True)
    fix_batchnorm: bool = field(default=False, kw_only=True)
    #: The segmentation loss's class weights (``()``: unweighted, as every run before the option existed).
    class_weights: tuple[float, ...] = field(default=(), kw_only=True)

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        for name, default in (("arch_args", "{}"), ("fix_batchnorm", False), ("class_weights", [])):
            if out.get(name) == default:
                out.pop(name, None)
        return out

    def _train_config(self, out: str | None, threads: int | None):
        from dpaudit.audit.train import TrainConfig

        init, trainable = getattr(self, "init", None), getattr(self, "trainable", "all")
        return TrainConfig(init=init, trainable=trainable, arch_args=json.loads(self.arch_args or "{}"),
                           fix_batchnorm=self.fix_batchnorm,
            dataset=self.data.dataset, data_dir=self.data.data_dir, image_size=self.data.image_size,
            max_images=self.data.max_images, labels=self.data.labels, window=self.data.window,
            slice_axis=self.data.slice_axis, arch=self.arch, epsilon=self.epsilon_target,
            non_private=self.epsilon_target is None, target_delta=self.target_delta, epochs=self.epochs,
            batch_size=self.batch_size, physical_batch_size=self.physical_batch_size,
            max_grad_norm=self.max_grad_norm, lr=self.lr, augment_multiplicity=self.augment_multiplicity,
            seed=self.seed, seeds=1, out=out, threads=threads, task=self.data.task,
            background_share=self.data.background_share, class_weights=self.class_weights,
            device=getattr(self, "device", "auto"))


@dataclass(frozen=True)
class TrainTask(_TrainingSpec):
    """Train one model (one privacy level, one seed) and measure its utility on the test split."""

    stage: ClassVar[str] = "train"
    result_type: ClassVar[type] = TrainResult
    #: ``out_dir`` locates files; ``threads`` and ``device`` only say where the numbers are computed (the task key,
    #: and so the resumable store, ignore them, as ``train``'s reuse of a finished run does).
    _location_fields: ClassVar[tuple[str, ...]] = ("out_dir", "threads", "device")

    checkpoint: str
    out_dir: str
    #: torch intra-op threads; None lets ``train`` use the idle cores (a Dask worker passes 1: one task per core).
    threads: int | None = None
    #: Where the model's passes run (``TrainConfig.device``; ``auto``: a visible GPU, else the CPU).
    device: str = "auto"
    #: Weights the run starts from (None: scratch), their SHA-256 (part of the key: another file with the same
    #: name is another run), and which layers train.
    init: str | None = None
    init_sha256: str | None = None
    trainable: str = "all"

    def identity(self) -> dict[str, Any]:
        # A scratch run with every layer trained keeps the key it had before inits existed (profiles resume).
        out = super().identity()
        for name, default in (("init", None), ("init_sha256", None), ("trainable", "all")):
            if out.get(name) == default:
                out.pop(name, None)
        out.pop("init", None)  # the path is a location; the digest identifies the weights
        return out

    def tag(self) -> str:
        return f"{_eps_tag(self.epsilon_target)}-seed{self.seed}" + (f"-{init_tag(self.init, self.init_sha256)}"
                                                                      if self.init else "")

    def describe(self) -> str:
        level = "non-private" if self.epsilon_target is None else f"ε={fmt_eps(self.epsilon_target)}"
        return f"train {level} seed {self.seed}" + (f" from {Path(self.init).name} ({(self.init_sha256 or '')[:8]})"
                                                          if self.init else "")

    def files(self, result: TrainResult) -> tuple[str, ...]:
        """The checkpoint, metrics.json and curve the result describes (relative to the profile folder)."""
        return tuple(p for p in (result.checkpoint, result.metrics_path, result.curve_path) if p)

    def train_config(self):
        return self._train_config(str(Path(self.out_dir) / Path(self.checkpoint).parent), self.threads)

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        config = self.train_config()
        result = _reusable_training(config, Path(self.out_dir) / self.checkpoint)
        if result is None:
            from dpaudit.audit.train import train

            result = train(config, splits=self.data.load())
        # File paths relative to the profile's folder (the folder is moved, shared, or named after a cohort).
        folder = Path(self.checkpoint).parent
        return dataclasses.replace(
            result, checkpoint=self.checkpoint, metrics_path=str(folder / "metrics.json"),
            curve_path=str(folder / "training_curve.png"), wall_seconds=time.perf_counter() - t0)


def init_tag(init: str | None, digest: str | None) -> str:
    """A folder-safe tag of an initialisation: ``init-NAME-DIGEST8``."""
    if init is None:
        return "scratch"
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(init).stem)[:24]
    return f"init-{stem}-{(digest or '')[:8]}"


def init_labels_of(inits: Sequence[str | None], digests: Sequence[str | None]) -> tuple[str, ...]:
    """How a profile's results name each initialisation, one label per entry, never two alike (runs with one label
    are pooled as seeds of one initialisation): ``scratch``, the file's name where no other init has it, else the
    name and the digest's first 8 hex digits as in the init's checkpoint folder (:func:`init_tag`), else also its
    place in ``--inits`` (two copies of one file). Not the folders: a path may name a patient cohort.

    >>> init_labels_of([None, "/a/model.pt", "/b/model.pt", "/c/other.pt"], [None, "ebdabf60aa", "64cb97ecbb", "12"])
    ('scratch', 'model.pt (ebdabf60)', 'model.pt (64cb97ec)', 'other.pt')
    """
    names = ["scratch" if i is None else Path(i).name for i in inits]
    labels = [n if i is None or names.count(n) == 1 else f"{n} ({(d or '')[:8]})"
              for i, n, d in zip(inits, names, digests, strict=True)]
    return tuple(lab if labels.count(lab) == 1 else f"{lab[:-1]}, #{k + 1} in --inits)" if lab.endswith(")")
                 else f"{lab} (#{k + 1} in --inits)" for k, lab in enumerate(labels))


def file_sha256(path: str) -> str:
    """SHA-256 of a file (the identity of an init's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: TrainConfig fields that say where a run is computed or written, not what it computes.
LOCATION_KEYS = ("out", "threads", "device")


def _reusable_training(config: Any, checkpoint: Path) -> TrainResult | None:
    """The result of a finished run in the checkpoint's folder whose recorded configuration equals ``config``,
    else None.

    ``dpaudit train --out`` writes ``model.pt`` and ``metrics.json`` (the :class:`TrainResult` and the full
    configuration); both must be present and readable by this version, the configuration must match field by
    field, and the checkpoint must load safely and carry the same DP configuration. Anything else trains again
    (a stale checkpoint is never silently reused).
    """
    from dpaudit.audit.train import read_metrics

    metrics_path = checkpoint.parent / "metrics.json"
    if not (checkpoint.is_file() and metrics_path.is_file()):
        return None
    try:
        recorded, recorded_config = read_metrics(metrics_path)
    except (OSError, json.JSONDecodeError, DpAuditError):
        return None  # damaged, or written by an earlier dpaudit in another layout
    have = {k: v for k, v in recorded_config.items() if k not in LOCATION_KEYS}
    # Fields added after a run was recorded count as their default there (scratch, every layer trained, an
    # unweighted loss, no option filled from a task default).
    added = {"fix_batchnorm": False, "init": None, "trainable": "all", "class_weights": (), "task_defaults": ()}
    want = {k: encode(v) for k, v in dataclasses.asdict(config).items()
            if k not in LOCATION_KEYS and not (k in added and k not in have and v == added[k])}
    if json.dumps(want, sort_keys=True) != json.dumps(have, sort_keys=True):
        return None
    from dpaudit.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(checkpoint)
    except DpAuditError:
        return None
    dp = ckpt.dp
    if (dp is None) != (config.epsilon is None) or (dp is not None and (
            not math.isclose(dp.noise_multiplier, recorded.noise_multiplier, rel_tol=1e-12)
            or dp.steps != recorded.steps)):
        return None
    return dataclasses.replace(recorded, reused_checkpoint=True)


@dataclass(frozen=True)
class BoundsTask(_TaskBase):
    """Formal guarantees of one DP-SGD configuration (all sound upper bounds, tight accountant).

    ``noise_multiplier`` None calibrates sigma to ``epsilon_target`` with ``dpaudit.bounds.noise_for_epsilon``
    (the curve points of Figure 2 left); the table rows pass the sigma the training actually used.
    """

    stage: ClassVar[str] = "bounds"
    result_type: ClassVar[type] = BoundsOutcome

    epsilon_target: float
    noise_multiplier: float | None
    sampling_probability: float
    steps: int
    target_delta: float
    records_per_patient: int
    kappa_train: float
    kappas: tuple[float, ...]
    curves: bool

    def tag(self) -> str:
        return f"{_eps_tag(self.epsilon_target)}{'' if self.curves else '-curve'}"

    def describe(self) -> str:
        return f"bounds ε={fmt_eps(self.epsilon_target)}" + ("" if self.curves else " (curve point)")

    def run(self) -> BoundsOutcome:
        import numpy as np

        from dpaudit import bounds

        t0 = time.perf_counter()
        q, steps, delta = self.sampling_probability, self.steps, self.target_delta
        sigma = self.noise_multiplier
        if sigma is None:
            # Smallest sigma whose tight PLD epsilon is <= the target (safe end of the bracket): the same
            # calibration training uses, so curve points and table rows agree.
            sigma = float(bounds.noise_for_epsilon(self.epsilon_target, q, steps, delta, accountant="pld"))
        kappas = sorted({self.kappa_train, *self.kappas})
        if self.curves:
            grid = np.geomspace(self.kappa_train, 1.0, KAPPA_CURVE_POINTS)[:-1]  # kappa = 1 is trivial
            kappas_all = sorted({*kappas, *(float(k) for k in grid)})
        else:
            kappas_all = kappas
        summary = bounds.bounds_summary(sigma, q, steps, kappas_all, target_delta=delta,
                                        records_per_patient=self.records_per_patient, membership=self.curves)
        # The upper end of each numerical bracket (equal to gamma for the tight method).
        points = {k: ReroPoint(k, _clip01(w), _clip01(r))
                  for k, w, r in zip(kappas_all, summary.worst_case.upper, summary.relaxed.upper, strict=True)}
        advantage, at_fpr, roc = None, (), ()
        if summary.mia is not None:
            advantage, at_fpr, roc = _mia_parts(summary.mia)
        return BoundsOutcome(
            epsilon_target=self.epsilon_target, noise_multiplier=sigma, sampling_probability=q, steps=steps,
            target_delta=delta, records_per_patient=self.records_per_patient, epsilon=summary.epsilon.value,
            epsilon_rdp=summary.epsilon_rdp, kappa_train=self.kappa_train, rero=tuple(points[k] for k in kappas),
            rero_curve=tuple(points[k] for k in kappas_all) if self.curves else (), method="tight",
            mia_advantage=advantage, mia_tpr_at_fpr=at_fpr, mia_roc=roc, seconds=time.perf_counter() - t0,
            epsilon_patient=None if summary.epsilon_patient is None else summary.epsilon_patient.value)


def _clip01(v: float | None) -> float | None:
    # Bounds come with a numerical error bracket; the reported value is its upper end, which may exceed 1 by
    # rounding. A probability bound above 1 says no more than 1.
    return None if v is None else min(1.0, max(0.0, float(v)))


def _mia_parts(mia: Any) -> tuple[float | None, tuple[FprTpr, ...], tuple[FprTpr, ...]]:
    """Advantage, TPR bound at each FPR of the grid, and the ROC bound of a ``dpaudit.bounds.MiaCurve``."""

    def pairs(fpr: Any, tpr: Any) -> tuple[FprTpr, ...]:
        # A TPR bound below the FPR says nothing more than TPR >= FPR (any test can do that by guessing).
        return tuple(FprTpr(float(a), float(min(1.0, max(b, a)))) for a, b in zip(fpr, tpr, strict=True))

    return float(mia.advantage), pairs(mia.fpr, mia.tpr), pairs(mia.roc_fpr, mia.roc_tpr)


@dataclass(frozen=True)
class AttackTask(_TaskBase):
    """The realistic imprint-layer attack against one checkpoint at its epsilon's attack-scenario sigma."""

    stage: ClassVar[str] = "attack"
    result_type: ClassVar[type] = AttackOutcome
    #: ``arch`` only confirms the architecture the checkpoint records (needed to rebuild the user's own code);
    #: ``threads`` and ``device`` only say where the numbers are computed. None is part of the key.
    _location_fields: ClassVar[tuple[str, ...]] = ("out_dir", "arch", "threads", "device")

    data: DataSpec
    epsilon_target: float | None
    checkpoint: str
    train_key: str
    attack_epochs: int
    target_delta: float
    n_images: int
    decoders: tuple[str, ...]
    connection: str
    bins: int
    observations: int
    seed: int
    include_images: bool
    out_dir: str
    arch: str | None = None
    #: torch intra-op threads; None: the idle cores, at most the process setting (a Dask worker's 1 stays 1).
    #: Under load, torch's default of every core made OpenMP threads wait on each other: an attack task of the
    #: demo profile took 37-54 s instead of about 1 s of CPU.
    threads: int | None = None
    #: Where the model's passes run: the training runs' device (``TrainConfig.device``, ``auto``: a visible GPU).
    device: str = "auto"

    def tag(self) -> str:
        return _eps_tag(self.epsilon_target)

    def describe(self) -> str:
        level = "non-private" if self.epsilon_target is None else f"ε={fmt_eps(self.epsilon_target)}"
        return f"attack {level} ({self.n_images} images)"

    def files(self, result: AttackOutcome) -> tuple[str, ...]:
        """The checkpoint attacked and the reconstructions saved (relative to the profile folder)."""
        return (self.checkpoint, *result.images)

    def scenario(self, n_train: int) -> AttackScenario:
        """The attack of this task as an :class:`AttackScenario` (what ``dpaudit attack --selection random``
        runs with the same settings): the level's epsilon in the attack scenario of ``attack_epochs`` epochs."""
        return AttackScenario(
            n_images=self.n_images, selection="random", epsilons=(self.epsilon_target,), n_train=n_train,
            epochs=self.attack_epochs, target_delta=self.target_delta, decoders=self.decoders,
            connection=self.connection, bins=self.bins, observations=self.observations, seed=self.seed,
            keep_images=KEPT_IMAGES if self.include_images else 0)

    def run(self) -> AttackOutcome:
        import torch

        from dpaudit.runtime import idle_cores

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads if self.threads is not None else min(previous, idle_cores()))
        try:
            return self._run()
        finally:
            torch.set_num_threads(previous)

    def _run(self) -> AttackOutcome:
        from dpaudit.attacks.scenario import attack_checkpoint, scenario_noise, select_images, select_indices
        from dpaudit.checkpoint import load_checkpoint

        t0 = time.perf_counter()
        ckpt = load_checkpoint(Path(self.out_dir) / self.checkpoint, arch=self.arch)
        splits = self.data.load()
        n_train = len(splits.train)
        scenario = self.scenario(n_train)
        result = attack_checkpoint(ckpt, splits, scenario, device=self.device)
        sigma = scenario_noise(ckpt, scenario)[0][0]
        saved: tuple[str, ...] = ()
        if self.include_images:
            from dpaudit.attacks.plots import save_best_reconstructions
            from dpaudit.attacks.scoring import keep_mask

            originals = select_images(splits.train, scenario)[0].permute(0, 2, 3, 1).numpy()
            originals = originals[keep_mask(originals)]
            rel = Path("images") / f"reconstructions-{self.tag()}.png"
            (Path(self.out_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
            save_best_reconstructions(result, originals, Path(self.out_dir) / rel)
            saved = (str(rel),)
        return AttackOutcome(
            epsilon_target=self.epsilon_target, noise_multiplier=float(sigma), sampling_probability=1.0 / n_train,
            steps=self.attack_epochs * n_train, target_delta=self.target_delta, checkpoint=self.checkpoint,
            n_excluded=int(result.n_excluded), image_shape=tuple(int(x) for x in result.image_shape),
            ssim_variant=str(result.ssim_variant), connection=self.connection, bins=int(result.bins),
            observations=self.observations, rows=result.rows, images=saved, seconds=time.perf_counter() - t0,
            notes=tuple(f"attack scenario (batch size 1, q = 1/N): {n}" for n in result.notes),
            subgroups=_subgroup_success(result, splits.train, select_indices(n_train, scenario), splits.unit),
            success_ssim=result.success_ssim)


def _subgroup_success(result, train, idx, unit: str) -> tuple[AttackSubgroup, ...]:
    """Each decoder's attacked and reconstructed (SSIM above the result's ``success_ssim``) images per subgroup of
    the attacked training images, with exact 95% intervals. ``idx``: the attacked images; the attack scores those
    it does not exclude as almost black, in this order. ``unit``: what ``train.patient_ids`` are (the splits'
    ``unit``); a group whose attacked images are held by fewer than
    :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` of them is withheld (its success is those patients'), with the
    next smallest group as its complement (:func:`dpaudit.identifiers.withhold_histogram`)."""
    import numpy as np

    from dpaudit.attacks.scoring import clopper_pearson, keep_mask
    from dpaudit.identifiers import withhold_histogram

    kept = keep_mask(train.images[idx].permute(0, 2, 3, 1).numpy())
    groups = {str(k): np.asarray(v)[idx][kept].astype(str) for k, v in (train.groups or {}).items()}
    units = np.asarray(train.patient_ids)[idx][kept].astype(str)  # the privacy unit of each scored image
    out = []
    for row in result.rows:
        ssim = np.asarray(row.ssim)
        for attr in sorted(groups):
            values = sorted(set(groups[attr].tolist()))
            masks = [groups[attr] == value for value in values]
            units_of = [len(set(units[mask].tolist())) for mask in masks]
            # the values partition the attacked images, whose count and successes are published: a lone withheld
            # group's would follow by subtraction, so its complement goes with it
            _, reasons = withhold_histogram([int(mask.sum()) for mask in masks], units_of, unit,
                                            "the attacked training images")
            for value, mask, held, reason in zip(values, masks, units_of, reasons, strict=True):
                if reason is not None:
                    out.append(AttackSubgroup(row.decoder, attr, value, None, None, None, None, withheld=True,
                                              reason=reason))
                    continue
                n, k = int(mask.sum()), int((ssim[mask] > result.success_ssim).sum())
                lo, hi = clopper_pearson(k, n)
                out.append(AttackSubgroup(row.decoder, attr, value, n, k, lo, hi, units=held))
    return tuple(out)


@dataclass(frozen=True)
class MiaAuditTask(_TrainingSpec):
    """The empirical canary membership audit of one privacy level: a separate training run with the same DP
    configuration plus m coin-flipped, mislabelled canaries (Steinke, Nasr and Jagielski 2023, one run)."""

    stage: ClassVar[str] = "mia"
    result_type: ClassVar[type] = CanaryAuditResult
    _location_fields: ClassVar[tuple[str, ...]] = ("threads", "device")

    canaries: int
    confidence: float = 0.95
    threads: int | None = None
    #: Where the model's passes run: the training runs' device (``TrainConfig.device``, ``auto``: a visible GPU).
    device: str = "auto"

    def tag(self) -> str:
        return _eps_tag(self.epsilon_target)

    def describe(self) -> str:
        return f"membership audit ε={fmt_eps(self.epsilon_target)} ({self.canaries} canaries)"

    def run(self) -> CanaryAuditResult:
        from dpaudit.audit.canary import CanaryAuditConfig, run_canary_audit

        return run_canary_audit(CanaryAuditConfig(train=self._train_config(None, self.threads),
                                                  canaries=self.canaries, confidence=self.confidence,
                                                  seed=self.seed), splits=self.data.load())

"""``run_profile``: the per-epsilon risk profile (train, bound, attack, optionally the membership audit).

The profile plans its tasks (:mod:`dpaudit.audit.profile.tasks`) stage by stage, runs those not yet in the
:class:`~dpaudit.audit.profile.executor.TaskStore` on an :class:`~dpaudit.audit.profile.executor.Executor`, and
writes ``DIR/profile.json`` (:class:`~dpaudit.audit.profile.schema.Profile`). Training also reuses a checkpoint
already in ``DIR/checkpoints/`` when its recorded configuration matches. Rendering the PDF is the caller's step
(``dpaudit.audit.report.render_report``), so the profile never imports the report stack.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpaudit.audit.checklist import build_checklist
from dpaudit.audit.decision import Limit, check_distinct, with_decision
from dpaudit.audit.profile.executor import Executor, InProcessExecutor, ProgressFn, TaskStore, _run_stage
from dpaudit.audit.profile.schema import (
    SCHEMA_VERSION,
    BoundsOutcome,
    DatasetInfo,
    PackageVersion,
    PatientRisk,
    PrivacyInfo,
    Profile,
    ProfileConfig,
    StageTime,
)
from dpaudit.audit.profile.tasks import (
    AttackTask,
    BoundsTask,
    DataSpec,
    MiaAuditTask,
    TrainTask,
    _eps_tag,
    file_sha256,
    init_labels_of,
    init_tag,
)
from dpaudit.codec import dumps
from dpaudit.config import class_weights_for
from dpaudit.errors import DataError, invalid
from dpaudit.outputs import write_atomic

# --------------------------------------------------------------------------------------------------------------
# The profile
# --------------------------------------------------------------------------------------------------------------

#: Extra epsilons for the ReRo-against-epsilon curve (Figure 2 left), beside the profiled ones.
CURVE_EPSILONS = (0.5, 2.0, 4.0, 12.0, 32.0, 64.0, 128.0)


def _data_spec(config: ProfileConfig) -> DataSpec:
    return DataSpec(config.dataset, config.data_dir, config.image_size, config.max_images, config.seed,
                    config.labels, config.window, config.slice_axis, config.task, config.background_share)


def resolve_privacy(config: ProfileConfig, splits: Any) -> PrivacyInfo:
    """The profile's privacy unit and k: ``--records-per-patient`` when given, else from the data
    (:func:`dpaudit.data.privacy_unit`: the most images of one patient in the training split)."""
    from dpaudit.config import check_records_per_patient
    from dpaudit.data import privacy_unit

    given = config.records_per_patient
    # "image": k is given (and must cover the most copies of one image in training)
    unit = privacy_unit(splits, config.privacy_unit if given is None else "image", given_k=given)
    d = unit.images_per_unit
    if given is None:
        return PrivacyInfo(unit.unit, unit.records_per_patient, unit.data_unit, unit.chosen_by, d.n_units, d.max,
                           d.mean, d.histogram)
    name = "patient" if given > 1 or config.privacy_unit == "patient" else "image"
    # a k below the data's would state a per-patient guarantee that does not hold for the largest patient
    check_records_per_patient(given, unit.data_unit, d.max, unit=name)
    return PrivacyInfo(name, given, unit.data_unit, "records_per_patient", d.n_units, d.max, d.mean, d.histogram)


def _patient_risk(privacy: PrivacyInfo, bounds: Sequence[BoundsOutcome]) -> tuple[PatientRisk, ...]:
    """With the image as the unit on data whose patients have k > 1 training images, each budget's guarantees per
    patient (the k images moving together): tight PLD epsilon and the worst-case ReRo bound at the budget's kappa,
    sound upper bounds (one accountant and one ReRo call per budget). Empty otherwise."""
    if not privacy.image_unit_hides_patients:
        return ()
    from dpaudit.bounds import epsilon_bound, rero_bound

    k = privacy.data_records_per_patient
    out = []
    for b in bounds:
        run = {"noise_multiplier": b.noise_multiplier, "sampling_probability": b.sampling_probability,
               "steps": b.steps}
        eps = epsilon_bound(target_delta=b.target_delta, records_per_patient=k, **run).value
        worst = rero_bound(kappa=[b.kappa_train], threat_model="worst_case", records_per_patient=k, **run)
        out.append(PatientRisk(b.epsilon_target, k, b.target_delta, float(eps), b.kappa_train,
                               min(1.0, max(0.0, float(worst.upper[0])))))  # upper end of the bracket, as the table
    return tuple(out)


def plan_training(config: ProfileConfig, out_dir: str | os.PathLike, threads: int | None = None, *,
                  label_names: Sequence[str] | None = None, device: str = "auto") -> list[TrainTask]:
    """The training tasks of a profile: every initialisation times every privacy level times every seed
    (inits in the order given, non-private last within each). Scratch runs keep their folders and task keys."""
    data = _data_spec(config)
    # The data's classes decide whether the default class weights (MSD Liver's) apply: the runs' weights are the
    # ones they train with (their keys too), as train() would choose them.
    class_weights = config.class_weights if label_names is None else class_weights_for(config, label_names)[0]
    tasks = []
    for init in config.inits:
        path = None if init == "scratch" else str(Path(init).resolve())
        digest = None if path is None else file_sha256(path)
        folder = Path("checkpoints") if path is None else Path("checkpoints") / init_tag(path, digest)
        for eps in config.levels:
            for i in range(config.seeds):
                seed = config.seed + i
                ckpt = folder / f"{_eps_tag(eps)}-seed{seed}" / "model.pt"
                tasks.append(TrainTask(
                    data=data, arch=config.arch, epsilon_target=eps, seed=seed, epochs=config.epochs,
                    batch_size=config.batch_size, physical_batch_size=config.physical_batch_size,
                    max_grad_norm=config.max_grad_norm, lr=config.lr,
                    augment_multiplicity=config.augment_multiplicity, target_delta=config.target_delta,
                    checkpoint=str(ckpt), out_dir=str(Path(out_dir).resolve()), threads=threads, init=path,
                    init_sha256=digest, trainable=config.trainable if path is not None else "all",
                    arch_args=config.arch_args, fix_batchnorm=config.fix_batchnorm,
                    class_weights=class_weights, device=device))
    return tasks


def _check_models(tasks: Sequence[TrainTask], splits: Any) -> None:
    """Build each initialisation's model once, as its runs will (a private run's where there is one: the DP-SGD layer
    check), and load its weights file: a wrong architecture, layer or weights file stops the profile before any
    run trains, not after the scratch runs have (raises what :func:`dpaudit.audit.train.prepare_model` raises)."""
    import torch

    from dpaudit.audit.train import prepare_model

    first: dict[str | None, TrainTask] = {}
    for t in tasks:
        if t.init not in first or (first[t.init].epsilon_target is None and t.epsilon_target is not None):
            first[t.init] = t
    with torch.random.fork_rng(devices=[]):
        for t in first.values():
            prepare_model(t.train_config(), splits.num_classes, splits.in_channels, splits.image_shape)


def _computed_on(device: str, executor: Any) -> str:
    """Where a profile's model passes run, in words: 'cpu', 'cuda:0 (NVIDIA H200)'; with a distributed executor
    the name as given, resolved on each worker."""
    from dpaudit.audit.profile.executor import InProcessExecutor, LocalProcessExecutor

    if executor is not None and not isinstance(executor, InProcessExecutor | LocalProcessExecutor):
        return f"{device} (resolved on each worker)"
    from dpaudit.runtime import describe_device

    return describe_device(device)


def _with_reused(computed_on: str, stages: Sequence[StageTime]) -> str:
    """``computed_on`` of this invocation, and how many results it took from the task store instead: the device is
    not part of a task's key, so those ran where the invocation that made them ran (another machine's, perhaps)."""
    passes = [s for s in stages if s.stage in ("train", "attack", "mia", "federated")]  # the stages with a model
    reused = sum(s.tasks_reused for s in passes)
    if not reused:
        return computed_on
    total = reused + sum(s.tasks_run for s in passes)
    return (f"{computed_on} (this invocation; {reused} of {total} training and attack results were reused from an "
            "earlier one and ran where it ran)")


def _environment() -> tuple[PackageVersion, ...]:
    from importlib import metadata

    out = []
    for name in ("torch", "opacus", "numpy", "scipy", "scikit-image", "matplotlib", "reportlab"):
        try:
            out.append(PackageVersion(name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(out)


#: What a profile writes in its folder (``dpaudit report`` adds the report-LIMITS.pdf of other limits): all of it
#: the configuration's, replaced as a whole by ``--overwrite``.
PROFILE_OUTPUTS = ("profile.json", "report.pdf", "report-*.pdf", "report.stale.pdf", "tasks", "checkpoints", "images")
#: What a run of the same configuration writes anew (the task store, its checkpoints and images are reused).
PROFILE_REWRITES = ("profile.json", "report.pdf")


def profile_identity(config: ProfileConfig, limits: Sequence[Limit]) -> dict[str, Any]:
    """The part of ``profile.json`` that :func:`same_profile` compares: what ``dpaudit profile`` writes in its
    folder's marker when the run starts."""
    from dpaudit.codec import encode

    return json.loads(json.dumps({"config": encode(config), "decision": {"limits": encode(tuple(limits))}},
                                 allow_nan=False))


def same_profile(config: ProfileConfig, limits: Sequence[Limit], stored: Any) -> bool:
    """Whether a ``profile.json`` (as read) holds the profile of ``config`` decided against ``limits``: running it
    again there resumes or repeats it, and replaces nothing the board could have been given."""
    from dpaudit.codec import encode

    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        return False

    def plain(obj: Any) -> Any:
        return json.loads(json.dumps(encode(obj), allow_nan=False))

    mine = plain(config)
    recorded = stored["config"]
    decision = stored.get("decision")
    stored_limits = decision.get("limits") if isinstance(decision, dict) else []
    # task_defaults says which values were defaults, not what ran: spelling a default out is the same profile.
    return (all(recorded.get(k) == v for k, v in mine.items() if k != "task_defaults")
            and (stored_limits or []) == plain(tuple(limits)))


def run_profile(config: ProfileConfig, out_dir: str | os.PathLike, *, executor: Executor | None = None,
                progress: ProgressFn | None = None, threads: int | None = None,
                limits: Sequence[Limit] = (), device: str = "auto") -> Profile:
    """Run (or resume) a full profile and write ``DIR/profile.json`` (render the PDF from it with
    :func:`dpaudit.audit.report.render_report`).

    Parameters
    ----------
    config:
        The profile.
    out_dir:
        Folder for checkpoints, the task store and ``profile.json``. A folder holding a previous
        (partial) run of the same configuration resumes it: finished tasks are not run again.
    executor:
        Where tasks run; :class:`InProcessExecutor` by default.
    progress:
        ``progress(stage, done, total, message)`` after each task (and at each stage's start).
    threads:
        torch threads of each training run and attack (in process); None uses the idle cores. Training results
        depend on the thread count in the last bits (and so, through training, on utility): pin it to reproduce a run
        exactly. Not part of the task keys: a resumed profile reuses runs made with another count.
    limits:
        The ethics board's limits; with any, ``profile.json`` holds the decision (:mod:`dpaudit.audit.decision`).
        Checked before any task runs.
    device:
        Where the training runs', the attack's and the membership audit's model passes run: ``auto`` (a visible
        CUDA GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. A GPU's results differ from the CPU's in the last
        bits (and so, through training, in utility); ``profile.json`` records where the runs were computed. Not
        part of the task keys, like ``threads``. Raises :class:`~dpaudit.errors.ConfigError` for a name that is not
        one of these or a GPU that is not visible, before any task runs.

    Returns
    -------
    Profile
        The frozen result, identical to what ``profile.json`` holds.
    """
    if not isinstance(config, ProfileConfig):
        raise invalid("config", type(config).__name__, "a ProfileConfig")
    limits = tuple(limits)
    for lim in limits:
        if not isinstance(lim, Limit):
            raise invalid("limits", type(lim).__name__, "dpaudit.audit.decision.Limit objects")
    check_distinct(limits)  # before any training: two limits on one quantity are refused
    from dpaudit import __version__
    from dpaudit.runtime import check_device

    check_device(device)
    computed_on = _computed_on(device, executor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = TaskStore(out)
    executor = executor or InProcessExecutor()
    stages: list[StageTime] = []

    # Data once in the driver: sizes and metadata for the plan and the report (tasks load it themselves).
    t0 = time.perf_counter()
    splits = _data_spec(config).load()
    n_train = len(splits.train)
    if config.batch_size > n_train:
        raise invalid("batch_size", config.batch_size, f"at most the number of training images ({n_train})",
                      f"pass --batch-size {n_train} or less", cls=DataError)
    if config.mia_audit and config.canaries >= n_train:
        raise invalid("canaries", config.canaries, f"fewer than the training images ({n_train})",
                      f"pass --canaries {n_train - 1} or fewer (they are drawn from the training split)",
                      cls=DataError)
    groups = getattr(splits.test, "groups", None) or {}
    from dpaudit.data import require_classes

    require_classes(splits, "the profile's training")
    if config.federated:
        # The federated stage runs last: a partition it would refuse (a patient at two sites, a site without
        # training images) is refused now, before any training.
        from dpaudit.audit.federated.partition import partition_splits

        partition_splits(splits, config.federated_partition, config.federated_clients, seed=config.seed,
                         option_prefix="--federated-")
    weights_note = class_weights_for(config, splits.label_names)[1]
    privacy = resolve_privacy(config, splits)
    k = privacy.records_per_patient
    info = DatasetInfo(name=splits.name, n_train=n_train, n_val=len(splits.val), n_test=len(splits.test),
                       image_shape=tuple(int(x) for x in splits.image_shape),
                       label_names=tuple(str(x) for x in splits.label_names),
                       subgroup_attributes=tuple(sorted(str(k) for k in groups)), privacy=privacy,
                       skipped=tuple(sorted(splits.skipped.items())),
                       notes=tuple(splits.notes) + ((weights_note,) if weights_note else ()))
    if progress is not None:
        from dpaudit.data import loading_notes

        for note in (*loading_notes(splits), *((weights_note,) if weights_note else ())):
            progress("data", 1, 1, f"note: {note}")
        progress("data", 1, 1, privacy.describe())
    stages.append(StageTime("data", time.perf_counter() - t0, 1, 0))

    # Stage 1: training (every level x seed).
    train_tasks = plan_training(config, out, threads, label_names=splits.label_names, device=device)
    _check_models(train_tasks, splits)
    train_res, st = _run_stage("train", train_tasks, store, executor, progress)
    stages.append(st)
    # Each run carries its initialisation's label, unique in the profile (two files named model.pt, as every
    # `dpaudit train --out` writes, are two initialisations, not one pooled over twice the seeds).
    inits = list(dict.fromkeys((t.init, t.init_sha256) for t in train_tasks))
    label_of = dict(zip((i for i, _ in inits), init_labels_of(*zip(*inits, strict=True)), strict=True))
    trains = tuple(dataclasses.replace(train_res[t.key()], init=label_of[t.init]) for t in train_tasks)
    # The bounds, the attack and the membership audit use the first initialisation's runs.
    primary = train_tasks[0].init
    first = {t.epsilon_target: (t, train_res[t.key()]) for t in train_tasks
             if t.seed == config.seed and t.init == primary}

    # Stage 2: formal bounds of each trained configuration, and the curve against epsilon.
    # Segmentation: the volume is the patient unit (seed paper: N_train = volumes), so kappa = 1 / (training
    # volumes); k (resolve_privacy) is the most slices one volume contributes.
    kappa_train = 1.0 / (splits.n_train_volumes if config.segmentation else n_train)
    bound_tasks = []
    for eps in config.epsilons:
        r = first[eps][1]
        bound_tasks.append(BoundsTask(eps, r.noise_multiplier, r.sampling_probability, r.steps, r.target_delta,
                                      k, kappa_train, config.kappas, True))
    ref = first[config.epsilons[0]][1]
    moderate = [e for e in config.epsilons if e < 1e4] or [20.0]
    curve_eps = [e for e in CURVE_EPSILONS
                 if min(moderate) / 4 <= e <= 4 * max(moderate) and e not in config.epsilons]
    curve_tasks = [BoundsTask(e, None, ref.sampling_probability, ref.steps, ref.target_delta,
                              k, kappa_train, (), False) for e in curve_eps]
    bounds_res, st = _run_stage("bounds", bound_tasks + curve_tasks, store, executor, progress)
    stages.append(st)
    patient_risk = _patient_risk(privacy, [bounds_res[t.key()] for t in bound_tasks])

    # Stage 3: the realistic attack against each level's first-seed checkpoint.
    attack_epochs = config.attack_epochs or config.epochs
    attack_tasks = []
    for eps in config.levels:
        t, r = first[eps]
        attack_tasks.append(AttackTask(
            data=_data_spec(config), epsilon_target=eps, checkpoint=r.checkpoint, train_key=t.key(),
            attack_epochs=attack_epochs, target_delta=r.target_delta, n_images=config.attack_images,
            decoders=config.decoders, connection=config.connection, bins=config.bins,
            observations=config.observations, seed=config.seed, include_images=config.include_images,
            out_dir=str(out.resolve()), arch=config.arch, threads=threads, device=device))
    attack_res, st = _run_stage("attack", attack_tasks, store, executor, progress)
    stages.append(st)

    # Stage 4 (optional): the empirical membership audit, one extra training run per privacy level.
    mia_tasks = [MiaAuditTask(
        data=_data_spec(config), arch=config.arch, epsilon_target=eps, seed=config.seed, epochs=config.epochs,
        batch_size=config.batch_size, physical_batch_size=config.physical_batch_size,
        max_grad_norm=config.max_grad_norm, lr=config.lr, augment_multiplicity=config.augment_multiplicity,
        target_delta=config.target_delta, canaries=config.canaries, threads=threads, arch_args=config.arch_args,
        fix_batchnorm=config.fix_batchnorm, device=device) for eps in config.epsilons
    ] if config.mia_audit else []
    mia_res: dict[str, Any] = {}
    if mia_tasks:
        mia_res, st = _run_stage("mia", mia_tasks, store, executor, progress)
        stages.append(st)

    # Stage 5 (optional): the federated section (FedAvg across sites with sample-level DP, the bin attack).
    federated = None
    if config.federated:
        from dpaudit.audit.profile.federated_task import FederatedTask

        fed_task = FederatedTask(
            data=_data_spec(config), arch=config.arch, epsilon_target=config.federated_epsilon,
            clients=config.federated_clients, partition=config.federated_partition, rounds=config.epochs,
            batch_size=config.batch_size, max_grad_norm=config.max_grad_norm, lr=config.lr,
            target_delta=config.target_delta, seed=config.seed, threads=threads, privacy_unit=config.privacy_unit,
            arch_args=config.arch_args, fix_batchnorm=config.fix_batchnorm, device=device)
        fed_res, st = _run_stage("federated", [fed_task], store, executor, progress)
        stages.append(st)
        federated = fed_res[fed_task.key()]

    profile = Profile(
        schema_version=SCHEMA_VERSION, dpaudit_version=__version__,
        created=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        command=config.command(str(out), tuple(limits or ()), computed_on), config=config, dataset=info, train=trains,
        bounds=tuple(bounds_res[t.key()] for t in bound_tasks),
        bounds_curve=tuple(bounds_res[t.key()] for t in curve_tasks),
        attacks=tuple(attack_res[t.key()] for t in attack_tasks),
        mia_audits=tuple(mia_res[t.key()] for t in mia_tasks), stages=tuple(stages),
        environment=_environment(), federated=federated, patient_risk=patient_risk,
        computed_on=_with_reused(computed_on, stages))
    profile = with_decision(dataclasses.replace(profile, checklist=build_checklist(profile)), limits)
    # profile.json is final when written: `dpaudit report DIR/profile.json` renders the PDF from it.
    write_atomic(out / "profile.json", dumps(profile))
    return profile



"""The schema of ``profile.json``: the profile's configuration and the frozen result of every stage.

Every class serialises through the one codec in :mod:`dpaudit.codec` (:class:`~dpaudit.codec.JsonResult`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dpaudit.attacks.decoders import DECODER_CHOICES, decoder_choice
from dpaudit.attacks.federated_results import FederatedAttackRow
from dpaudit.attacks.results import SUCCESS_SSIM, AttackRow
from dpaudit.attacks.scenario import CONNECTIONS
from dpaudit.audit.checklist import Checklist
from dpaudit.audit.configs import DEFAULT_CANARIES
from dpaudit.audit.decision import Decision
from dpaudit.audit.results import CanaryAuditResult, TrainResult, Utility
from dpaudit.codec import JsonResult
from dpaudit.config import DEFAULT_DATASET, DELTA_EXAMPLE, PROFILE_DEFAULTS, data_loading_notes, record_noun
from dpaudit.errors import invalid
from dpaudit.identifiers import (
    MIN_SUBGROUP_UNITS,
    check_site_complements,
    check_site_test,
    complement_sites,
    histogram_reasons,
    site_null_reasons,
    upgrade_histogram,
)
from dpaudit.numfmt import LABEL_REALISTIC

# --------------------------------------------------------------------------------------------------------------
# The schema of profile.json
# --------------------------------------------------------------------------------------------------------------

#: Bumped whenever a field changes meaning; ``dpaudit report`` refuses files of another major version.
SCHEMA_VERSION = 1



def _rate(field: str, value: float | None) -> float | None:
    """Validate a probability-like result (fractions, bounds, TPRs), allowing None."""
    if value is None:
        return None
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise invalid(field, value, "in [0, 1]", "this is a bug in the producer of the result; report it")
    return v


def _epsilons(value: Any) -> tuple[float, ...]:
    try:
        eps = tuple(float(e) for e in value)
    except (TypeError, ValueError):
        raise invalid("epsilons", value, "a list of numbers, e.g. 1,8,20,1e9", "pass e.g. --epsilons 1,8,20,1e9") from None
    if not eps:
        raise invalid("epsilons", value, "a non-empty list", "pass e.g. --epsilons 1,8,20,1e9")
    for e in eps:
        if not math.isfinite(e) or e <= 0:
            raise invalid("epsilons", e, "finite numbers > 0",
                          "pass positive privacy budgets such as 1,8,20,1e9 and --non-private for the baseline")
    if len(set(eps)) != len(eps):
        raise invalid("epsilons", list(eps), "distinct values", "remove the duplicate epsilon")
    return tuple(sorted(eps))


@dataclass(frozen=True, eq=False)
class ProfileConfig(JsonResult):
    """Everything that defines a profile: the data, the model, the training, the attack and the bounds.

    Frozen and validated at construction. The same object is stored in ``profile.json`` so that the report can
    print every parameter and the exact command that reproduces it (:meth:`command`).

    Attributes
    ----------
    dataset, data_dir, image_size:
        The dataset name as ``dpaudit.data.load_splits`` takes it (``demo``, ``ham10000``, a MedMNIST flag,
        ``folder:PATH``, ``dicom:PATH``, ``nifti:PATH``, ``csv:FILE``), its folder, and the side length images are
        resized to (None: the dataset's default, :func:`dpaudit.config.default_image_size`: 28 for the built-in
        demos, 64 otherwise).
    labels, window, slice_axis:
        ``load_splits``' options for DICOM and NIfTI data (a labels CSV, ``(low, high)`` modality values mapped to
        0 and 1, the NIfTI slice axis).
    max_images:
        At most this many images in total (``load_splits``' ``max_images``: the demo's size, or a seeded subset
        of a real dataset for quick looks and tests); None keeps all (the demo: 2000).
    arch:
        Architecture spec (:mod:`dpaudit.models`): ``resnet9``, ``unet``, ``monai:NAME``, the user's own code.
    epsilons:
        Target privacy budgets (tight PLD epsilon at ``target_delta``), sorted ascending.
    non_private:
        Also train the non-private baseline (noise multiplier 0, no clipping guarantee).
    seeds, seed:
        Number of training runs per privacy level (utility mean and spread) and the first seed.
    epochs, batch_size, physical_batch_size, max_grad_norm, lr, augment_multiplicity:
        DP-SGD training (Poisson sampling at q = batch_size / N_train, NAdam).
    target_delta:
        delta; None lets training choose its default (and the choice is recorded in the results).
    kappas:
        The user's priors kappa in addition to 1/N_train (always reported, as in the seed paper).
    privacy_unit:
        ``"patient"``, ``"image"``, or None: patient when the data carry patient (or lesion) ids, else image.
    records_per_patient:
        k images per patient; None takes k from the data (the most images of one patient in the training split,
        with the patient unit; 1 with the image unit). Passing k makes the unit the patient.
    attack_images, decoders, connection, bins, observations:
        The realistic imprint-layer attack (spec attack.md): images attacked per privacy level, decoders
        (the strongest is reported and named), imprint connection, bins K, observations of each image.
    attack_epochs:
        Epochs of the attack scenario (batch size 1, q = 1/N, T = epochs * N); None uses ``epochs``.
    mia_audit, canaries:
        Also run the empirical canary membership audit (one extra training run per privacy level).
    include_images:
        Put reconstructions next to originals in the report (patient images: off by default).
    arch_args, fix_batchnorm:
        The architecture's keyword arguments as a JSON object (stored canonically: sorted keys) and whether
        BatchNorm is replaced by GroupNorm (``dpaudit train --arch-args``, ``--fix-batchnorm``).
    inits, trainable:
        Initialisations every budget is trained from, side by side: ``scratch`` (random) and/or weights files
        (``dpaudit train --init``; never downloaded); the bounds and the attack use the first one's runs
        (the membership audit trains from scratch). ``trainable``: ``all``, ``head`` or ``last-N`` (for runs from a file). The
        guarantee covers the fine-tuning data only, not the data an init was trained on.
    task, background_share, class_weights:
        ``classification`` or ``segmentation`` (None: inferred from the dataset; ``demo-ct`` and ``msd:PATH`` are
        segmentation), the training split's share of background slices, and the segmentation loss's weight per
        class (``()``: unweighted; :class:`dpaudit.audit.train.SampleMeanCrossEntropy`).
    task_defaults:
        The options that were None and took their task's value from :data:`dpaudit.config.PROFILE_DEFAULTS`
        (``arch``, ``epsilons``, ``seeds``, ``epochs``, ``batch_size``, ``lr``, ``class_weights``); filled by the
        configuration, stored in profile.json, printed by ``dpaudit profile`` for segmentation and listed in the
        report's configuration table.
    federated, federated_clients, federated_partition, federated_epsilon:
        Also run the federated section (``dpaudit.audit.federated``): FedAvg over ``federated_clients`` sites
        with sample-level DP at ``federated_epsilon`` (the worst site meets it), ``epochs`` rounds of one local
        epoch, and the malicious server's bin attack with and without secure aggregation.
    """

    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    image_size: int | None = None  # None: the dataset's (dpaudit.config.default_image_size), stored resolved
    max_images: int | None = None
    labels: str | None = None
    window: tuple[float, float] | None = None
    slice_axis: str = "axial"
    # None: the task's default (dpaudit.config.PROFILE_DEFAULTS, where the measurements behind them are), as
    # epsilons, seeds, epochs, batch_size, lr and class_weights; ``task_defaults`` records which of them took it.
    arch: str | None = None
    epsilons: tuple[float, ...] | None = None
    non_private: bool = True
    seeds: int | None = None
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    physical_batch_size: int | None = None
    max_grad_norm: float = 1.0
    lr: float | None = None
    augment_multiplicity: int = 0
    target_delta: float | None = None
    kappas: tuple[float, ...] = ()
    privacy_unit: str | None = None
    records_per_patient: int | None = None
    attack_images: int = 32
    decoders: tuple[str, ...] = DECODER_CHOICES["all"]
    connection: str = "linear"
    bins: int = 10
    observations: int = 1
    attack_epochs: int | None = None
    mia_audit: bool = False
    canaries: int = DEFAULT_CANARIES
    include_images: bool = False
    inits: tuple[str, ...] = ("scratch",)
    trainable: str = "all"
    arch_args: str = "{}"
    fix_batchnorm: bool = False
    federated: bool = False
    federated_clients: int = 5
    federated_partition: str = "iid"
    federated_epsilon: float = 8.0
    # Segmentation (dpaudit.volumes): ``window`` above is the CT window (default the liver window). The privacy
    # unit is then the patient = volume (kappa = 1 / training volumes, k = slices per volume).
    task: str | None = None
    background_share: float = 1.0
    class_weights: tuple[float, ...] | None = None
    task_defaults: tuple[str, ...] = ()
    #: Where the options left at None take their value (the command line's help prints it).
    TASK_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = PROFILE_DEFAULTS

    def __post_init__(self) -> None:
        from dpaudit.config import apply_task_defaults, parse_class_weights
        from dpaudit.errors import check_int, check_positive, check_probability
        from dpaudit.volumes import is_segmentation_dataset

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise invalid("dataset", self.dataset, "a dataset name", "pass e.g. --dataset demo")
        # The task first: it decides the defaults of the options left at None (PROFILE_DEFAULTS, one table).
        inferred = "segmentation" if is_segmentation_dataset(self.dataset) else "classification"
        if self.task is not None and self.task != inferred:
            raise invalid("task", self.task, f"{inferred} for --dataset {self.dataset}",
                          "leave out --task, or pass demo-ct / msd:PATH for segmentation")
        put("task", inferred)
        put("class_weights", parse_class_weights(self.class_weights))
        put("task_defaults", apply_task_defaults(self, PROFILE_DEFAULTS, inferred))
        if inferred == "classification" and self.class_weights:
            raise invalid("class_weights", list(self.class_weights), "none for classification (class weights are "
                          "a segmentation loss option)", "leave out --class-weights")
        if inferred == "segmentation" and self.mia_audit:
            raise invalid("mia_audit", True, "off for segmentation (the canary audit mislabels whole images)",
                          "leave out --mia-audit")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            put("data_dir", str(self.data_dir))
        from dpaudit.config import check_max_images, image_size_for

        put("image_size", image_size_for(self.dataset, self.image_size))
        if self.max_images is not None:
            put("max_images", check_max_images(self.max_images))
        if not isinstance(self.arch, str) or not self.arch:
            raise invalid("arch", self.arch, "an architecture name", "pass e.g. --arch resnet9")
        from dpaudit.models import check_arch_for_task

        check_arch_for_task(self.arch, inferred)
        put("epsilons", _epsilons(self.epsilons))
        if not isinstance(self.non_private, bool):
            raise invalid("non_private", self.non_private, "true or false", "pass --non-private or --no-non-private")
        put("seeds", check_int("seeds", self.seeds, minimum=1, fix="pass --seeds 3 for a mean and a spread"))
        put("seed", check_int("seed", self.seed, minimum=0, fix="pass --seed 0 or another whole number >= 0"))
        put("epochs", check_int("epochs", self.epochs, minimum=1, fix="pass --epochs 1 or more"))
        put("batch_size", check_int("batch_size", self.batch_size, minimum=1,
                                    fix="pass --batch-size 1 or more, e.g. 64"))
        if self.physical_batch_size is not None:
            put("physical_batch_size", check_int("physical_batch_size", self.physical_batch_size, minimum=1,
                                                 fix="pass --physical-batch-size 1 or more, or leave it out"))
        put("max_grad_norm", check_positive("max_grad_norm", self.max_grad_norm, fix="pass e.g. --max-grad-norm 1.0"))
        put("lr", check_positive("lr", self.lr, fix="pass e.g. --lr 2e-3"))
        put("augment_multiplicity", check_int("augment_multiplicity", self.augment_multiplicity, minimum=0,
                                              fix="pass --augment-multiplicity 0 (none) or K >= 1 flipped views"))
        if self.target_delta is not None:
            put("target_delta", check_probability("target_delta", self.target_delta,
                                                  fix=f"pass a delta well below 1/N, {DELTA_EXAMPLE}"))
        put("kappas", tuple(sorted({check_probability(
            "kappa", k, fix="pass the blind-guess success probability, e.g. --kappa 1e-3") for k in self.kappas})))
        if self.records_per_patient is not None:
            put("records_per_patient", check_int("records_per_patient", self.records_per_patient, minimum=1,
                                                 fix="pass --records-per-patient 1 or more, or leave it out (k "
                                                     "from the data)"))
        if self.privacy_unit not in (None, "patient", "image"):
            raise invalid("privacy_unit", self.privacy_unit, "patient or image",
                          "pass --privacy-unit patient or --privacy-unit image")
        if self.privacy_unit == "image" and (self.records_per_patient or 1) > 1:
            raise invalid("records_per_patient", self.records_per_patient, "1 (or left out) with --privacy-unit image",
                          "leave out --records-per-patient, or pass --privacy-unit patient")
        if self.labels is not None and not isinstance(self.labels, str):
            put("labels", str(self.labels))
        from dpaudit.config import parse_window

        put("window", parse_window(self.window))
        if self.slice_axis not in ("axial", "coronal", "sagittal"):
            raise invalid("slice_axis", self.slice_axis, "axial, coronal or sagittal", "pass --slice-axis axial")
        put("attack_images", check_int("attack_images", self.attack_images, minimum=1,
                                       fix="pass --attack-images 64"))
        decoders = tuple(self.decoders)
        if decoder_choice(decoders) is None:
            raise invalid("decoders", list(decoders), "the decoders of one --decoder value: "
                          + ", ".join(f"{k} {list(v)}" for k, v in DECODER_CHOICES.items()), "pass --decoder all")
        put("decoders", decoders)
        if self.connection not in CONNECTIONS:
            raise invalid("connection", self.connection, f"one of {', '.join(map(str, CONNECTIONS))}", "pass --connection linear")
        put("bins", check_int("bins", self.bins, minimum=2, fix="pass --bins 10 (the paper's value)"))
        put("observations", check_int("observations", self.observations, minimum=1,
                                      fix="pass --observations 1 or more"))
        if self.attack_epochs is not None:
            put("attack_epochs", check_int("attack_epochs", self.attack_epochs, minimum=1,
                                           fix="pass --attack-epochs 1 or more, or leave it out (--epochs)"))
        put("canaries", check_int("canaries", self.canaries, minimum=4,
                                  fix="pass --canaries with at least 4 (hundreds for a useful bound)"))
        for name in ("mia_audit", "include_images", "federated"):
            if not isinstance(getattr(self, name), bool):
                raise invalid(name, getattr(self, name), "true or false", f"pass --{name.replace('_', '-')} or "
                              f"--no-{name.replace('_', '-')}")
        inits = tuple(str(i).strip() for i in ((self.inits,) if isinstance(self.inits, str) else self.inits))
        if not inits or any(not i for i in inits) or len(set(inits)) != len(inits):
            raise invalid("inits", list(inits), "distinct entries: scratch and/or weights files",
                          "pass e.g. --inits scratch,pretrained.pt")
        from pathlib import Path

        for i in inits:
            if i != "scratch" and not Path(i).is_file():
                raise invalid("inits", i, "scratch or an existing weights file (nothing is downloaded)",
                              "pass the path of a local dpaudit checkpoint, state dict or .safetensors file")
        put("inits", inits)
        import json

        try:
            args = json.loads(self.arch_args) if isinstance(self.arch_args, str) else dict(self.arch_args)
        except (json.JSONDecodeError, TypeError, ValueError):
            raise invalid("arch_args", self.arch_args, "a JSON object", "pass e.g. --arch-args '{\"width\": 16}'"
                          ) from None
        if not isinstance(args, dict):
            raise invalid("arch_args", self.arch_args, "a JSON object", "pass e.g. --arch-args '{\"width\": 16}'")
        put("arch_args", json.dumps(args, sort_keys=True))
        if not isinstance(self.fix_batchnorm, bool):
            raise invalid("fix_batchnorm", self.fix_batchnorm, "true or false", "pass --fix-batchnorm or leave it out")
        from dpaudit.config import parse_trainable

        parse_trainable(self.trainable)
        put("federated_clients", check_int("federated_clients", self.federated_clients, minimum=1,
                                           fix="pass --federated-clients 5"))
        put("federated_epsilon", check_positive("federated_epsilon", self.federated_epsilon,
                                                fix="pass --federated-epsilon 8"))
        from dpaudit.audit.federated.partition import parse_partition

        parse_partition(self.federated_partition, flag="--federated-partition")
        put("background_share", check_probability("background_share", self.background_share, open_low=False,
                                                  open_high=False, fix="pass a share in [0, 1], e.g. 0.1"))
        if inferred == "classification" and self.background_share != 1.0:  # as TrainConfig: refused, not ignored
            raise invalid("background_share", self.background_share,
                          "1 (every slice) except for segmentation datasets (demo-ct, msd:PATH)",
                          "leave out --background-share")

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A profile.json written before class weights existed trained with the unweighted loss: its
        ``class_weights`` is ``()``, not the task's default of today (which None would take)."""
        if isinstance(data, dict) and "class_weights" not in data:
            return {**data, "class_weights": []}
        return data

    @property
    def segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def levels(self) -> tuple[float | None, ...]:
        """The privacy levels in report order: each epsilon ascending, then None for the non-private baseline."""
        return (*self.epsilons, *((None,) if self.non_private else ()))

    def command(self, out: str = "DIR", limits: tuple = (), computed_on: str | None = None) -> str:
        """The ``dpaudit profile`` command line that reproduces this configuration, and the board's ``limits``
        (:class:`dpaudit.audit.decision.Limit`) it was decided on: run as printed, it gives the same configuration
        hash (:meth:`canonical`) and the same decision. ``computed_on`` (:attr:`Profile.computed_on`) adds the
        ``--device`` the model passes ran on (:func:`device_flag`): not part of the hash, but a GPU's utility
        differs from the CPU's in the last bits, and ``auto`` picks a GPU wherever one is visible."""
        import shlex

        d = ProfileConfig()
        td = PROFILE_DEFAULTS[self.task]  # type: ignore[index]  # the task's defaults (resolved in __post_init__)
        parts = ["dpaudit", "profile", "--dataset", self.dataset]
        if self.data_dir is not None:
            parts += ["--data-dir", self.data_dir]

        def opt(flag: str, value: Any, default: Any) -> None:
            if value != default:
                parts.extend([flag, cli_number(value)])

        opt("--image-size", self.image_size, None)
        opt("--max-images", self.max_images, d.max_images)
        opt("--labels", self.labels, d.labels)
        if self.window is not None:
            parts.append("--window=" + ",".join(cli_number(v) for v in self.window))  # "=": LOW may be negative
        opt("--slice-axis", self.slice_axis, d.slice_axis)
        opt("--arch", self.arch, None)
        opt("--arch-args", self.arch_args, d.arch_args)
        if self.fix_batchnorm:
            parts.append("--fix-batchnorm")
        parts += ["--epsilons", ",".join(cli_number(e) for e in self.epsilons)]
        parts.append("--non-private" if self.non_private else "--no-non-private")
        opt("--seeds", self.seeds, None)
        opt("--seed", self.seed, d.seed)
        opt("--epochs", self.epochs, None)
        opt("--batch-size", self.batch_size, None)
        opt("--physical-batch-size", self.physical_batch_size, d.physical_batch_size)
        opt("--max-grad-norm", self.max_grad_norm, d.max_grad_norm)
        opt("--lr", self.lr, td["lr"])
        if self.class_weights != td["class_weights"]:
            parts += ["--class-weights", ",".join(cli_number(float(w)) for w in self.class_weights) or "none"]
        opt("--background-share", self.background_share, d.background_share)
        opt("--augment-multiplicity", self.augment_multiplicity, d.augment_multiplicity)
        opt("--delta", self.target_delta, d.target_delta)
        for k in self.kappas:
            parts += ["--kappa", cli_number(k)]
        opt("--privacy-unit", self.privacy_unit, d.privacy_unit)
        opt("--records-per-patient", self.records_per_patient, d.records_per_patient)
        opt("--attack-images", self.attack_images, None)
        if self.decoders != d.decoders:
            parts += ["--decoder", str(decoder_choice(self.decoders))]
        opt("--connection", self.connection, d.connection)
        opt("--bins", self.bins, d.bins)
        opt("--observations", self.observations, d.observations)
        opt("--attack-epochs", self.attack_epochs, d.attack_epochs)
        if self.mia_audit:
            parts += ["--mia-audit", "--canaries", str(self.canaries)]
        if self.include_images:
            parts.append("--include-images")
        if self.inits != d.inits:
            parts += ["--inits", ",".join(self.inits)]
        opt("--trainable", self.trainable, d.trainable)
        if self.federated:
            parts.append("--federated")
            opt("--federated-clients", self.federated_clients, d.federated_clients)
            opt("--federated-partition", self.federated_partition, d.federated_partition)
            opt("--federated-epsilon", self.federated_epsilon, d.federated_epsilon)
        for lim in limits:
            parts += lim.cli()
        device = device_flag(computed_on)
        if device is not None:
            parts += ["--device", device]
        parts += ["--out", out]
        return shlex.join(parts)

    def canonical(self) -> dict[str, Any]:
        """The configuration as the board's hash covers it: every resolved value, not whether it was typed.

        ``task_defaults`` only records which options were left to their task's default; the values themselves are
        stored resolved, so a command that spells out ``--arch resnet9`` configures the same run as one that leaves
        it out, and must hash the same."""
        from dpaudit.codec import encode

        plain = encode(self)
        plain.pop("task_defaults", None)
        return plain


def device_flag(computed_on: str | None) -> str | None:
    """The ``--device`` value that runs the model passes where :attr:`Profile.computed_on` says they ran:
    'cpu' -> 'cpu', 'cuda:0 (NVIDIA H200)' -> 'cuda:0', a distributed executor's 'cuda (resolved on each worker)'
    -> 'cuda'. None when not recorded (profiles written before it was), when it names no device (a distributed
    run's 'auto', the default) or when the invocation reused stored results (those ran where an earlier
    invocation ran, which may have been elsewhere)."""
    if not computed_on or "(this invocation;" in computed_on:
        return None
    name = computed_on.split(" ", 1)[0]
    return name if name == "cpu" or name.startswith("cuda") else None


def cli_number(value: Any) -> str:
    """Shortest exact-enough CLI form: 8.0 -> '8', 1e9 -> '1e9', 2e-3 -> '0.002'."""
    if isinstance(value, float):
        text = f"{value:.12g}" if abs(value) < 1e6 else f"{value:.12e}"
        mantissa, _, exponent = text.partition("e")
        if "." in mantissa and exponent:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}" if exponent else text
    return str(value)


@dataclass(frozen=True, eq=False)
class ReroPoint(JsonResult):
    """ReRo upper bounds at one prior kappa: worst-case and relaxed threat models (sound upper bounds)."""

    kappa: float
    worst_case: float
    relaxed: float | None

    def __post_init__(self) -> None:
        super().__post_init__()
        _rate("kappa", self.kappa)
        _rate("worst_case", self.worst_case)
        _rate("relaxed", self.relaxed)


@dataclass(frozen=True, eq=False)
class FprTpr(JsonResult):
    fpr: float
    tpr: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _rate("fpr", self.fpr)
        _rate("tpr", self.tpr)


@dataclass(frozen=True, eq=False)
class BoundsOutcome(JsonResult):
    """Formal guarantees of one DP-SGD configuration (tight accountant; sound upper bounds).

    ``rero`` holds the bounds at kappa = 1/N_train first, then at the user's kappas; ``rero_curve`` the same
    bounds over a grid of kappa (Figure 2 style); ``mia_*`` the worst-case membership-inference curve.
    """

    epsilon_target: float | None
    noise_multiplier: float
    sampling_probability: float
    steps: int
    target_delta: float
    records_per_patient: int
    epsilon: float
    epsilon_rdp: float | None
    kappa_train: float
    rero: tuple[ReroPoint, ...]
    rero_curve: tuple[ReroPoint, ...]
    method: str
    mia_advantage: float | None
    mia_tpr_at_fpr: tuple[FprTpr, ...]
    mia_roc: tuple[FprTpr, ...]
    seconds: float
    epsilon_patient: float | None = None  # per patient (k records move together) when records_per_patient > 1

    #: Why a field is null in JSON (dpaudit.codec writes the reason beside it): a bounds_curve[] point is computed
    #: without the membership-inference curve (BoundsTask.curves False), to place a budget on the figure only.
    UNDEFINED: ClassVar[dict[str, str]] = {
        "mia_advantage": "not computed: a bounds_curve[] point (a budget between the trained ones, for the figure "
                         "against epsilon) holds the ReRo bounds at kappa_train only, so its mia_tpr_at_fpr, "
                         "mia_roc and rero_curve are empty too; bounds[] holds them for each trained budget",
        "epsilon_patient": "not applicable: records_per_patient is 1, so epsilon is already per privacy unit "
                           "(where the unit is the image and a patient has several, patient_risk[] bounds the "
                           "patient)",
    }

    def at_kappa_train(self) -> ReroPoint:
        return next(p for p in self.rero if p.kappa == self.kappa_train)

    def tpr_at(self, fpr: float) -> float | None:
        for p in self.mia_tpr_at_fpr:
            if math.isclose(p.fpr, fpr, rel_tol=1e-9):
                return p.tpr
        return None


@dataclass(frozen=True, eq=False)
class AttackSubgroup(JsonResult):
    """One decoder's success on the attacked training images of one subgroup (empirical).

    ``n_images`` attacked images of the group (after the near-black exclusion), ``successes`` of them reconstructed
    (SSIM above the outcome's ``success_ssim``), and the exact 95% Clopper-Pearson interval of the rate. Counts only: no image is identified.

    ``units`` counts the privacy units (patients, by their ids) of those images (None in profiles written before
    they were counted). A group whose attacked images are held by 1 to
    :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` - 1 units is ``withheld``: no count, no successes, no interval,
    only the ``reason``, since its success would be whether those few patients' images were reconstructed.
    """

    decoder: str
    attribute: str
    value: str
    n_images: int | None
    successes: int | None
    ci_low: float | None
    ci_high: float | None
    units: int | None = None
    withheld: bool = False
    reason: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _rate("ci_low", self.ci_low)
        _rate("ci_high", self.ci_high)
        counts = (self.n_images, self.successes, self.ci_low, self.ci_high, self.units)
        if self.withheld != (self.reason is not None) or (self.withheld and any(v is not None for v in counts)):
            raise invalid("AttackSubgroup.withheld", self.withheld, "a withheld group with a reason and no count, "
                          "or a published one without a reason", "this is a bug in the producer of the result")
        if not self.withheld and None in counts[:4]:
            raise invalid("AttackSubgroup.n_images", self.n_images, "n_images, successes and the interval of a "
                          "published group", "this is a bug in the producer of the result")

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.n_images if self.n_images and self.successes is not None else None

    @property
    def null_reasons(self) -> dict[str, str]:
        """Why the counts are null in JSON when the group is withheld (dpaudit.codec)."""
        if not self.withheld:
            return {}
        return dict.fromkeys(("n_images", "successes", "ci_low", "ci_high", "units"), f"withheld: {self.reason}")

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A group of an earlier layout (no unit count): withheld when it holds 1 to
        :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` - 1 attacked images, since its patients are no more."""
        n = data.get("n_images")
        if "withheld" in data or not isinstance(n, int) or not 0 < n < MIN_SUBGROUP_UNITS:
            return data
        return {"decoder": data.get("decoder"), "attribute": data.get("attribute"), "value": data.get("value"),
                "n_images": None, "successes": None, "ci_low": None, "ci_high": None, "withheld": True,
                "reason": f"fewer than {MIN_SUBGROUP_UNITS} images among the attacked training images (the "
                          "profile predates counting patients)"}


@dataclass(frozen=True, eq=False)
class AttackOutcome(JsonResult):
    """The realistic imprint-layer attack against one checkpoint (an empirical lower bound: the true risk is never
    smaller than the attack's result).

    ``noise_multiplier`` is the attack scenario's sigma (batch size 1, q = 1/N, T = epochs * N at the same
    epsilon and delta), as in the seed paper's Table 3 sigma column.
    """

    epsilon_target: float | None
    noise_multiplier: float
    sampling_probability: float
    steps: int
    target_delta: float
    checkpoint: str
    n_excluded: int
    image_shape: tuple[int, ...]
    ssim_variant: str
    connection: str
    bins: int
    observations: int
    rows: tuple[AttackRow, ...]
    images: tuple[str, ...]
    seconds: float
    notes: tuple[str, ...] = ()
    #: Each decoder's success split by the attacked images' subgroup metadata (empty when the data carry none, or
    #: in profiles written before it was recorded).
    subgroups: tuple[AttackSubgroup, ...] = ()
    #: An image counts as reconstructed when its SSIM exceeds this (the attack result's; profiles written before it
    #: was stored used the seed paper's 0.8, the default).
    success_ssim: float = SUCCESS_SSIM

    @property
    def strongest(self) -> AttackRow:
        """The decoder with the highest success (ties: higher mean SSIM): the number the report uses."""
        return max(self.rows, key=lambda r: (r.success_rate, r.mean_ssim))

    def row(self, decoder: str) -> AttackRow | None:
        return next((r for r in self.rows if r.decoder == decoder), None)

    def subgroups_of(self, decoder: str) -> tuple[AttackSubgroup, ...]:
        return tuple(g for g in self.subgroups if g.decoder == decoder)

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """Rows of files written before the attack's rows were stored whole: the noise level and epsilon come
        from the outcome, the per-image eta was not recorded (NaN)."""
        rows = data.get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return data
        upgraded = [{"noise_multiplier": data.get("noise_multiplier"), "epsilon": data.get("epsilon_target"), **r,
                     "eta": r.get("eta", ["nan"] * len(r.get("ssim") or ()))} for r in rows]
        if any(r.get("mean_rho") is None for r in upgraded):
            return data  # not a layout this class ever wrote
        return {**data, "rows": upgraded}


@dataclass(frozen=True, eq=False)
class PrivacyInfo(JsonResult):
    """The privacy unit the profile's guarantees are stated for, and the training split's images per unit.

    Counts only (``histogram``: (images, number of units) pairs): no identifier. ``data_unit`` says what the
    data's groups come from (:data:`dpaudit.config.PRIVACY_UNITS`); ``chosen_by``: ``default``, ``option`` (--privacy-unit)
    or ``records_per_patient`` (k passed by hand).
    """

    unit: str
    records_per_patient: int
    data_unit: str = "image"
    chosen_by: str = "default"
    n_units: int = 0
    max_images_per_unit: int = 1
    mean_images_per_unit: float = 1.0
    histogram: tuple[tuple[int, int], ...] = ()

    @property
    def data_records_per_patient(self) -> int:
        """The data's k: the most training images one patient (lesion, volume) has; 1 when the data carry no ids."""
        return self.max_images_per_unit if self.data_unit != "image" else 1

    @property
    def image_unit_hides_patients(self) -> bool:
        """The guarantees are per image while one patient has several training images: per patient they are
        weaker, and the report, the console and profile.json say so beside the per-image numbers."""
        return self.unit == "image" and self.data_records_per_patient > 1

    @property
    def record(self) -> str:
        """What one training record is called in sentences: ``"slice"`` (slices of volumes) or ``"image"``
        (:func:`dpaudit.config.record_noun`; wording only, ``unit`` keeps ``"image"``)."""
        return record_noun(self.data_unit)

    @property
    def unit_flag(self) -> str | None:
        """The option that made the image the unit on data with patient ids (None: the default chose)."""
        return {"option": "--privacy-unit image", "records_per_patient": "--records-per-patient 1"}.get(
            self.chosen_by) if self.unit == "image" else None

    def describe(self) -> str:
        """The sentence the console and the report's first page print."""
        if self.unit == "patient" and self.records_per_patient < self.data_records_per_patient:
            # a profile written before a k below the data's was refused: say so wherever it is shown
            return (f"privacy unit: patient with k = {self.records_per_patient} given by hand "
                    "(--records-per-patient), BELOW the data's: one patient has "
                    f"{self.data_records_per_patient} images in the training split, so the "
                    "per-patient guarantees shown do not hold for every patient; profile again without "
                    "--records-per-patient")
        if self.unit == "patient" and self.data_unit == "volume" and self.chosen_by != "records_per_patient":
            return (f"privacy unit: patient (each volume counts as one patient, as the data carry no patient "
                    f"ids; up to {self.records_per_patient} slices per volume in the training split; every "
                    "guarantee is per patient)")
        if self.unit == "patient":
            source = {"patient": "the data's patient ids",
                      "lesion": "the data's lesion ids, as no patient ids exist: each lesion counts as one patient",
                      "study": "the data's StudyInstanceUIDs, as the files carry no usable PatientID",
                      "subject": "the data's BIDS subject labels (sub-<label>), as no patient_id column exists",
                      "image": "k given by hand"}.get(self.data_unit, self.data_unit)
            if self.chosen_by == "records_per_patient":
                source = "k given by hand (--records-per-patient)"
            images = "image" if self.records_per_patient == 1 else "images"
            return (f"privacy unit: patient (up to {self.records_per_patient} {images} per patient in the training "
                    f"split, from {source}; every guarantee is per patient)")
        why = self.unit_flag or "the data carry no patient ids"
        rec = self.record
        note = "" if rec == "image" else f"one 2-D {rec} is one record; "
        if self.image_unit_hides_patients:
            k = self.data_records_per_patient
            what = f"{rec}s"
            ids = {"lesion": " (from the data's lesion ids: each lesion counts as one patient)",
                   "volume": " (each volume counts as one patient: the data carry no patient ids)",
                   "subject": " (from the data's BIDS subject labels)",
                   "study": " (from the data's StudyInstanceUIDs)"}.get(self.data_unit, "")
            return (f"privacy unit: {rec} ({note}record-level guarantee; {why}). Note: one patient has up to {k} {what} "
                    f"in the training split{ids}, and every guarantee here is per {rec}: per patient, with its {k} "
                    f"{what} moving together, epsilon and the reconstruction risk are larger (shown per patient "
                    f"beside the per-{rec} numbers)")
        return f"privacy unit: {rec} ({note}record-level guarantee; {why})"


@dataclass(frozen=True, eq=False)
class DatasetInfo(JsonResult):
    """What the report says about the data (no images, no identifiers)."""

    name: str
    n_train: int
    n_val: int
    n_test: int
    image_shape: tuple[int, ...]
    label_names: tuple[str, ...]
    subgroup_attributes: tuple[str, ...]
    privacy: PrivacyInfo | None = None
    skipped: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()

    def loading_notes(self) -> list[str]:
        """What the loader passed over and decided, as the commands print it (counts only, no identifiers)."""
        return data_loading_notes(self.skipped, self.notes)


@dataclass(frozen=True, eq=False)
class StageTime(JsonResult):
    """Wall time of one stage of the profile in this invocation, and how many of its tasks ran or were reused."""

    stage: str
    seconds: float
    tasks_run: int
    tasks_reused: int


@dataclass(frozen=True, eq=False)
class PackageVersion(JsonResult):
    name: str
    version: str


@dataclass(frozen=True, eq=False)
class PatientRisk(JsonResult):
    """One budget's guarantees per patient when the profile's unit is the image but a patient has k > 1 training
    images (``--privacy-unit image`` on data with patient ids): the profile's numbers hold per image, these for the
    k images of one patient moving together (tight PLD epsilon and the worst-case ReRo bound at the same kappa,
    seed paper Theorem 2 on the k-fold composed mechanism). Sound upper bounds; given beside, not decided on.
    """

    epsilon_target: float
    records_per_patient: int
    target_delta: float
    epsilon_patient: float
    kappa: float
    rero_worst_case: float

    LABELS: ClassVar[dict[str, str]] = {
        "epsilon_patient": "sound upper bound (the tighter of the PLD and RDP accountants), per patient: the "
                           "records_per_patient images of one patient moving together",
        "rero_worst_case": "sound upper bound (tight), per patient: worst-case reconstruction of a patient's "
                           "image with the records_per_patient images moving together, at kappa",
        "epsilon_target": "the per-image budget (--epsilons) this row belongs to"}
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.LABELS)


@dataclass(frozen=True, eq=False)
class FederatedSite(JsonResult):
    """One site of the federated section: its DP-SGD mechanism, epsilon and worst-case ReRo bound at its own
    kappa = 1/N_k (sound upper bounds, tight PLD), and the global model's MCC on its test split (empirical).

    ``epsilon`` is per image (what the site's DP-SGD calibrates). With the patient as the unit,
    ``records_per_patient`` is k, the most images of one patient at the site, ``epsilon_patient`` the epsilon of
    those k images moving together, and ``rero_worst_case`` is per patient too (a whole patient's image is the
    target); else k = 1 and ``epsilon_patient`` None (profiles written before these fields: per image).

    A site whose test split is held by fewer than :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` patients is
    ``withheld`` (:class:`dpaudit.audit.federated.fedavg.ClientSummary`): no ``n_test``, no ``test_mcc``, the
    ``reason``; the next smallest site's ``n_test`` is withheld with it (``n_test_withheld``: the pooled test
    split's n is published). Each ``label_histogram`` cell held by fewer than that many patients is None, with the next smallest
    cell as its complement (``n_train`` is published: one withheld cell would follow by subtraction;
    :func:`dpaudit.identifiers.withhold_histogram`); ``label_histogram_withheld`` gives each cell's reason.
    """

    client: int
    n_train: int
    n_test: int | None
    label_histogram: tuple[int | None, ...]
    sampling_probability: float | None
    steps: int | None
    epsilon: float | None
    kappa: float
    rero_worst_case: float | None
    test_mcc: float | None
    records_per_patient: int = 1
    epsilon_patient: float | None = None
    withheld: bool = False
    reason: str | None = None
    #: Per label: why its ``label_histogram`` cell is withheld, or None where it is published (() reads as all
    #: published).
    label_histogram_withheld: tuple[str | None, ...] = ()
    #: Why ``n_test`` alone is withheld: the complement of a withheld site's (:attr:`ClientSummary.n_test_withheld`).
    n_test_withheld: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "label_histogram_withheld",
                           histogram_reasons(self.client, self.label_histogram, self.label_histogram_withheld))
        check_site_test(self.client, self.withheld, self.reason, self.n_test, self.test_mcc, self.n_test_withheld)

    @property
    def n_test_reason(self) -> str | None:
        """Why ``n_test`` is withheld (a small test split, or the complement of one), None where published."""
        return self.reason if self.withheld else self.n_test_withheld

    @property
    def null_reasons(self) -> dict[str, str]:
        """Why ``n_test`` and ``test_mcc`` are null in JSON when the site is withheld (``n_test`` alone when it
        is a complement), and ``label_histogram`` when it holds a withheld cell (dpaudit.codec)."""
        return site_null_reasons(self.withheld, self.reason, self.label_histogram, self.n_test_withheld)

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A published site's null ``test_mcc`` reads back as NaN (not defined). A site of an earlier layout (no
        small-cell rule): withheld when its test split holds 1 to
        :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` - 1 images, since its patients are no more than its images;
        its label histogram's cells likewise (:func:`dpaudit.identifiers.upgrade_histogram`)."""
        data = upgrade_histogram(data)
        n = data.get("n_test")
        if not data.get("withheld") and "test_mcc" in data and data["test_mcc"] is None:
            data = {**data, "test_mcc": "nan"}  # a published site's null MCC is NaN (not defined), as written
        if "withheld" in data or not isinstance(n, int) or not 0 < n < MIN_SUBGROUP_UNITS:
            return data
        return {**data, "n_test": None, "test_mcc": None, "withheld": True,
                "reason": f"fewer than {MIN_SUBGROUP_UNITS} images in the site's test split (the profile predates "
                          "counting patients)"}


@dataclass(frozen=True, eq=False)
class FederatedOutcome(JsonResult):
    """The federated section of a profile: FedAvg with sample-level DP across sites, and the bin attack with and
    without secure aggregation (``attack``: one row per noise level and secure-aggregation setting)."""

    epsilon_target: float
    dp_level: str
    unit: str
    partition: str
    clients: int
    rounds: int
    noise_multiplier: float
    target_delta: float
    epsilon: float | None
    sites: tuple[FederatedSite, ...]
    global_mcc: float
    mcc_spread: float
    attack: tuple[FederatedAttackRow, ...]
    seconds: float
    success_ssim: float = SUCCESS_SSIM  # the bin attack's success criterion (as AttackOutcome.success_ssim)

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_site_complements([s.n_test_reason for s in self.sites])

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A federated section of an earlier layout: sites withheld by :meth:`FederatedSite.json_upgrade` leave
        ``mcc_spread``, which was taken over every site; the next smallest site's ``n_test`` is withheld with a
        lone withheld one (:func:`dpaudit.identifiers.complement_sites`)."""
        sites = data.get("sites")
        if not isinstance(sites, list) or not all(isinstance(s, dict) for s in sites):
            return data
        upgraded = complement_sites(sites, [FederatedSite.json_upgrade(s) for s in sites])
        if all(u is s for u, s in zip(upgraded, sites, strict=True)):
            return data
        mccs = [u["test_mcc"] for u in upgraded if isinstance(u.get("test_mcc"), int | float)
                and math.isfinite(u["test_mcc"])]
        spread = max(mccs) - min(mccs) if len(mccs) > 1 else None
        return {**data, "sites": upgraded, "mcc_spread": spread}

    #: Why a number is null in JSON (dpaudit.codec writes NaN as null with its reason).
    UNDEFINED: ClassVar[dict[str, str]] = {
        "mcc_spread": "not defined: fewer than two published sites have a test MCC"}

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is: the federated run's (:class:`FederatedResult`) and the bin attack's
        (:class:`FederatedAttackResult`) labels, under this block's names."""
        from dpaudit.attacks.federated_results import row_labels

        unit = "per site" if self.dp_level == "client" else "per image, the worst site"
        attack = row_labels(self.success_ssim)
        return {
            "epsilon": f"sound upper bound (tight PLD accountant), {unit}, at target_delta",
            "sites[].epsilon": "sound upper bound (tight PLD), per image at the site (what its DP-SGD calibrates)",
            "sites[].epsilon_patient": "sound upper bound (tight PLD), per patient at the site: records_per_patient "
                                       "images moving together",
            "sites[].rero_worst_case": "sound upper bound (tight), worst-case reconstruction at the site's kappa = "
                                       "1/N_k; per patient when records_per_patient > 1",
            "sites[].test_mcc": "empirical, the global model on the site's own test split (null with the reason "
                                "when the site is withheld as a small cell)",
            "global_mcc": "empirical, the global model on the pooled test split",
            "mcc_spread": "empirical, max - min of sites[].test_mcc over the published sites (a withheld site is "
                          "left out)",
            **{", ".join(f"attack[].{part}" for part in k.split(", ")): v for k, v in attack.items()}}


@dataclass(frozen=True, eq=False)
class Profile(JsonResult):
    """The complete result of ``dpaudit profile``: everything the report needs, stored as ``profile.json``."""

    schema_version: int
    dpaudit_version: str
    created: str
    command: str
    config: ProfileConfig
    dataset: DatasetInfo
    #: One :class:`~dpaudit.audit.results.TrainResult` per initialisation, budget and seed (``dpaudit train``'s).
    train: tuple[TrainResult, ...]
    bounds: tuple[BoundsOutcome, ...]
    bounds_curve: tuple[BoundsOutcome, ...]
    attacks: tuple[AttackOutcome, ...]
    #: One :class:`~dpaudit.audit.results.CanaryAuditResult` per private budget (``dpaudit mia audit``'s).
    mia_audits: tuple[CanaryAuditResult, ...]
    stages: tuple[StageTime, ...]
    environment: tuple[PackageVersion, ...]
    #: The board's limits and the recommended budget (``dpaudit.audit.decision``); None when no limit was given.
    decision: Decision | None = None
    #: The reporting checklist (``dpaudit.audit.checklist``), filled from this profile.
    checklist: Checklist | None = None
    federated: FederatedOutcome | None = None
    #: With the image as the unit on data whose patients have k > 1 images: each budget's epsilon and worst-case
    #: ReRo per patient (sound upper bounds, for information: the decision stays on the image). Else empty.
    patient_risk: tuple[PatientRisk, ...] = ()
    #: Where the model passes ran (training, attack, membership audit): 'cpu', 'cuda:0 (NVIDIA H200)', or the
    #: ``--device`` given and 'resolved on each worker' under a distributed executor. A GPU's results differ from the
    #: CPU's in the last bits. When the invocation reused stored training or attack results (the device is not part
    #: of a task's key), it says how many: those ran where the invocation that made them ran. None: written before it
    #: was recorded.
    computed_on: str | None = None

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    @property
    def run_out(self) -> str | None:
        """The ``--out`` the profile was run with, as typed then (None: not recorded)."""
        import shlex

        words = shlex.split(self.command) if self.command else []
        return words[words.index("--out") + 1] if "--out" in words[:-1] else None

    def out_in(self, folder: str | os.PathLike | None) -> str:
        """The ``--out`` of the commands that reproduce or re-render this profile from the ``profile.json`` in
        ``folder``: the folder it was run in, as typed then, when ``folder`` is that folder (so the command, and a
        re-rendered report, stay as the profile printed them); else ``folder`` itself: a copied or moved run
        folder resumes from its own stored results, while the original path may hold another run or none.
        ``folder`` None (not known): the folder it was run in."""
        out = self.run_out
        if folder is None:
            return out or "DIR"
        if out is not None and Path(out).resolve() == Path(folder).resolve():
            return out
        return str(folder)

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each block holds (written to JSON beside them; entries with their own ``labels``
        say it field by field)."""
        from dpaudit.bounds.rero import LABELS as BOUND_LABELS

        methods = sorted({b.method for b in (*self.bounds, *self.bounds_curve)}) or ["tight"]
        bound = "; ".join(f"{BOUND_LABELS.get(m, m)} (method {m})" for m in methods)
        pu = self.privacy()
        k = pu.records_per_patient
        rec = pu.record
        unit = (f"per patient (the up to {k} {rec}s of one patient moving together)" if pu.unit == "patient" and k > 1
                else f"per {rec}")
        extra = {}
        if self.patient_risk:
            extra["patient_risk[]"] = (f"sound upper bounds per patient of up to {pu.data_records_per_patient} "
                                       f"{rec}s (tight PLD epsilon, worst-case ReRo): the unit is the {rec}, these "
                                       "say how much weaker the guarantee is per patient; not decided on")
        return {
            "train[]": f"each run's own labels (epsilon_achieved: sound upper bound, per {rec}; metrics: empirical)",
            "bounds[].epsilon": f"sound upper bound (tight PLD accountant), per {rec} (what --epsilons sets)",
            "bounds[].epsilon_patient": "sound upper bound (the tighter of the PLD and RDP accountants), per patient: the "
                                        f"records_per_patient {rec}s of one patient moving together",
            "bounds[], bounds_curve[] (ReRo worst_case and relaxed, MIA tpr)": f"{bound}; {unit}",
            **extra,
            "attacks[]": f"{LABEL_REALISTIC} (reconstruction; a stronger attack may do better)",
            "mia_audits[]": "each audit's own labels (epsilon_lower_bound: empirical, a lower bound at the audit's "
                            "confidence, 95% by default)",
            "federated": "its own labels (epsilon, sites[].epsilon, sites[].rero_worst_case: sound upper bounds; "
                         "global_mcc, sites[].test_mcc, attack[].success_rate: empirical)",
            "decision": "limits on worst_case, relaxed and MIA TPR are checked against the sound upper bounds; "
                        f"a realistic limit against the attack's success ({LABEL_REALISTIC}); "
                        "budgets[].mcc and budgets[].dice (mean test utility over seeds; dice: the headline "
                        "foreground class, segmentation only) are empirical; utility_metric names the one that "
                        "ranks the budgets",
        }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schema_version != SCHEMA_VERSION:
            raise invalid("schema_version", self.schema_version, f"{SCHEMA_VERSION}",
                          "re-create profile.json with this dpaudit version (dpaudit profile ... --out DIR resumes)")

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """Read the layout of an earlier dpaudit, which stored a summary of each training run in place of the
        :class:`~dpaudit.audit.results.TrainResult` (see :func:`_upgrade_train_outcome`)."""
        train = data.get("train")
        if isinstance(train, list):
            train = _separate_inits(train)
            data = {**data, "train": train}
        if not isinstance(train, list) or not any(isinstance(t, dict) and "utility" in t for t in train):
            return data
        if data.get("mia_audits"):
            raise invalid("mia_audits", f"{len(data['mia_audits'])} membership audit(s) in the layout of an earlier "
                          "dpaudit", "the audits' full results", "re-create profile.json: run the same "
                          "dpaudit profile command with --out DIR again")
        return {**data, "train": [_upgrade_train_outcome(t, data) if isinstance(t, dict) and "utility" in t else t
                                  for t in train]}

    def success_ssim(self) -> float:
        """The realistic attacks' success criterion (an image counts as reconstructed above this SSIM), as the
        attack results store it; the criterion an attack would use when the profile holds none."""
        stored = [a.success_ssim for a in self.attacks] + ([self.federated.success_ssim] if self.federated else [])
        return stored[0] if stored else SUCCESS_SSIM

    def privacy(self) -> PrivacyInfo:
        """The privacy unit (a profile.json written before it was recorded: from ``records_per_patient``)."""
        if self.dataset.privacy is not None:
            return self.dataset.privacy
        k = self.config.records_per_patient or 1
        return PrivacyInfo("patient" if k > 1 else "image", k, chosen_by="records_per_patient" if k > 1 else "default")

    def levels(self) -> tuple[LevelSummary, ...]:
        """Per privacy level (epsilons ascending, then non-private), everything one table row needs."""
        return tuple(_summarise(self, eps) for eps in self.config.levels)


def _separate_inits(train: list[Any]) -> list[Any]:
    """Runs of a profile.json written when two init files of one name (``model.pt``) shared one label, and were
    pooled as one initialisation's seeds, relabelled apart as today (the name and the short digest of their
    checkpoint folder, ``checkpoints/init-model-ebdabf60/...``; :func:`dpaudit.audit.profile.tasks.init_labels_of`).
    """
    from pathlib import PurePosixPath

    def folder(t: Any) -> str | None:
        parts = PurePosixPath(str(t.get("checkpoint") or "")).parts
        return parts[1] if len(parts) > 2 and parts[0] == "checkpoints" and parts[1].startswith("init-") else None

    runs = [t for t in train if isinstance(t, dict) and t.get("init") not in (None, "scratch")]
    folders: dict[str, set[str | None]] = {}
    for t in runs:
        folders.setdefault(t["init"], set()).add(folder(t))
    pooled = {label for label, found in folders.items() if len(found) > 1 and None not in found}
    return [{**t, "init": f"{t['init']} ({folder(t).rsplit('-', 1)[-1]})"}  # type: ignore[union-attr]
            if isinstance(t, dict) and t.get("init") in pooled else t for t in train]


def _upgrade_train_outcome(t: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """One training run of the earlier layout as a :class:`~dpaudit.audit.results.TrainResult`: every value it
    stored is kept; what it did not store is NaN (numbers), None (``val_metrics``, the decision rule's threshold),
    ``"not recorded"`` (``delta_rule``) or empty (``history``, ``seed_summary``)."""
    utility = t.get("utility") or {}
    if utility.get("classes"):
        raise invalid("train", "segmentation runs in the layout of an earlier dpaudit", "the runs' full results",
                      "re-create profile.json: run the same dpaudit profile command with --out DIR again")
    config, dataset = profile.get("config") or {}, profile.get("dataset") or {}

    def number(v: Any) -> Any:
        return "nan" if v is None else v

    metrics = {"n": dataset.get("n_test", 0), "mcc": number(utility.get("mcc")),
               "balanced_accuracy": number(utility.get("balanced_accuracy")),
               "auroc": number(utility.get("auroc")), "accuracy": number(utility.get("accuracy")), "loss": "nan",
               "subgroups": [{"group": g.get("attribute"), "value": g.get("value"), "n": g.get("n"),
                              "mcc": number(g.get("mcc")), "accuracy": number(g.get("accuracy"))}
                             for g in t.get("subgroups") or ()],
               "threshold": None, "mcc_argmax": "nan"}
    private = t.get("epsilon_target") is not None
    try:
        arch_args = json.loads(config.get("arch_args") or "{}")
    except json.JSONDecodeError:
        arch_args = {}
    notes = [n[len("training: "):] if isinstance(n, str) and n.startswith("training: ") else n
             for n in t.get("notes") or ()]
    return {
        "dataset": dataset.get("name", config.get("dataset")), "task": config.get("task") or "classification",
        "arch": config.get("arch"), "arch_args": arch_args, "init": t.get("init", "scratch"),
        "trainable": t.get("trainable", "all"), "seed": t.get("seed"), "epochs": t.get("epochs"),
        "batch_size": t.get("batch_size"), "lr": config.get("lr"), "optimizer": t.get("optimizer"),
        "epsilon_target": t.get("epsilon_target"), "epsilon_achieved": t.get("epsilon") if private else None,
        "epsilon_rdp": t.get("epsilon_rdp") if private else None, "noise_multiplier": t.get("noise_multiplier"),
        "sampling_probability": t.get("sampling_probability"), "steps": t.get("steps"),
        "target_delta": t.get("target_delta"), "delta_rule": "not recorded",
        "max_grad_norm": t.get("max_grad_norm") if private else None, "n_train": t.get("n_train"),
        "label_names": dataset.get("label_names", []), "metrics": metrics, "val_metrics": None, "history": [],
        "per_seed": [metrics], "seed_summary": {}, "wall_seconds": t.get("seconds", "nan"),
        "train_samples_per_second": "nan", "notes": notes,
        "checkpoint": t.get("checkpoint"), "reused_checkpoint": t.get("reused_checkpoint", False)}


def _same_level(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12))


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over seeds (std is None with one seed)."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> Spread:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return cls(None, None, 0)
        mean = sum(vals) / len(vals)
        std = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None)
        return cls(mean, std, len(vals))


@dataclass(frozen=True)
class LevelSummary:
    """One privacy level, aggregated over seeds (a view computed from a :class:`Profile`, not stored)."""

    epsilon_target: float | None
    train: tuple[TrainResult, ...]
    utility: dict[str, Spread]
    bounds: BoundsOutcome | None
    attack: AttackOutcome | None
    mia_audit: CanaryAuditResult | None
    #: MCC (mean and spread over seeds) per initialisation label, in the order of ``config.inits``.
    mcc_by_init: dict[str, Spread] = field(default_factory=dict)

    @property
    def notes(self) -> tuple[str, ...]:
        """Why this level's numbers carry another epsilon than its target (a budget past the noise range)."""
        found = [f"training: {n}" for t in self.train for n in t.notes] + list(self.attack.notes if self.attack else ())
        return tuple(dict.fromkeys(found))

    @property
    def epsilon_used(self) -> float | None:
        """The epsilon training actually achieved when it differs from the target by more than calibration
        slack (the target lay past the noise search range), else the target."""
        achieved = next((t.epsilon for t in self.train if t.epsilon is not None), None)
        if self.epsilon_target is not None and achieved is not None and achieved < self.epsilon_target / 1.01:
            return achieved
        return self.epsilon_target

    @property
    def private(self) -> bool:
        return self.epsilon_target is not None

    @property
    def label(self) -> str:
        if self.epsilon_target is None:
            return "non-private"
        used = self.epsilon_used
        if used is not None and used != self.epsilon_target:
            # A budget past the noise search range: the numbers are those of the epsilon actually used.
            return f"ε = {fmt_eps(used, up=True)} (asked {fmt_eps(self.epsilon_target)})"
        return f"ε = {fmt_eps(self.epsilon_target)}"

    @property
    def worst_case(self) -> float | None:
        """Worst-case ReRo upper bound at kappa = 1/N_train; 1.0 without DP (no guarantee at all)."""
        if not self.private:
            return 1.0
        return self.bounds.at_kappa_train().worst_case if self.bounds else None

    @property
    def relaxed(self) -> float | None:
        if not self.private:
            return 1.0
        return self.bounds.at_kappa_train().relaxed if self.bounds else None


#: Fields, at any depth of a profile's JSON, that say when, where and how fast a run went, not what it found.
RUN_FIELDS = frozenset({"created", "command", "stages", "environment", "computed_on", "seconds", "wall_seconds",
                        "train_samples_per_second"})


def results_json(profile: Profile) -> object:
    """The profile's JSON without :data:`RUN_FIELDS`: what two runs of one configuration must agree on, wherever
    and however their tasks ran (in process, in worker processes, on a Dask cluster; tests and
    bench/bench_distributed.py compare these)."""
    from dpaudit.codec import encode

    def strip(obj: object) -> object:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in RUN_FIELDS}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(encode(profile))


def init_labels(profile: Profile) -> tuple[str, ...]:
    """The initialisations' labels in the order of ``config.inits``, as the runs carry them (``train[*].init``:
    ``scratch``, the file's name, or the name and a short digest where two files share a name,
    :func:`dpaudit.audit.profile.tasks.init_labels_of`)."""
    from pathlib import Path

    recorded = tuple(dict.fromkeys(t.init for t in profile.train))
    return recorded or tuple("scratch" if i == "scratch" else Path(i).name for i in profile.config.inits)


def init_reports(profile: Profile) -> dict[str, tuple[str, ...]]:
    """What loading each initialisation's weights file changed (``train[*].init_report``: a final layer freshly
    initialised for another number of classes), once per label, in the order of :func:`init_labels`; labels whose
    file loaded whole are left out."""
    out: dict[str, tuple[str, ...]] = {}
    for label in init_labels(profile):
        report = next((t.init_report for t in profile.train if t.init == label and t.init_report), ())
        if report:
            out[label] = tuple(report)
    return out


def _summarise(profile: Profile, eps: float | None) -> LevelSummary:
    level = tuple(t for t in profile.train if _same_level(t.epsilon_target, eps))
    labels = init_labels(profile)
    primary = labels[0]
    train = tuple(t for t in level if t.init == primary)
    mcc_by_init = {lab: Spread.of([t.utility.mcc for t in level if t.init == lab]) for lab in labels}
    names = list(train[0].utility.values()) if train else list(Utility.METRICS)
    utility = {m: Spread.of([t.utility.values().get(m) for t in train]) for m in names}
    bounds = next((b for b in profile.bounds if _same_level(b.epsilon_target, eps)), None)
    attack = next((a for a in profile.attacks if _same_level(a.epsilon_target, eps)), None)
    mia = next((m for m in profile.mia_audits if _same_level(m.epsilon_target, eps)), None)
    return LevelSummary(eps, train, utility, bounds, attack, mia, mcc_by_init)


def utility_columns(profile: Profile) -> list[tuple[str, str]]:
    """(key in ``LevelSummary.utility``, label) of the headline utility: MCC for a classifier; Dice per
    foreground class for segmentation (seed paper Table 3, MSD Liver: Dice liver and Dice tumour). The first is
    the headline metric (:func:`headline_utility`)."""
    classes = next((t.utility.classes for t in profile.train if t.utility.classes), ())
    if classes:
        return [(f"dice_{c}", f"Dice {c}") for c in classes]
    return [("mcc", "MCC")]


def headline_utility(profile: Profile) -> tuple[str, str]:
    """(key, label) of the one utility metric that ranks budgets: MCC for a classifier; for segmentation the first
    foreground class's Dice (liver for MSD Liver), the column the summary table and the board's table show."""
    return utility_columns(profile)[0]


def fmt_eps(eps: float, *, up: bool = False) -> str:
    """1 -> '1', 8 -> '8', 1e9 -> '10⁹', 0.5 -> '0.5', inf -> '∞' (an epsilon per patient at tiny noise): a
    budget's name. ``up``: an accountant's epsilon (a sound upper bound, e.g. the epsilon a budget past the noise
    search range achieved) is rounded up, never to the nearest (4.84e7 -> '4.9e+07', not '4.8e+07').

    >>> fmt_eps(48_400_000.0), fmt_eps(48_400_000.0, up=True), fmt_eps(1e9, up=True), fmt_eps(0.1234567, up=True)
    ('4.8e+07', '4.9e+07', '10⁹', '0.123457')
    """
    from dpaudit.numfmt import upper

    if not math.isfinite(eps):
        return "∞" if eps > 0 else "n/a"
    if eps >= 1e4:
        exponent = math.log10(eps)
        if abs(exponent - round(exponent)) < 1e-9:
            return "10" + str(round(exponent)).translate(_SUPERSCRIPT)
        return upper(eps, 2) if up else f"{eps:.2g}"
    return upper(eps, 6) if up else f"{eps:g}"


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")

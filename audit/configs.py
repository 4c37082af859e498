"""The configurations of training and of the canary membership audit: frozen, validated at construction.

:class:`TrainConfig` (:func:`dpaudit.audit.train.train`, ``dpaudit train``) and :class:`CanaryAuditConfig`
(:func:`dpaudit.audit.canary.run_canary_audit`, ``dpaudit mia audit``). Importing this module loads no torch: the
command line reads the defaults of its options from these classes when it starts; validation imports the model
registry and the data loaders when a configuration is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dpaudit.config import (
    DEFAULT_ARCH,
    DEFAULT_DATASET,
    PRIVACY_UNIT_CHOICES,
    TRAIN_DEFAULTS,
    check_max_images,
    check_noise_multiplier,
    image_size_for,
    parse_trainable,
    parse_window,
)
from dpaudit.errors import ConfigError, check_int, check_positive, check_probability, invalid
from dpaudit.runtime import check_device

if TYPE_CHECKING:
    from dpaudit.attacks.lower_bounds import Selection

__all__ = ["DEFAULT_ARCH", "DEFAULT_CANARIES", "DEFAULT_DATASET", "TASKS", "CanaryAuditConfig", "TrainConfig"]

#: Canaries m of the membership audit (``dpaudit mia audit``, ``dpaudit profile --mia-audit``): hundreds make the
#: one-run bound useful (its ceiling grows with m), and each is a training image lost to the run.
DEFAULT_CANARIES = 256


@dataclass(frozen=True)
class TrainConfig:
    """One training run (or ``seeds`` runs). Exactly one of ``epsilon``, ``noise_multiplier``, ``non_private``.

    Attributes
    ----------
    dataset, data_dir, image_size, max_images, labels, window, slice_axis:
        Passed to :func:`dpaudit.data.load_splits` (ignored when ``train`` is given pre-built splits).
        ``image_size`` None takes the dataset's default (:func:`dpaudit.config.default_image_size`).
    task:
        ``classification`` or ``segmentation``; None infers it from the dataset (``demo-ct`` and ``msd:PATH`` are
        segmentation). ``arch``, ``epochs``, ``batch_size``, ``lr`` and ``class_weights`` left at None take the
        task's default from :data:`dpaudit.config.TRAIN_DEFAULTS`; ``task_defaults`` names those that did
        (``dpaudit train`` prints them for segmentation; the result and metrics.json record them).
    privacy_unit:
        ``"patient"``, ``"image"`` or None (patient when the data carry patient or lesion ids): the unit the run's
        privacy is stated for; k (images per patient) is recorded in the checkpoint so that ``bounds --model``
        gives patient-level bounds. DP-SGD itself clips per image; epsilon is per image (k = 1).
    arch, arch_args:
        Architecture spec (a registry name, ``monai:NAME``, ``file.py:factory`` or ``module:factory``; see
        :mod:`dpaudit.models`) and its keyword arguments.
    fix_batchnorm:
        Replace every BatchNorm by GroupNorm (:func:`dpaudit.models.replace_batchnorm`, Opacus' rule); the
        replacements are listed in the result. Without it a BatchNorm layer is an error listing every such layer.
    init:
        A weights file to start from (a dpaudit checkpoint, a plain state dict with any wrapper prefix, or a
        ``.safetensors`` file; read locally, never downloaded). None: random initialisation ("scratch"). Every
        tensor outside the final layer must be in the file with the model's shape (else a
        :class:`~dpaudit.errors.CheckpointError` names the first that differ); the final layer alone may differ in
        its output count (a classification head for another number of classes) or be absent, keeps its fresh
        initialisation and is listed in the result (``init_report``; :func:`dpaudit.audit.train.load_init`). The DP guarantee covers the fine-tuning data only, not the data the init
        was trained on.
    trainable:
        ``all``, ``head`` (the last layer with parameters: a linear probe) or ``last-N`` (the last N layers with
        parameters). Frozen parameters get no per-sample gradients and no noise; the privacy accounting is the
        same (it does not depend on the number of parameters).
    epsilon:
        Target epsilon at ``target_delta``; sigma is calibrated with the tight PLD accountant so that the achieved
        epsilon is at most this value.
    noise_multiplier:
        Use this sigma directly (the achieved epsilon is reported).
    non_private:
        Train without clipping and noise (the baseline).
    target_delta:
        delta of the reported epsilon; None means :func:`dpaudit.audit.train.default_delta` of the training set
        size.
    epochs, batch_size, physical_batch_size:
        Epochs, logical (expected) batch size, and the largest batch that is put through the network at once
        (memory only; default 128).
    max_grad_norm:
        Per-sample clip norm C (DP only).
    lr:
        NAdam learning rate (the seed paper: 2e-3 for every classification run, section 4.2).
    class_weights:
        Segmentation: a weight per class for the cross-entropy (:class:`dpaudit.audit.train.SampleMeanCrossEntropy`),
        ``()`` for none. Default: the seed paper's MSD Liver weights 0.1, 0.4, 0.5 (background, liver, tumour;
        section 4.2.3) for segmentation, applied by :func:`train` on the liver task only (another task's classes
        train unweighted, with a note: :func:`dpaudit.config.class_weights_for`); none for classification (where it
        is refused). Given weights must hold one value per class of the data.
    augment_multiplicity:
        0: no augmentation. K >= 1: K randomly flipped views per image (horizontal and vertical, p = 0.5 each);
        under DP their gradients are averaged per image BEFORE clipping (De et al. 2022, arXiv 2204.13650,
        section 3.1), so the privacy cost is unchanged.
    seed, seeds:
        First seed and number of seeds (runs with seed, seed + 1, ...; mean and standard deviation reported).
    out:
        Output folder for model.pt, metrics.json and training_curve.png; None writes nothing.
    threads:
        torch intra-op threads; None uses the cores this process may run on.
    device:
        Where the model trains: ``"auto"`` (the first CUDA GPU when one is visible, else the CPU), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``. The sampling and augmentation generators stay on the CPU, so the batches are
        the same on any device; the noise is drawn on the device, from that device's random stream, so the same
        seed gives a different (equally valid) model on a GPU than on the CPU. The DP guarantee is the same.
    """

    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    image_size: int | None = None
    max_images: int | None = None
    labels: str | None = None
    window: tuple[float, float] | None = None
    slice_axis: str = "axial"
    privacy_unit: str | None = None
    arch: str | None = None  # None: the task's (TRAIN_DEFAULTS), as epochs, batch_size, lr and class_weights
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    fix_batchnorm: bool = False
    init: str | None = None
    trainable: str = "all"
    epsilon: float | None = None
    noise_multiplier: float | None = None
    non_private: bool = False
    target_delta: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    physical_batch_size: int | None = None
    max_grad_norm: float = 1.0
    lr: float | None = None
    augment_multiplicity: int = 0
    seed: int = 0
    seeds: int = 1
    out: str | None = None
    threads: int | None = None
    device: str = "auto"
    # Segmentation (dpaudit.volumes): task None is inferred from the dataset (``window`` above is the CT window,
    # default the liver window); the training split keeps every foreground slice and this share of the others.
    task: str | None = None
    background_share: float = 1.0
    class_weights: tuple[float, ...] | None = None
    #: The options that took their task's default (filled by the configuration; recorded in the result).
    task_defaults: tuple[str, ...] = field(default=(), init=False)
    #: Where the options left at None take their value (the command line's help prints it).
    TASK_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = TRAIN_DEFAULTS

    def __post_init__(self) -> None:
        _check_task(self)  # first: the task decides the defaults of the options left at None
        if self.epsilon is not None:
            object.__setattr__(self, "epsilon", check_positive(
                "epsilon", self.epsilon, fix="pass a target epsilon > 0, e.g. --epsilon 8"))
        if self.noise_multiplier is not None:
            object.__setattr__(self, "noise_multiplier", check_noise_multiplier(
                self.noise_multiplier, fix="pass --sigma 1.0, or --non-private for training without noise"))
        if self.target_delta is not None:
            object.__setattr__(self, "target_delta", check_probability(
                "target_delta", self.target_delta, fix="pass a delta well below 1/N, e.g. --delta 8e-7"))
        from dpaudit.models import check_arch_args, parse_arch

        parse_arch(self.arch)
        # before the data load: the model is built only after it
        object.__setattr__(self, "arch_args", check_arch_args(self.arch, self.arch_args, flag="--arch-args"))
        parse_trainable(self.trainable)
        if self.init is not None:
            if not isinstance(self.init, str) or not Path(self.init).is_file():
                raise invalid("init", self.init, "an existing weights file (dpaudit checkpoint, state dict or "
                              ".safetensors)", "pass the path of the pretrained weights; dpaudit downloads nothing")
        object.__setattr__(self, "image_size", image_size_for(self.dataset, self.image_size))
        check_max_images(self.max_images)
        from dpaudit.data import check_data_options

        check_data_options(self.dataset, data_dir=self.data_dir, labels=self.labels, window=self.window,
                           slice_axis=self.slice_axis)
        object.__setattr__(self, "window", parse_window(self.window))
        if self.privacy_unit is not None and self.privacy_unit not in PRIVACY_UNIT_CHOICES:
            raise invalid("privacy_unit", self.privacy_unit, f"one of {', '.join(map(str, PRIVACY_UNIT_CHOICES))}",
                          "pass --privacy-unit patient or --privacy-unit image")
        object.__setattr__(self, "epochs", check_int("epochs", self.epochs, fix="pass --epochs 1 or more"))
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size,
                                                         fix="pass --batch-size 1 or more, e.g. 64"))
        if self.physical_batch_size is not None:
            check_int("physical_batch_size", self.physical_batch_size,
                      fix="pass --physical-batch-size 1 or more, or leave it out (128)")
        object.__setattr__(self, "max_grad_norm", check_positive(
            "max_grad_norm", self.max_grad_norm, fix="pass a positive clip norm, e.g. --max-grad-norm 1.0"))
        object.__setattr__(self, "lr", check_positive("lr", self.lr, fix="pass e.g. --lr 2e-3"))
        object.__setattr__(self, "augment_multiplicity", check_int(
            "augment_multiplicity", self.augment_multiplicity, minimum=0,
            fix="pass --augment-multiplicity 0 (no augmentation) or K >= 1 flipped views"))
        check_int("seed", self.seed, minimum=0, fix="pass --seed 0 or another whole number >= 0")
        object.__setattr__(self, "seeds", check_int("seeds", self.seeds, fix="pass --seeds 1 or more"))
        if self.threads is not None:
            check_int("threads", self.threads, fix="pass --threads 1 or more, or leave it out (the idle cores)")
        check_device(self.device)
        # The choice of mechanism last: a value out of range in a flag the user typed is named first.
        modes = {"--epsilon": self.epsilon is not None, "--sigma": self.noise_multiplier is not None,
                 "--non-private": bool(self.non_private)}
        given = [flag for flag, on in modes.items() if on]
        if not given:
            raise ConfigError("no privacy mechanism chosen: give exactly one of --epsilon, --sigma and --non-private. "
                              "Fix: pass --epsilon 8 (a target; sigma is calibrated), --sigma 1.0, or --non-private.")
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)} given together: give exactly one of --epsilon, --sigma and "
                              f"--non-private. Fix: keep one of them (drop {given[-1]}).")

    @property
    def segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def private(self) -> bool:
        return not self.non_private


TASKS = ("classification", "segmentation")


def _check_task(config: TrainConfig) -> None:
    """Resolve and check ``task`` (inferred from the dataset when None), fill the options left at None with the
    task's defaults (:data:`dpaudit.config.TRAIN_DEFAULTS`, recorded in ``task_defaults``), and check the options
    that depend on the task.

    Segmentation needs a segmentation network (a registry classifier such as ``resnet9`` is refused, not
    replaced); augmentation is refused (flipping would need the label maps flipped alike). Class weights are for
    segmentation only: with one label per image a per-sample weighted mean is the unweighted loss, and a weighted
    mean over the batch would make each sample's gradient depend on the others' labels (no longer DP-SGD).
    """
    from dpaudit.config import TRAIN_DEFAULTS, apply_task_defaults, parse_class_weights
    from dpaudit.models import check_arch_for_task
    from dpaudit.volumes import is_segmentation_dataset

    inferred = "segmentation" if is_segmentation_dataset(config.dataset) else "classification"
    task = config.task if config.task is not None else inferred
    if task not in TASKS:
        raise invalid("task", task, f"one of {', '.join(map(str, TASKS))}", "pass --task classification or --task segmentation")
    if task != inferred:
        raise invalid("task", task, f"{inferred} for --dataset {config.dataset}",
                      "pass --dataset demo-ct or msd:PATH for segmentation, another dataset for classification")
    object.__setattr__(config, "task", task)
    object.__setattr__(config, "class_weights", parse_class_weights(config.class_weights))
    object.__setattr__(config, "task_defaults", apply_task_defaults(config, TRAIN_DEFAULTS, task))
    check_arch_for_task(config.arch, task)  # type: ignore[arg-type]
    if task == "segmentation":
        if config.augment_multiplicity:
            raise invalid("augment_multiplicity", config.augment_multiplicity, "0 for segmentation",
                          "leave out --augment-multiplicity")
    else:
        if config.background_share != 1.0:
            raise invalid("background_share", config.background_share,
                          "1 (every slice) except for segmentation datasets (demo-ct, msd:PATH)",
                          "leave out --background-share")
        if config.class_weights:
            raise invalid("class_weights", list(config.class_weights),
                          "none for classification (class weights are a segmentation loss option)",
                          "leave out --class-weights")
    object.__setattr__(config, "background_share", check_probability(
        "background_share", config.background_share, open_low=False, open_high=False,
        fix="pass a share in [0, 1], e.g. --background-share 0.1"))


Score = Literal["loss", "reference"]
#: FPRs at which the empirical TPR is reported.
DEFAULT_FPRS = (0.001, 0.01, 0.1)


@dataclass(frozen=True)
class CanaryAuditConfig:
    """One canary audit.

    Attributes
    ----------
    train:
        The DP training configuration under audit (a :class:`TrainConfig`); its ``out`` is
        ignored (the audit's models go to a temporary folder).
    canaries:
        m, canaries drawn from the training split; each joins training with probability 1/2.
    score:
        ``"loss"``: minus the canary's cross-entropy under the trained model. ``"reference"``: minus the
        difference to a reference model trained without any canary (costs a second training run).
    confidence:
        Probability that the lower bound holds.
    selection:
        How the number of guesses is chosen: ``"bonferroni"`` or ``"split"`` (see
        :func:`dpaudit.attacks.lower_bounds.one_run_from_scores`).
    fprs:
        FPRs at which the empirical TPR (with Clopper-Pearson intervals) is reported.
    seed:
        Seeds the canary choice, their labels and the coin flips.
    """

    train: TrainConfig
    canaries: int = DEFAULT_CANARIES
    score: Score = "loss"
    confidence: float = 0.95
    selection: Selection = "bonferroni"
    fprs: tuple[float, ...] = DEFAULT_FPRS
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {type(self.train).__name__}.")
        object.__setattr__(self, "canaries", check_int(
            "canaries", self.canaries, minimum=4, fix="pass --canaries with at least 4 (hundreds for a useful bound)"))
        if self.score not in ("loss", "reference"):
            raise invalid("score", self.score, "'loss' or 'reference'",
                          "pass --score loss, or --score reference (a second, canary-free training run)")
        object.__setattr__(self, "confidence", check_probability(
            "confidence", self.confidence, fix="pass a confidence in (0, 1), e.g. 0.95"))
        if self.selection not in ("bonferroni", "split"):
            raise invalid("selection", self.selection, "'bonferroni' or 'split'",
                          "pass --selection bonferroni or --selection split")
        object.__setattr__(self, "fprs", tuple(check_probability(
            "fprs", f, fix="pass false-positive rates in (0, 1), e.g. (1e-3, 1e-2)") for f in self.fprs))
        check_int("seed", self.seed, minimum=0, fix="pass --seed 0 or another whole number >= 0")

"""DP-SGD training with Opacus, and the non-private baseline through the same code path.

``train(TrainConfig(...))`` loads (or takes) a dataset, builds a registry model, checks that every layer is
DP-SGD compatible, calibrates the noise multiplier with dpaudit's own tight (PLD) accountant so that the achieved
epsilon never exceeds the target, trains with Poisson sampling (Opacus 1.6 ``DPOptimizer`` on per-sample gradients
from Opacus' hooks mode with dpaudit's faster ``Conv2d`` sampler, :mod:`dpaudit.audit.grad_sample`;
``BatchMemoryManager`` for the physical batch size), recomputes the achieved epsilon (PLD, a sound upper bound,
and RDP, what Opacus would report), evaluates utility on the test split (MCC, balanced accuracy, AUROC, accuracy,
per subgroup) and writes the dpaudit checkpoint, ``metrics.json`` and a training-curve PNG.

What differs between private and non-private runs is only what the accountant demands: Poisson-sampled logical
batches with per-sample clipping and Gaussian noise (``DPOptimizer``) versus shuffled batches and the plain
optimizer. The model, data, augmentation, loss, loop, evaluation and outputs are the same functions.

Sampling is exactly what is accounted for: each record joins each step's batch independently with probability
q = batch_size / N, for T = epochs * ceil(N / batch_size) steps (``dpaudit.config.steps_for``). (Opacus'
``make_private`` would instead use q = 1 / ceil(N / batch_size) and 1/q steps per epoch.)
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dpaudit.audit.configs import TrainConfig
from dpaudit.audit.metrics import ClassificationMetrics, choose_threshold, classify
from dpaudit.audit.results import EpochRecord, TrainResult
from dpaudit.audit.segmentation import SegmentationMetrics, evaluate_segmentation
from dpaudit.bounds import PAPER_DELTA, default_delta
from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
from dpaudit.codec import encode
from dpaudit.config import TRAIN_DEFAULTS, DpSgdConfig, class_weights_for, parse_trainable, steps_for
from dpaudit.data import (
    DatasetSplits,
    ImageDataset,
    PrivacyUnit,
    load_splits,
    loading_notes,
    privacy_unit,
    require_classes,
)
from dpaudit.errors import (
    ConfigError,
    NumericalError,
    invalid,
)
from dpaudit.heap import reuse_freed_memory
from dpaudit.models import build_model, check_classifier, check_dp_compatible
from dpaudit.numfmt import upper
from dpaudit.outputs import save_figure, writable_dir, write_atomic
from dpaudit.runtime import idle_cores, resolve_device

__all__ = ["PAPER_DELTA", "EpochRecord", "SampleMeanCrossEntropy", "TrainConfig", "TrainResult",
           "check_dp_compatible", "default_delta", "read_metrics", "train"]


#: The optimiser of every run (torch.optim name; the seed paper trains with NAdam, section 4.2). Recorded in each
#: result (``optimizer``) and so in the profile's reporting checklist.
OPTIMIZER = "NAdam"

#: (done_steps, total_steps, description) -> None; called after every optimiser step.
ProgressCallback = Callable[[int, int, str], None]


def load_data(config: TrainConfig):
    """The splits ``config`` names: :func:`dpaudit.data.load_splits`, or for segmentation
    :func:`dpaudit.volumes.load_segmentation_splits` (``max_images`` counts volumes there)."""
    if config.segmentation:
        from dpaudit.volumes import load_segmentation_splits

        return load_segmentation_splits(config.dataset, image_size=config.image_size, seed=config.seed,
                                        max_volumes=config.max_images, window=config.window,
                                        background_share=config.background_share)
    return load_splits(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                       seed=config.seed, max_images=config.max_images, labels=config.labels,
                       window=config.window, slice_axis=config.slice_axis)


# ----------------------------------------------------------------------------------------------------------------
# Model check


def freeze(model: nn.Module, trainable: str) -> tuple[int, int]:
    """Freeze all but the trailing layers ``trainable`` names; returns (trainable, frozen) parameter counts.

    A layer is a module that holds parameters of its own (``recurse=False``), in registration order, which is the
    order of the forward pass for sequential networks; ``head`` is the last one (the classifier of the registry
    models and of MONAI's classification networks).
    """
    n_last = parse_trainable(trainable)
    if n_last is not None:
        layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        if n_last > len(layers):
            raise invalid("trainable", trainable, f"at most last-{len(layers)} (the model has {len(layers)} "
                          "layers with parameters)", "pass --trainable all or a smaller N")
        keep = {id(p) for m in layers[-n_last:] for p in m.parameters(recurse=False)}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
    on = sum(p.numel() for p in model.parameters() if p.requires_grad)
    off = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return on, off


def head_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the model's final layer: the last module holding parameters of its own, in registration
    order (the classifier of the registry models and of MONAI's classification networks; what ``--trainable
    head`` trains)."""
    layers = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not layers:
        raise invalid("arch", type(model).__name__, "a network with parameters", "pass another --arch")
    return layers[-1]


def load_init(model: nn.Module, path: str, arch: str = "this architecture") -> tuple[str, ...]:
    """Copy the weights of ``path`` into ``model`` (in place); returns what was not copied, and why.

    The rule (a pretrained backbone, fine-tuned): every tensor of the model outside its final layer
    (:func:`head_layer`) must be in the file with the model's shape, so the whole backbone loads or nothing does.
    The final layer alone may differ, and only in its output count (another number of classes, the usual
    fine-tuning case) or by being absent from the file: then it keeps the fresh initialisation and the report says
    so. Anything else is a :class:`~dpaudit.errors.CheckpointError` naming the file, the first differing tensors
    with both shapes and the fix: a wrong architecture must not become a silent fresh start (a "linear probe" on a
    random backbone). A model whose only layer is its final layer cannot be initialised from a file for another
    number of classes (nothing would load). Keys the model lacks are ignored only when they are BatchNorm running
    statistics of a network whose BatchNorm was replaced (GroupNorm keeps none).
    """
    from dpaudit.checkpoint import describe_differences, load_state_dict, weight_differences
    from dpaudit.errors import CheckpointError

    _, state = load_state_dict(path)
    own = model.state_dict()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    dropped = [k for k in state if k not in own and k.rsplit(".", 1)[-1] in stats]
    state = {k: v for k, v in state.items() if k not in dropped}
    head, module = head_layer(model)
    prefix = f"{head}." if head else ""
    head_keys = {prefix + n for n, _ in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))}
    missing, unexpected, reshaped = weight_differences(state, own)
    # The final layer may differ only in its output count (dimension 0): another number of classes.
    fresh = [k for k in (*missing, *reshaped) if k in head_keys]
    head_fits = all(k in missing or (state[k].dim() == own[k].dim() and state[k].shape[1:] == own[k].shape[1:])
                    for k in fresh)
    loaded = [k for k in own if k in state and k not in fresh]
    fix = ("pass the --arch and --arch-args the weights were trained with (and --fix-batchnorm if they were "
           "trained with it), or start from scratch")
    if unexpected or not head_fits or any(k not in head_keys for k in (*missing, *reshaped)):
        body = {k: v for k, v in state.items() if k not in head_keys} if head_fits else state
        expected = {k: v for k, v in own.items() if k not in head_keys} if head_fits else own
        differences = describe_differences(body, expected)
        raise invalid("init", path, f"weights for {arch} (only its final layer {head or '<model>'} may "
                      f"differ, for another number of classes): {differences}", fix, cls=CheckpointError)
    if not any(k in dict(model.named_parameters()) for k in loaded):
        raise invalid("init", path, f"weights of which at least one parameter fits {arch}: only its "
                      f"final layer {head or '<model>'} has parameters and it differs "
                      f"({describe_differences(state, own)}), so nothing would be loaded", fix, cls=CheckpointError)
    model.load_state_dict({k: (own[k] if k in fresh else state[k]) for k in own}, strict=True)
    report = []
    if fresh:
        old = next((int(state[k].shape[0]) for k in fresh if k in state), None)
        was = f"the file's has {old} outputs" if old is not None else "the file has none"
        report.append(f"final layer {head} freshly initialised for {int(own[fresh[0]].shape[0])} outputs ({was}): "
                      f"{', '.join(fresh)}; the other {len(loaded)} tensors loaded from the file")
    if dropped:
        report.append(f"ignored {len(dropped)} BatchNorm running statistics (the layers are GroupNorm now)")
    return tuple(report)


# ----------------------------------------------------------------------------------------------------------------
# Batches


class _PoissonBatches(torch.utils.data.Sampler[list[int]]):
    """Each step, every record joins independently with probability q; ``steps`` batches per epoch."""

    def __init__(self, n: int, q: float, steps: int, generator: torch.Generator) -> None:
        self.n, self.q, self.steps, self.generator = n, q, steps, generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = torch.rand(self.n, generator=self.generator) < self.q
            yield mask.nonzero(as_tuple=False).reshape(-1).tolist()


class _ShuffledPhysical(torch.utils.data.Sampler[list[int]]):
    """Non-private: shuffled logical batches of ``batch`` records, each split into physical chunks.

    ``self.last`` tells the loop whether the chunk just produced ends its logical batch (then the optimiser
    steps); ``self.logical`` is the logical batch's size (losses are scaled by chunk / logical).
    """

    def __init__(self, n: int, batch: int, physical: int, generator: torch.Generator) -> None:
        self.n, self.batch, self.physical, self.generator = n, batch, physical, generator
        self.last, self.logical = True, batch

    def __len__(self) -> int:
        return sum(math.ceil(min(self.batch, self.n - s) / self.physical) for s in range(0, self.n, self.batch))

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        for s in range(0, self.n, self.batch):
            logical = perm[s:s + self.batch]
            chunks = [logical[i:i + self.physical] for i in range(0, len(logical), self.physical)]
            for j, chunk in enumerate(chunks):
                self.last, self.logical = j == len(chunks) - 1, len(logical)
                yield chunk


def _augment(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """K views per image, each flipped horizontally and vertically with probability 1/2: (B*K, C, H, W)."""
    views = x.repeat_interleave(k, dim=0)
    n = views.shape[0]
    hflip = torch.rand(n, generator=generator) < 0.5
    vflip = torch.rand(n, generator=generator) < 0.5
    views = torch.where(hflip[:, None, None, None], views.flip(-1), views)
    return torch.where(vflip[:, None, None, None], views.flip(-2), views)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def _normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return (images - m) / s


@torch.inference_mode()
def _predict(model: nn.Module, ds: ImageDataset, mean: tuple[float, ...], std: tuple[float, ...],
             batch: int = 256) -> tuple[np.ndarray, float]:
    """Class probabilities (N x K) and the mean cross-entropy on one split."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, losses = [], []
    for s in range(0, len(ds), batch):
        x = _normalise(ds.images[s:s + batch], mean, std).to(device)
        logits = model(x)
        y = ds.labels[s:s + batch].to(device)
        losses.append(nn.functional.cross_entropy(logits, y, reduction="sum").item())
        probs.append(torch.softmax(logits, dim=1).double().cpu().numpy())
    model.train(was_training)
    if not probs:
        return np.zeros((0, ds.num_classes)), float("nan")
    return np.concatenate(probs), sum(losses) / len(ds)


def _evaluate(model: nn.Module, ds: ImageDataset, mean: tuple[float, ...], std: tuple[float, ...],
              threshold: float | None = None, *, unit: str, split: str) -> ClassificationMetrics:
    """Metrics of ``ds``; its subgroups count privacy units of kind ``unit`` (the splits' ``unit``: ``ds``'s
    ``patient_ids`` are those units) for the small-cell rule, and name the ``split`` (``"test"``) when they withhold
    a cell."""
    probs, loss = _predict(model, ds, mean, std)
    if len(probs) == 0:
        return classify(np.zeros(0, dtype=np.int64), probs, groups={})
    return classify(ds.labels.numpy(), probs, loss=loss, groups=ds.groups, threshold=threshold,
                    units=ds.patient_ids, unit=unit, split=split)


def _evaluate_with_operating_point(model: nn.Module, splits: DatasetSplits
                                   ) -> tuple[ClassificationMetrics, ClassificationMetrics]:
    """(test, validation) metrics at the operating point chosen on the validation split (binary tasks).

    The threshold is fixed on validation images only, never on the test split, so the test metrics stay an
    honest estimate. The validation split is not covered by the training's DP guarantee (like any tuning).
    """
    val_probs, val_loss = _predict(model, splits.val, splits.mean, splits.std)
    threshold = choose_threshold(splits.val.labels.numpy(), val_probs)
    test = _evaluate(model, splits.test, splits.mean, splits.std, threshold, unit=splits.unit, split="test")
    # The validation probabilities once: the threshold and the validation metrics read the same predictions.
    val = classify(splits.val.labels.numpy(), val_probs, loss=val_loss, groups=splits.val.groups, threshold=threshold,
                   units=splits.val.patient_ids, unit=splits.unit, split="validation")
    return test, val


# ----------------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class PreparedModel:
    """What :func:`prepare_model` did to the model, for the result and the checkpoint."""

    replaced_layers: tuple[str, ...]
    init_report: tuple[str, ...]
    trainable_parameters: int
    frozen_parameters: int


def prepare_model(config: TrainConfig, num_classes: int, in_channels: int, image_shape: tuple[int, int, int]
                  ) -> tuple[nn.Module, PreparedModel]:
    """Build the model of ``config`` (on the CPU, from torch's current random state) and make it ready to train.

    In order: build from the architecture spec (BatchNorm replaced when ``fix_batchnorm``), check every layer for
    DP-SGD (private runs; all problems at once), check that it is a classifier for this input, copy the ``init``
    weights, freeze what ``trainable`` leaves out.
    """
    from dpaudit.models import replace_batchnorm

    model = build_model(config.arch, num_classes=num_classes, in_channels=in_channels, arch_args=config.arch_args)
    replaced = tuple(replace_batchnorm(model)) if config.fix_batchnorm else ()
    model.train()
    if config.private:
        check_dp_compatible(model)
    check_classifier(model, image_shape, num_classes, config.arch, segmentation=config.segmentation)
    if config.init is not None:
        from dpaudit.checkpoint import check_task, recorded_task

        check_task(recorded_task(config.init), config.task, model=f"--init {config.init}",  # type: ignore[arg-type]
                   data=f"--dataset {config.dataset}", fix=f"start from weights trained for {config.task}, or "
                   "leave out --init (scratch)")
    arch = config.arch + (f" {json.dumps(dict(config.arch_args))}" if config.arch_args else "")
    init_report = load_init(model, config.init, arch) if config.init is not None else ()
    on, off = freeze(model, config.trainable)
    return model, PreparedModel(replaced, init_report, on, off)


def _threads(config: TrainConfig) -> int:
    return config.threads if config.threads is not None else idle_cores()


def _calibrate(config: TrainConfig, q: float, steps: int, delta: float
               ) -> tuple[float, float | None, float | None, tuple[str, ...]]:
    """(sigma, epsilon_pld, epsilon_rdp, notes) for this run; epsilons None when non-private."""
    from dpaudit.bounds import calibrate_epsilon, epsilon_pld, epsilon_rdp

    notes: tuple[str, ...] = ()
    if config.non_private:
        return 0.0, None, None, notes
    if config.epsilon is not None:
        # dpaudit.bounds.noise_for_epsilon returns the smallest sigma whose tight PLD epsilon is <= target, taking
        # the safe end of its bracket; a target beyond its range gets the range's floor and a note.
        level = calibrate_epsilon(config.epsilon, q, steps, delta, accountant="pld")
        sigma = level.noise_multiplier
        notes = (level.note,) if level.note else ()
    else:
        sigma = float(config.noise_multiplier)  # type: ignore[arg-type]
    eps = float(epsilon_pld(sigma, q, steps, delta))
    eps_rdp = float(epsilon_rdp(sigma, q, steps, delta))
    if config.epsilon is not None and eps > config.epsilon:
        raise NumericalError(f"the calibrated noise multiplier {sigma} gives epsilon {eps} > target "
                             f"{config.epsilon}; refusing to train with an overshooting budget. Fix: report this "
                             "as a bug; meanwhile pass --sigma slightly larger.")
    return sigma, eps, eps_rdp, notes


def _run_one(config: TrainConfig, splits: DatasetSplits, seed: int, sigma: float, q: float, steps: int,
             delta: float, progress: ProgressCallback | None, done0: int, total: int,
             device: torch.device = torch.device("cpu"), initial_state: Mapping[str, torch.Tensor] | None = None,
             run_name: str | None = None) -> tuple[nn.Module, list[EpochRecord], float]:
    """Train one model on ``device``; returns (model, still on ``device``; history; training samples per second).

    ``initial_state`` (a state dict) replaces the seeded initialisation: a federated client starts from the
    server's model (``dpaudit.audit.federated``); everything else, the random streams included, is unchanged.
    ``run_name`` is what a divergence error calls this run: by default its seed (``seed 0``, as ``--seeds``
    counts them); a federated client's round and site, whose derived seed the user never typed.
    """
    from opacus.data_loader import wrap_collate_with_empty
    from opacus.optimizers import DPOptimizer
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    from dpaudit.audit.grad_sample import FastConvGradSampleModule
    from dpaudit.bounds import epsilon_rdp

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds any legacy numpy use in dependencies)
    train_ds = splits.train
    n = len(train_ds)
    images = _normalise(train_ds.images, splits.mean, splits.std)
    dataset = torch.utils.data.TensorDataset(images, train_ds.labels)
    model = prepare_model(config, splits.num_classes, splits.in_channels, splits.image_shape)[0]
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device)  # built (and initialised) on the CPU, then moved
    k = config.augment_multiplicity
    # 128 by default, not min(batch_size, 128): a Poisson batch of expected size 64 exceeds 64 about half the time,
    # and each excess would cost a second (tiny) forward and backward pass (40% more passes on the demo profile).
    physical = config.physical_batch_size or 128
    g_sample = torch.Generator().manual_seed(seed * 4 + 1)
    g_aug = torch.Generator().manual_seed(seed * 4 + 2)
    g_noise = torch.Generator(device=device).manual_seed(seed * 4 + 3)  # Opacus draws the noise on the device
    steps_per_epoch = steps // config.epochs
    criterion = SampleMeanCrossEntropy(class_weights_for(config, splits.label_names)[0])

    base_optimizer = getattr(torch.optim, OPTIMIZER)([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    if config.private:
        # Opacus' hooks mode with a faster Conv2d per-sample gradient (dpaudit.audit.grad_sample); clipping, noise
        # and scaling are Opacus' DPOptimizer.
        net: nn.Module = FastConvGradSampleModule(model, batch_first=True, loss_reduction="mean")
        optimizer: torch.optim.Optimizer = DPOptimizer(
            base_optimizer, noise_multiplier=sigma, max_grad_norm=config.max_grad_norm,
            expected_batch_size=config.batch_size, loss_reduction="mean", generator=g_noise)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=_PoissonBatches(n, q, steps_per_epoch, g_sample),
            collate_fn=wrap_collate_with_empty(collate_fn=torch.utils.data.default_collate,
                                               sample_empty_shapes=[(0, *images.shape[1:]),
                                                                    (0, *train_ds.labels.shape[1:])],
                                               dtypes=[torch.float32, torch.int64]))
        physical_batches = BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical,
                                              optimizer=optimizer)  # type: ignore[arg-type]
        splitter = None
    else:
        net, optimizer = model, base_optimizer
        splitter = _ShuffledPhysical(n, config.batch_size, physical, g_sample)
        physical_batches = None

    history: list[EpochRecord] = []
    done = done0
    seen = 0
    train_time = 0.0
    # Each DP-SGD step makes and drops per-sample gradients (64 x 0.41 M parameters = 105 MB for ResNet-9) and
    # activations above glibc's mmap threshold: the kernel faulted in and zeroed ~400 MB per step, a fifth to a
    # quarter of the step's CPU time at 64 px (bench/bench_train.py). Kept for reuse while training runs
    # (dpaudit.heap; the same weights bit for bit, tests/test_heap.py).
    with reuse_freed_memory():
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            loss_sum, loss_n = 0.0, 0
            try:
                if physical_batches is not None:
                    with physical_batches as batches:
                        loss_sum, loss_n, seen_e = _epoch(net, optimizer, batches, None, criterion, k, g_aug, True,
                                                          device)
                else:
                    batches = torch.utils.data.DataLoader(dataset, batch_sampler=splitter)
                    loss_sum, loss_n, seen_e = _epoch(net, optimizer, batches, splitter, criterion, k, g_aug, False,
                                                      device)
                check_finite_weights(model)  # the last step's weights: its loss was computed before it
            except Diverged as exc:
                raise diverged(config, f"{run_name or f'seed {seed}'}, epoch {epoch}: {exc}") from None
            seen += seen_e
            train_time += time.perf_counter() - t0
            done += steps_per_epoch
            eps_so_far = (float(epsilon_rdp(sigma, q, epoch * steps_per_epoch, delta)) if config.private else None)
            if config.segmentation:
                sval = evaluate_segmentation(model, splits.val, splits.mean, splits.std)
                record = EpochRecord(epoch, epoch * steps_per_epoch, loss_sum / max(loss_n, 1), sval.loss,
                                     float("nan"), sval.pixel_accuracy, eps_so_far, time.perf_counter() - t0,
                                     val_dice=sval.dice_mean)
                what = f"val Dice {sval.dice_mean:.3f}"
            else:
                val = _evaluate(model, splits.val, splits.mean, splits.std, unit=splits.unit, split="validation")
                record = EpochRecord(epoch, epoch * steps_per_epoch, loss_sum / max(loss_n, 1), val.loss, val.mcc,
                                     val.accuracy, eps_so_far, time.perf_counter() - t0)
                what = f"val MCC {val.mcc:.3f}"
            history.append(record)
            if progress is not None:
                progress(done, total, f"seed {seed} epoch {epoch}/{config.epochs} {what}")
    return model, history, seen / train_time if train_time > 0 else float("nan")


class Diverged(ArithmeticError):
    """Training produced a loss or weights that are nan or inf (internal: :func:`diverged` is what the user gets)."""


def check_finite_weights(model: nn.Module) -> None:
    """Raise :class:`Diverged` naming the first floating-point tensor of ``model`` that holds nan or inf."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise Diverged(f"the weights became nan or inf (first: {name!r})")


def diverged(config: TrainConfig, where: str) -> NumericalError:
    """The error of a training run that diverged (``where``: the seed, epoch and what became non-finite), naming
    ``--lr`` and a smaller value: the task's default when the rate given is above it, else a tenth of it. A model
    with nan or inf weights has no utility to report and nothing for an attack to audit, so the run stops."""
    default = TRAIN_DEFAULTS.get(str(config.task), {}).get("lr")
    lr = float(config.lr)  # type: ignore[arg-type]
    smaller = default if default is not None and lr > default else lr / 10
    return invalid("lr", lr, f"small enough that training stays finite (it diverged at {where})",  # type: ignore[return-value]
                   f"pass a smaller --lr, e.g. --lr {smaller:g}", cls=NumericalError)


class SampleMeanCrossEntropy(nn.Module):
    """The training loss: the mean over the batch of each sample's own cross-entropy, optionally class-weighted.

    Each sample's loss is the mean of its per-pixel (segmentation) or single (classification) cross-entropy; with
    ``class_weights`` w it is that sample's weighted mean, sum_p w[y_p] CE_p / sum_p w[y_p], which is PyTorch's
    ``CrossEntropyLoss(weight=w)`` on that sample alone (the seed paper trained its DP models at batch size 1,
    section 4.2.3, where the two coincide).

    Why per sample: DP-SGD clips each sample's gradient and its guarantee assumes that sample's gradient depends on
    that sample only. PyTorch's weighted ``mean`` divides by the weights summed over the whole batch, so every
    sample's gradient would scale with the other samples' labels, and removing one sample would change all the
    others' clipped gradients (the sensitivity would no longer be the clip norm). Unweighted, the two are the same
    loss (every sample has the same number of pixels), and the plain call is kept (bit for bit as before).
    ``tests/test_segmentation.py`` checks that a sample's per-sample gradient does not change with its batch.
    """

    def __init__(self, class_weights: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return nn.functional.cross_entropy(logits, target)
        w = self.weight.to(logits.device)
        per_element = nn.functional.cross_entropy(logits, target, weight=w, reduction="none")  # w[y] * CE
        dims = tuple(range(1, per_element.dim()))
        return (per_element.sum(dim=dims) / w[target].sum(dim=dims)).mean()


def _epoch(net: nn.Module, optimizer: torch.optim.Optimizer, batches: Any, splitter: _ShuffledPhysical | None,
           criterion: nn.Module, k: int, g_aug: torch.Generator, private: bool,
           device: torch.device = torch.device("cpu")) -> tuple[float, int, int]:
    """One pass over the physical batches: the loop both paths share. Returns (loss sum, loss count, images)."""
    loss_sum, loss_n, seen = 0.0, 0, 0
    for x, y in batches:
        b = len(y)
        if k >= 1:
            x, y = _augment(x, k, g_aug), y.repeat_interleave(k)  # on the CPU: the same views on any device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = net(x)
        loss = criterion(out, y) if b else out.sum() * 0.0
        # Non-private: accumulate the mean gradient over the logical batch. Private: Opacus rescales per-sample
        # gradients itself (loss_reduction="mean"), clips, sums, noises and divides by the expected batch size.
        scale = b / splitter.logical if splitter is not None else 1.0
        with warnings.catch_warnings():
            # Opacus' hooks see inputs that need no gradient (the images): harmless, said once per step otherwise.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            (loss * scale).backward()
        if private and k > 1 and b:
            # Augmentation multiplicity: average each image's K per-view gradients before clipping.
            for p in net.parameters():
                gs = getattr(p, "grad_sample", None)
                if isinstance(gs, torch.Tensor):
                    p.grad_sample = gs.view(b, k, *gs.shape[1:]).mean(dim=1)
        # Private: step after every physical batch; BatchMemoryManager tells the DPOptimizer which ones only clip
        # and accumulate. Non-private: step at the end of each logical batch.
        if splitter is None or splitter.last:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise Diverged(f"the training loss became {value}")
        loss_sum += value * b
        loss_n += b
        seen += b
    return loss_sum, loss_n, seen


def _summary(per_seed: list[ClassificationMetrics] | list[SegmentationMetrics]
             ) -> dict[str, tuple[float, float | None]]:
    """Mean and sample standard deviation over seeds per metric; the std is None (not estimable) with one seed,
    as the profile's per-budget summaries write it, never a 0 that reads as "no spread"."""
    if per_seed and isinstance(per_seed[0], SegmentationMetrics):
        values = [m.summary_values() for m in per_seed]  # type: ignore[union-attr]
    else:
        values = [{key: getattr(m, key) for key in ("mcc", "balanced_accuracy", "auroc", "accuracy")}
                  for m in per_seed]
    out: dict[str, tuple[float, float | None]] = {}
    for key in (values[0] if values else {}):
        vals = [v[key] for v in values]
        out[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None)
    return out


def train(config: TrainConfig, *, splits: DatasetSplits | None = None,
          progress: ProgressCallback | None = None) -> TrainResult:
    """Train (DP-SGD or non-private), evaluate, and write the outputs.

    Parameters
    ----------
    config:
        The run.
    splits:
        Pre-built data (e.g. a training set with canary images appended); ``config.dataset`` and the other data
        fields are then ignored except for the record.
    progress:
        Called after every epoch with (steps done, total steps, description).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}.")
    t_start = time.perf_counter()
    if config.out is not None:
        writable_dir(config.out)  # before any work: a run that cannot write its results fails now
    if splits is None:
        splits = load_data(config)
    require_classes(splits, "training")
    unit = privacy_unit(splits, config.privacy_unit)
    n = len(splits.train)
    if config.batch_size > n:
        raise invalid("batch_size", config.batch_size, f"at most the number of training images ({n})",
                      f"pass --batch-size {n} or less")
    if len(splits.test) == 0 or len(splits.val) == 0:
        raise ConfigError(f"{splits.name}: the validation and test splits must not be empty (val {len(splits.val)}, "
                          f"test {len(splits.test)}). Fix: use more images (a larger --max-images, or leave it out for all) or "
                          "a dataset with more patients.")
    delta = config.target_delta if config.target_delta is not None else default_delta(n)
    delta_rule = ("given (--delta)" if config.target_delta is not None else
                  "default min(8e-7 (seed paper, section 4.4), 1/(10 N))")
    class_weights, weights_note = class_weights_for(config, splits.label_names)  # refuses another length
    q = config.batch_size / n
    steps = steps_for(config.epochs, n, config.batch_size)
    sigma, eps, eps_rdp, notes = _calibrate(config, q, steps, delta)
    if weights_note is not None:
        notes = (*notes, weights_note)
    with torch.random.fork_rng(devices=[]):  # fail before training, and know what was built; no side effect
        prepared = prepare_model(config, splits.num_classes, splits.in_channels, splits.image_shape)[1]
    dp = DpSgdConfig(sigma, q, steps, config.max_grad_norm, delta) if config.private else None

    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(_threads(config))
    try:
        models, histories, per_seed, per_seed_val, speeds = [], [], [], [], []
        total = steps * config.seeds
        # One block over every seed (each _run_one's own block nests in it): the heap grown by the first seed's
        # steps serves the next seeds too, instead of being given back and faulted in again for each.
        with reuse_freed_memory():
            for i in range(config.seeds):
                model, history, speed = _run_one(config, splits, config.seed + i, sigma, q, steps, delta, progress,
                                                 i * steps, total, device)
                if config.segmentation:
                    test_metrics = evaluate_segmentation(model, splits.test, splits.mean, splits.std)
                    val_metrics = evaluate_segmentation(model, splits.val, splits.mean, splits.std)
                else:
                    test_metrics, val_metrics = _evaluate_with_operating_point(model, splits)
                model = model.cpu()
                per_seed.append(test_metrics)
                per_seed_val.append(val_metrics)
                models.append(model)
                histories.append(history)
                speeds.append(speed)
        val_metrics = per_seed_val[0]
    finally:
        torch.set_num_threads(previous_threads)

    result = TrainResult(
        dataset=splits.name, task=str(config.task), arch=config.arch, arch_args=dict(config.arch_args),
        init=init_label(config.init), trainable=config.trainable, seed=config.seed, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, optimizer=OPTIMIZER, epsilon_target=config.epsilon,
        epsilon_achieved=eps, epsilon_rdp=eps_rdp, noise_multiplier=sigma, sampling_probability=q, steps=steps,
        target_delta=delta, delta_rule=delta_rule, max_grad_norm=config.max_grad_norm if config.private else None,
        n_train=n, label_names=splits.label_names, metrics=per_seed[0], val_metrics=val_metrics,
        history=tuple(histories[0]), per_seed=tuple(per_seed), seed_summary=_summary(per_seed),
        wall_seconds=time.perf_counter() - t_start, train_samples_per_second=statistics.fmean(speeds),
        notes=notes, replaced_layers=prepared.replaced_layers, init_report=prepared.init_report,
        trainable_parameters=prepared.trainable_parameters, frozen_parameters=prepared.frozen_parameters,
        privacy=unit, epsilon_patient=_epsilon_patient(dp, unit), data_notes=tuple(loading_notes(splits)),
        class_weights=class_weights, task_defaults=config.task_defaults)
    if config.out is not None:
        result = _write_outputs(result, config, models[0], splits)
    return result


def init_label(init: str | None) -> str:
    """How results name an initialisation: ``scratch`` or the file's name (its folder may name a cohort)."""
    return "scratch" if init is None else Path(init).name


# ----------------------------------------------------------------------------------------------------------------
# Outputs


#: Keys of ``metrics.json`` beside the :class:`TrainResult`'s own: the configuration (a finished run is reused only
#: when it matches), what the loader decided, and the normalisation.
METRICS_EXTRAS = ("config", "data", "normalisation")
#: What ``train --out`` writes, and the configuration fields that do not change what is written (where it goes, and
#: the threads and device it ran on: a rerun of the same configuration elsewhere writes the same run).
OUTPUT_FILES = ("model.pt", "metrics.json", "training_curve.png")
UNRECORDED_FIELDS = ("out", "threads", "device")


def same_run(config: TrainConfig, metrics: Any) -> bool:
    """Whether a ``metrics.json`` (as read) records the run ``config`` describes (every field but
    :data:`UNRECORDED_FIELDS`), so that writing over it replaces a run by the same run."""
    recorded = metrics.get("config") if isinstance(metrics, dict) else None
    if not isinstance(recorded, dict):
        return False
    mine = json.loads(json.dumps(encode(asdict(config)), allow_nan=False))
    return all(recorded.get(k) == v for k, v in mine.items() if k not in UNRECORDED_FIELDS)


def train_identity(config: TrainConfig) -> dict[str, Any]:
    """The part of ``metrics.json`` that identifies the run (its ``config``), as :func:`same_run` reads it: what
    ``train --out`` writes in its folder's marker before any work."""
    return {"config": json.loads(json.dumps(encode(asdict(config)), allow_nan=False))}


def _write_outputs(result: TrainResult, config: TrainConfig, model: nn.Module, splits: DatasetSplits) -> TrainResult:
    out = writable_dir(config.out)  # type: ignore[arg-type]
    extra = {"seed": config.seed, "epsilon_target": result.epsilon_target,
             "epsilon_achieved": result.epsilon_achieved, "epsilon_rdp": result.epsilon_rdp,
             "augment_multiplicity": config.augment_multiplicity, "lr": config.lr,
             "test_mcc": result.metrics.mcc, "init": _init_record(config.init),
             "trainable": config.trainable, "epsilon_patient": result.epsilon_patient, "task": config.task,
             **(_privacy_scalars(result.privacy) if result.privacy is not None else {}),
             **({"test_dice": result.metrics.dice_mean,  # type: ignore[union-attr]
                 "window_low": splits.window[0] if splits.window else None,
                 "window_high": splits.window[1] if splits.window else None,
                 "n_train_volumes": result.n_train_volumes}
                if config.segmentation else {})}
    # The run's schedule as phases (Opacus' accountant.history layout): one phase today, sigma and q fixed.
    from dpaudit.bounds.schedule import phases_of_config

    dp = result.dp
    phases = phases_of_config(dp)
    meta = CheckpointMeta(
        arch=config.arch, num_classes=splits.num_classes, in_channels=splits.in_channels,
        arch_args=config.arch_args, input_shape=splits.image_shape, mean=splits.mean, std=splits.std,
        dataset=splits.name, n_train=result.n_train, label_names=splits.label_names, dp=dp, phases=phases,
        epochs=config.epochs, batch_size=config.batch_size, fix_batchnorm=config.fix_batchnorm,
        extra={k: (float(v) if isinstance(v, float) else v) for k, v in extra.items()})
    ckpt = save_checkpoint(out / "model.pt", model, meta)
    curve = _plot_curve(result.history, out / "training_curve.png", result)
    result = replace(result, checkpoint=str(ckpt), curve_path=str(curve))
    metrics_path = out / "metrics.json"
    result = replace(result, metrics_path=str(metrics_path))
    payload = {**encode(result), "config": asdict(config),
               "data": {"skipped": dict(splits.skipped), "notes": list(splits.notes)},
               "normalisation": {"mean": list(splits.mean), "std": list(splits.std),
                                 "note": "fixed values, not computed from the (private) training images"}}
    write_atomic(metrics_path, json.dumps(encode(payload), indent=2, allow_nan=False) + "\n")
    return result


def read_metrics(path: Path) -> tuple[TrainResult, dict[str, Any]]:
    """The :class:`TrainResult` a ``metrics.json`` holds, and its recorded configuration (as written)."""
    from dpaudit.codec import from_plain

    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise invalid("metrics.json", type(data).__name__, "an object", "re-run dpaudit train --out")
    config = data.get("config") or {}
    return from_plain(TrainResult, {k: v for k, v in data.items() if k not in METRICS_EXTRAS}), config


def _init_record(init: str | None) -> str:
    """``scratch``, or the init file's name and SHA-256 (the path itself may name a patient cohort's folder)."""
    if init is None:
        return "scratch"
    import hashlib

    digest = hashlib.sha256(Path(init).read_bytes()).hexdigest()
    return f"{Path(init).name} (sha256 {digest[:16]})"


def _epsilon_patient(dp: DpSgdConfig | None, unit: PrivacyUnit) -> float | None:
    """epsilon per patient (the k records of one patient move together; tight PLD, a sound upper bound) when a
    patient has k > 1 training images: k is the unit's under ``--privacy-unit patient`` and the data's under
    ``--privacy-unit image`` (the per-image epsilon is then the guarantee, this one is given beside it, as the
    profile's ``patient_risk``); None when every patient has one image or the data carry no ids."""
    k = unit.records_per_patient if unit.unit == "patient" else unit.data_records_per_patient
    if dp is None or k == 1:
        return None
    from dpaudit.bounds import epsilon_bound

    return float(epsilon_bound(dp.noise_multiplier, dp.sampling_probability, dp.steps, dp.target_delta,
                               records_per_patient=k).value)


def _privacy_scalars(unit: PrivacyUnit) -> dict[str, Any]:
    """The privacy unit as checkpoint ``extra`` scalars (the histogram as a JSON string: no identifiers)."""
    dist = unit.images_per_unit
    return {"privacy_unit": unit.unit, "data_unit": unit.data_unit, "records_per_patient": unit.records_per_patient,
            "images_per_unit_max": dist.max, "images_per_unit_mean": float(dist.mean), "n_units": dist.n_units,
            "images_per_unit_histogram": json.dumps([list(p) for p in dist.histogram])}


def _plot_curve(history: tuple[EpochRecord, ...], path: Path, result: TrainResult) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h.train_loss for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h.val_loss for h in history], "s-", label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    seg = bool(history) and history[0].val_dice is not None
    ax2.plot(epochs, [h.val_dice if seg else h.val_mcc for h in history], "o-",
             label=f"validation {'mean Dice' if seg else 'MCC'} (empirical)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("Dice" if seg else "MCC")
    ax2.set_ylim(-0.1, 1.0)
    ax2.legend()
    if result.dp is not None:
        title = (f"DP-SGD: epsilon <= {upper(result.epsilon_achieved)} (PLD, sound upper bound) at delta "
                 f"{result.target_delta:.2g}; sigma {result.noise_multiplier:.3g}, q {result.sampling_probability:.3g}"
                 f", T {result.steps}")
    else:
        title = "non-private baseline"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path

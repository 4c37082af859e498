"""``attack_checkpoint``: the imprint-layer attack against a trained checkpoint, as one use case.

Both ``dpaudit attack`` and the profile's attack stage call :func:`attack_checkpoint` with a frozen
:class:`AttackScenario`; which images are attacked, how target epsilons become noise multipliers and which clip
norm is used are decided here and nowhere else, so the command and the report give the same rows for the same
scenario.

The malicious server's scenario (seed paper, Table 3 caption): batch size 1, q = 1/N, T = epochs * N, at the
target epsilon and delta; the tight (PLD) accountant gives the smaller sigma, the stronger attack.

Importing this module is cheap (no torch): configurations are built before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpaudit.attacks.decoders import DECODERS, DENOISERS
from dpaudit.config import check_replayed_noise
from dpaudit.errors import ConfigError, check_int, check_positive, check_probability, invalid
from dpaudit.numfmt import upper

if TYPE_CHECKING:
    import numpy as np
    import torch

    from dpaudit.attacks.reconstruction import AttackResult, Progress
    from dpaudit.attacks.results import EpsilonMechanism

#: How the attacked images are chosen from the training split (the attacker targets members).
SELECTIONS = ("first", "random")
#: How the imprint block joins the network (:mod:`dpaudit.attacks.imprint`).
CONNECTIONS = ("linear", "addition")
#: How reconstructions are matched to the attacked images: each image's nearest (the seed paper's) or its own.
SCORINGS = ("nearest", "paired")
#: Accountants that map a target epsilon to the attack scenario's sigma (tight PLD, or Opacus' RDP as the paper).
ACCOUNTANTS = ("pld", "rdp")
#: Salt of the image-selection generator, so it never shares a stream with the imprint block's seed.
SELECTION_SALT = 0xA77AC
#: Noise grid when neither a checkpoint's budget nor a noise level is known (the spec's demonstration grid).
DEMO_SIGMAS = (0.0, 1e-4, 1e-3, 0.02)


@dataclass(frozen=True)
class AttackScenario:
    """What the attacker does to one checkpoint.

    Noise: give ``noise_multipliers`` (sigmas replayed as they are) or ``epsilons`` (each mapped to the attack
    scenario's sigma with ``n_train``, ``epochs`` and ``target_delta``, None taking the checkpoint's; an epsilon
    of None is a non-private level, sigma 0). Neither: :func:`checkpoint_noise` decides from the checkpoint.
    ``max_grad_norm`` None takes the checkpoint's clip norm (1.0 without DP). ``selection``: ``"first"`` attacks
    the first ``n_images`` training images, ``"random"`` a seeded random subset (sorted indices).
    """

    n_images: int = 64
    selection: str = "first"
    epsilons: tuple[float | None, ...] | None = None
    noise_multipliers: tuple[float, ...] | None = None
    n_train: int | None = None
    epochs: int | None = None
    target_delta: float | None = None
    accountant: str = "pld"
    decoders: tuple[str, ...] = ("strong",)
    connection: str = "linear"
    bins: int = 10
    observations: int = 1
    max_grad_norm: float | None = None
    scoring: str = "nearest"
    denoiser: str = "tv"
    seed: int = 0
    keep_images: int = 0

    def __post_init__(self) -> None:
        check_int("n_images", self.n_images, fix="pass --n-images 1 or more")
        if self.selection not in SELECTIONS:
            raise invalid("selection", self.selection, f"one of {', '.join(map(str, SELECTIONS))}", "pass --selection first")
        for name, allowed in (("connection", CONNECTIONS), ("scoring", SCORINGS), ("accountant", ACCOUNTANTS),
                              ("denoiser", DENOISERS)):
            if getattr(self, name) not in allowed:
                raise invalid(name, getattr(self, name), f"one of {', '.join(map(str, allowed))}", f"pass --{name} {allowed[0]}")
        if not self.decoders or any(d not in DECODERS for d in self.decoders):
            raise invalid("decoders", self.decoders, f"names from {list(DECODERS)}", "pass --decoder all")
        if self.epsilons is not None and self.noise_multipliers is not None:
            raise invalid("--epsilons/--sigmas", "both", "at most one of them",
                          "pass --sigmas 0,1e-4,1e-3 or --epsilons 1,8,1e9")
        for name in ("epsilons", "noise_multipliers", "decoders"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        # Every field is checked here, before any data are loaded: a bad value is named at once, not after the
        # data loaded (minutes for a DICOM tree). run_attack checks them again for callers of the library.
        for eps in self.epsilons or ():
            # finite, like every other --epsilon(s) (train, mia audit, profile): no noise is --sigmas 0 here
            if eps is not None and not (eps > 0 and math.isfinite(eps)):
                raise invalid("epsilons", eps, "finite numbers > 0",
                              "pass target epsilons such as --epsilons 1,8,20,1e9, or --sigmas 0 for no noise")
        for sigma in self.noise_multipliers or ():
            check_replayed_noise("noise_multipliers", sigma, fix="pass noise multipliers >= 0, e.g. --sigmas 0,1e-4,1e-3,0.02")
        if self.noise_multipliers is not None and not self.noise_multipliers:
            raise invalid("noise_multipliers", [], "at least one value", "pass e.g. --sigmas 0,1e-3")
        if self.n_train is not None:
            check_int("n_train", self.n_train, fix="pass the number of training images, e.g. --n-train 10000")
        if self.epochs is not None:
            check_int("epochs", self.epochs, fix="pass the number of training epochs, --epochs 1 or more")
        if self.target_delta is not None:
            check_probability("target_delta", self.target_delta, fix="pass a delta in (0, 1), e.g. --delta 1e-5")
        if len(set(self.decoders)) != len(self.decoders):
            raise invalid("decoders", list(self.decoders), "distinct names", "pass --decoder all (each decoder once)")
        check_int("bins", self.bins, minimum=2, fix="pass --bins 10 (the paper's value)")
        check_int("observations", self.observations, fix="pass --observations 1 or more")
        if self.max_grad_norm is not None:
            check_positive("max_grad_norm", self.max_grad_norm, fix="pass a positive clip norm, e.g. --max-grad-norm 1.0")
        check_int("seed", self.seed, minimum=0, fix="pass --seed 0 or another whole number >= 0")
        check_int("keep_images", self.keep_images, minimum=0, fix="pass --save-images, or leave it out")


def checkpoint_noise(ckpt) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str]:
    """``(epsilons, noise_multipliers, why)`` for a scenario that names neither: the checkpoint's own budget,
    else no noise (a model trained without DP), else the demonstration grid (a randomly initialised model).

    The budget is the epsilon of the checkpoint's whole schedule (every phase composed: what training records as
    ``epsilon_achieved``, recomputed from ``ckpt.phases`` when a file lacks it), which :func:`scenario_noise` maps
    to the malicious server's sigma (batch size 1, q = 1/N, T = epochs * N). The recorded noise multipliers are
    not replayed: the attacker observes one step, and with several phases that step's sigma would be the last
    phase's (``ckpt.noise_multiplier``), while the budget bounds the whole run."""
    achieved = ckpt.extra.get("epsilon_achieved")
    if ckpt.dp is not None and ckpt.dp.is_private and not (isinstance(achieved, float) and math.isfinite(achieved)):
        from dpaudit.bounds import epsilon_pld, schedule_of_checkpoint

        achieved = float(epsilon_pld(target_delta=ckpt.target_delta, schedule=schedule_of_checkpoint(ckpt)))
    if ckpt.dp is not None and isinstance(achieved, float) and math.isfinite(achieved):
        # Six significant digits: what the command has always printed and mapped back to sigma.
        eps = float(f"{achieved:.6g}")
        phases = len(ckpt.phases or ())
        over = f", {phases} phases" if phases > 1 else ""
        return (eps,), None, f"the checkpoint's epsilon {upper(achieved)} (at delta {ckpt.target_delta:g}{over})"
    if ckpt.source == "dpaudit":
        return None, (0.0,), "sigma 0 (the checkpoint was trained without DP)"
    if ckpt.source == "state_dict":
        return None, (0.0,), ("sigma 0 (a plain state dict records no DP configuration; pass --epsilons with "
                              "--n-train, --epochs and --delta to attack at a privacy budget)")
    grid = ",".join(f"{s:g}" for s in DEMO_SIGMAS)
    return None, DEMO_SIGMAS, f"the noise grid {grid} (no checkpoint given)"


def scenario_noise(ckpt, scenario: AttackScenario) -> tuple[list[float], list[float | None], list[str]]:
    """The noise multipliers the scenario replays against ``ckpt``, the epsilon each one reports, and notes.

    The epsilon reported is the one the noise gives: a target beyond the noise search range (e.g. 1e12) is
    replayed at the range's smallest sigma and reported at that sigma's epsilon, with a note saying why
    (:class:`dpaudit.bounds.NoiseForEpsilon`); labelling it with the target would claim less noise than was used.
    """
    from dpaudit.attacks.reconstruction import noise_for_epsilons

    epsilons, sigmas = scenario.epsilons, scenario.noise_multipliers
    if epsilons is None and sigmas is None:
        epsilons, sigmas, _ = checkpoint_noise(ckpt)
    if sigmas is not None:
        return [float(s) for s in sigmas], [None] * len(sigmas), []
    mech = scenario_mechanism(ckpt, scenario)
    if mech is None:
        raise invalid("--epsilons", list(epsilons), "used with a checkpoint that records N and epochs, or with "
                      "--n-train and --epochs", "add --n-train N --epochs E (--delta defaults to the checkpoint's, "
                      "else to min(8e-7, 1/(10 N)), the default of every command)")
    levels = noise_for_epsilons([math.inf if e is None else e for e in epsilons], n_train=mech.n_train,
                                epochs=mech.epochs, target_delta=mech.target_delta, accountant=scenario.accountant)
    labels = [None if e is None else lv.epsilon for e, lv in zip(epsilons, levels, strict=True)]
    return [lv.noise_multiplier for lv in levels], labels, [lv.note for lv in levels if lv.note]


def scenario_mechanism(ckpt, scenario: AttackScenario) -> EpsilonMechanism | None:
    """The mechanism the scenario's epsilons are mapped through (batch size 1, q = 1/N, T = epochs * N at delta:
    the scenario's values, else the checkpoint's; delta, when neither gives it, by the default rule of every
    command, :func:`dpaudit.bounds.default_delta`), or None when the scenario replays noise multipliers as given
    or N or the epochs are not known (then an epsilon cannot be stated)."""
    from dpaudit.attacks.results import EpsilonMechanism
    from dpaudit.bounds import default_delta, default_delta_rule

    if scenario.noise_multipliers is not None or (scenario.epsilons is None and checkpoint_noise(ckpt)[0] is None):
        return None
    n_train = scenario.n_train or ckpt.n_train
    epochs = scenario.epochs or ckpt.epochs
    if n_train is None or epochs is None:
        return None
    delta = scenario.target_delta or ckpt.target_delta
    default = delta is None  # neither gives it: the one default rule of every command, min(8e-7, 1/(10 N))
    if default:
        delta = default_delta(int(n_train))
    given = [name for name, v in (("n_train", scenario.n_train), ("epochs", scenario.epochs),
                                  ("target_delta", scenario.target_delta)) if v]
    known = 2 if default else 3  # the values the scenario or the checkpoint gave
    source = ("checkpoint" if not given else "scenario" if len(given) == known else
              f"scenario ({', '.join(given)}), checkpoint (the rest)")
    if default:
        source += f"; {default_delta_rule(int(n_train))}"
    return EpsilonMechanism(n_train=int(n_train), epochs=int(epochs), sampling_probability=1.0 / int(n_train),
                            steps=int(epochs) * int(n_train), target_delta=float(delta),
                            accountant=scenario.accountant, source=source)



def training_data_differences(ckpt, dataset: str, image_shape: tuple[int, ...]) -> list[str]:
    """Notes for attacked images that are not the model's training data as its checkpoint records them (another
    image size, another dataset): the attack still measures what it measures, but on other images than those
    trained on, while the checkpoint's epsilon, k and N (the attack scenario's q = 1/N) describe the training data
    only. Empty for a randomly initialised model (its "training data" are the images attacked) and for a file that
    records neither."""
    if getattr(ckpt, "source", None) == "random":
        return []
    found = []
    trained = tuple(int(x) for x in ckpt.input_shape) if ckpt.input_shape else None
    if trained is not None and trained[1:] != tuple(image_shape[1:]):
        found.append(f"the attacked images are {image_shape[1]}x{image_shape[2]} pixels, the model was trained on "
                     f"{trained[1]}x{trained[2]} (recorded in the checkpoint; leave out --image-size to attack at the "
                     "training size)")
    if ckpt.dataset and dataset and str(ckpt.dataset) != str(dataset):
        found.append(f"the attacked images come from {dataset}, the model was trained on {ckpt.dataset} (recorded in "
                     "the checkpoint): they are not its training images")
    if found:
        found.append("the checkpoint's epsilon, k and N_train (q = 1/N of the attack scenario) describe its training "
                     "data only, not the images attacked here; the success rates measure the attack on these images")
    return found


def select_indices(n_split: int, scenario: AttackScenario) -> np.ndarray:
    """Indices (ascending) of the attacked images in a split of ``n_split`` (all of them when it holds fewer)."""
    import numpy as np

    n = min(scenario.n_images, n_split)
    if scenario.selection == "first":
        return np.arange(n)
    rng = np.random.default_rng([scenario.seed, SELECTION_SALT])
    return np.sort(rng.choice(n_split, size=n, replace=False))


def select_images(split, scenario: AttackScenario) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacked training images and their labels (all of them when the split holds fewer)."""
    import torch

    idx = torch.as_tensor(select_indices(len(split), scenario))
    return split.images[idx], split.labels[idx]


def attack_checkpoint(ckpt, splits, scenario: AttackScenario, *, progress: Progress | None = None,
                      device: str = "cpu") -> AttackResult:
    """Run the imprint-layer attack of ``scenario`` against a :class:`dpaudit.checkpoint.Checkpoint` on the
    training split of ``splits`` (a :class:`dpaudit.data.DatasetSplits`).

    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) is where the model's passes run, as
    :func:`dpaudit.attacks.reconstruction.run_attack`'s; like the torch threads it says where the numbers are
    computed, not what is attacked, so it is not part of the scenario.

    Returns
    -------
    AttackResult
        Frozen; success rates are empirical (lower bounds on reconstruction risk).
    """
    from dpaudit.attacks.reconstruction import run_attack
    from dpaudit.checkpoint import check_task
    from dpaudit.runtime import resolve_device

    resolve_device(device)  # before the model is built: a GPU that is not there is named at once

    from dpaudit.data import loading_notes

    data_task = getattr(splits, "task", "classification")
    model_task = getattr(ckpt, "task", None)
    which = "--dataset demo-ct or msd:PATH" if model_task == "segmentation" else "e.g. --dataset demo"
    trained = f"; it was trained on {ckpt.dataset}" if ckpt.dataset else ""
    check_task(model_task, data_task, model=f"the checkpoint {ckpt.path or ckpt.arch}",
               data=f"--dataset {splits.name}", fix=f"attack it with {model_task} data ({which}{trained}), or "
               f"pass a {data_task} checkpoint with --model")
    images, labels = select_images(splits.train, scenario)
    channels = images.shape[1]
    if ckpt.in_channels != channels:
        raise invalid("dataset channels", channels, f"the model's input channels ({ckpt.in_channels})",
                      "pass a dataset with as many channels as the model was trained on", cls=ConfigError)
    if len(labels) and int(labels.max()) >= ckpt.num_classes:
        raise invalid("labels", int(labels.max()), f"below the model's number of classes ({ckpt.num_classes})",
                      "pass the dataset the model was trained on")
    sigmas, epsilons, notes = scenario_noise(ckpt, scenario)
    notes = [*training_data_differences(ckpt, splits.name, tuple(int(x) for x in images.shape[1:])), *notes]
    clip = scenario.max_grad_norm if scenario.max_grad_norm is not None else (ckpt.max_grad_norm or 1.0)
    model = ckpt.build_model()
    # The attacked client trains with DP-SGD: the same layer check as training (every problem at once), and the
    # model must be an image classifier for these images (the imprint block sits before it).
    from dpaudit.models import check_classifier, check_dp_compatible

    check_dp_compatible(model.train())
    check_classifier(model, tuple(int(x) for x in images.shape[1:]), ckpt.num_classes, ckpt.arch,
                     segmentation=labels.dim() == 3)  # label maps: a segmentation network
    model.eval()
    result = run_attack(model, images, labels, mean=ckpt.mean, std=ckpt.std, noise_multipliers=sigmas,
                        decoders=scenario.decoders, connection=scenario.connection, bins=scenario.bins,
                        max_grad_norm=clip, observations=scenario.observations, seed=scenario.seed,
                        scoring=scenario.scoring, epsilons=epsilons, progress=progress, denoiser=scenario.denoiser,
                        keep_images=scenario.keep_images, device=device)
    # The scenario's notes first (what noise was replayed), then run_attack's own (e.g. images the block barely reads).
    return dataclasses.replace(result, notes=(*notes, *result.notes),
                               epsilon_mechanism=scenario_mechanism(ckpt, scenario),
                               data_notes=tuple(loading_notes(splits)))

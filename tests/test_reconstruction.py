"""The imprint-layer attack: exactness of the replay against autograd, decoders, scoring, and the result contract.

Independent references: autograd through :class:`ImprintBlock` with an explicit Opacus-style clip and noise
(replay, eta), scikit-image's ``structural_similarity`` (batched SSIM), brute-force argmin (nearest match), scipy's
exact binomial interval (Clopper-Pearson). Test images are scikit-image's bundled pictures (no download).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import warnings
from copy import deepcopy

import numpy as np
import pytest
import skimage.data
import torch
from skimage.metrics import structural_similarity
from skimage.transform import resize

from dpaudit.attacks.decoders import Layout, choose_prefix
from dpaudit.attacks.imprint import (
    OPACUS_CLIP_EPS,
    ImprintBlock,
    ImprintedModel,
    clean_block_gradient,
    image_statistics,
    replay,
)
from dpaudit.attacks.reconstruction import AttackResult, run_attack
from dpaudit.attacks.scoring import clopper_pearson, keep_mask, nearest_match, ssim_batch, wilson
from dpaudit.codec import encode
from dpaudit.errors import ConfigError, DataError, DpAuditError
from dpaudit.models import build_model

PICTURES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@functools.cache
def _pictures(size: int) -> np.ndarray:
    out = []
    for name in PICTURES:
        im = getattr(skimage.data, name)()[..., :3]
        h, w = im.shape[:2]
        out.append(resize(im, (size, size), anti_aliasing=True))
        out.append(resize(im[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4], (size, size), anti_aliasing=True))
    return np.stack(out).astype(np.float32)


def pictures(size: int, n: int = 8) -> torch.Tensor:
    """n colour test images size x size from scikit-image's bundled pictures (full frame and a centre crop)."""
    return torch.from_numpy(_pictures(size)[:n].copy()).permute(0, 3, 1, 2).contiguous()


def small_model(seed: int = 0, arch: str = "smallcnn") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, num_classes=4)


def test_pictures_are_bundled_offline() -> None:
    assert pictures(16, 12).shape == (12, 3, 16, 16)


@pytest.mark.parametrize("connection", ["linear", "addition"])
def test_sigma_zero_reconstructs_every_image_for_every_decoder(connection: str) -> None:
    x = pictures(24, 6)
    res = run_attack(small_model(), x, torch.arange(6) % 4, mean=MEAN, std=STD, noise_multipliers=[0.0],
                     decoders=("strong", "paper", "paper-all"), connection=connection, scoring="paired")
    for row in res.rows:
        assert row.n_images == 6
        assert np.all(row.ssim > 0.999), (row.decoder, row.ssim)
        assert row.success_rate == 1.0


def test_strong_beats_paper_at_sigma_1e4_on_64px_colour() -> None:
    # Spec section 3: ~100% for the strong decoder at 1e-4 on 64x64 RGB, 0% for the paper's decoder.
    x = pictures(64, 6)
    res = run_attack(small_model(1, "resnet9"), x, torch.arange(6) % 4, mean=MEAN, std=STD,
                     noise_multipliers=[1e-4], decoders=("strong", "paper"))
    strong, paper = res.rows
    assert strong.success_rate >= 5 / 6 and strong.mean_ssim > 0.9
    assert paper.success_rate == 0.0
    assert res.headline()[0].decoder == "strong"


def _direct_noisy_gradient(model, block, x, y, sigma, clip, xi):
    """Independent reference: autograd through the real block, Opacus clip, noise on the block's parameters."""
    net = ImprintedModel(block, model)
    z = ((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]
    loss = torch.nn.functional.cross_entropy(net(z), y[None])
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    f = min(1.0, clip / (float(norm) + OPACUS_CLIP_EPS))
    gw = grads[0].double() * f
    gb = grads[1].double() * f
    rows = torch.cat([gw, gb[:, None]], dim=1).numpy() + sigma * clip * xi.astype(np.float64)
    return rows, float(norm), z.flatten().double().numpy()


@pytest.mark.parametrize("connection", ["linear", "addition"])
def test_replay_equals_direct_noisy_per_sample_gradient(connection: str, rng: np.random.Generator) -> None:
    x = pictures(16, 2)
    model = small_model(2)
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD), connection=connection)
    names = [n for n, _ in ImprintedModel(block, model).named_parameters()]
    assert names[:2] == ["block.weight", "block.bias"]
    stats = image_statistics(model, block, x, torch.tensor([1, 3]), mean=np.array(MEAN), std=np.array(STD))
    for i in range(2):
        xi = rng.standard_normal((block.bins, 16 * 16 * 3 + 1)).astype(np.float32)
        direct, g_direct, z = _direct_noisy_gradient(model, block, x[i], torch.tensor([1, 3][i]), 0.05, 0.5, xi)
        clean = clean_block_gradient(z, stats.delta[i], int(stats.active_rows[i]), block.bins,
                                     stats.clip_factor(0.5)[i])
        view = replay(clean, xi, 0.05, 0.5)
        assert stats.grad_norm[i] == pytest.approx(g_direct, rel=1e-5)
        assert stats.clip_factor(0.5)[i] < 1  # clipping is active
        np.testing.assert_allclose(view, direct, rtol=0, atol=1e-6 * np.abs(direct).max())


def test_success_is_invariant_to_the_clip_norm_while_clipping_is_active() -> None:
    # With f = C / G the view is C * (delta [x, 1] / G + sigma xi): proportional to C, so decoding is unchanged.
    x = pictures(32, 4)
    model = small_model(3)
    kw = dict(mean=MEAN, std=STD, noise_multipliers=[0.0, 3e-4, 3e-3], decoders=("strong", "paper"), seed=5)
    a = run_attack(model, x, torch.arange(4), max_grad_norm=1e-3, **kw)
    b = run_attack(model, x, torch.arange(4), max_grad_norm=1e-2, **kw)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        np.testing.assert_allclose(ra.ssim, rb.ssim, atol=1e-5)
        np.testing.assert_allclose(ra.eta, rb.eta, rtol=1e-9)


@pytest.mark.parametrize("connection", ["linear", "addition"])
def test_measured_eta_agrees_with_the_formula(connection: str, rng: np.random.Generator) -> None:
    x = pictures(32, 1)
    model = small_model(4)
    block = ImprintBlock((3, 32, 32), mean=np.array(MEAN), std=np.array(STD), connection=connection)
    stats = image_statistics(model, block, x, torch.tensor([2]), mean=np.array(MEAN), std=np.array(STD))
    sigma, clip = 2e-3, 0.7
    xi = rng.standard_normal((block.bins, 32 * 32 * 3 + 1)).astype(np.float32)
    direct, g, z = _direct_noisy_gradient(model, block, x[0], torch.tensor(2), sigma, clip, xi)
    m = int(stats.active_rows[0])
    f = min(1.0, clip / (g + OPACUS_CLIP_EPS))
    pooled = direct[: m + 1].mean(axis=0)
    residual = pooled[:-1] / (f * stats.delta[0]) - z
    eta = stats.eta(sigma, clip)[0]
    # Spec section 2 form while clipping is active: sigma |[x, 1]| / rho.
    assert eta == pytest.approx(sigma * stats.x_norm1[0] / stats.rho[0], rel=1e-6)
    # The std of D = 3072 Gaussian residuals is within 5% of eta with probability > 0.99 (relative s.e. 1.3%).
    assert np.std(residual) == pytest.approx(eta, rel=0.05)


def test_constant_pattern_pitfall_is_caught() -> None:
    # Breaching's readout (all ones, constant bias) feeds a constant image; ResNet-9 starts with a bias-free conv
    # followed by GroupNorm, which is invariant to its scale: the block's gradient vanishes.
    x = pictures(32, 1)
    model = small_model(0, "resnet9")
    block = ImprintBlock((3, 32, 32), mean=np.array(MEAN), std=np.array(STD), pattern="constant")
    with pytest.raises(ConfigError, match="constant pattern") as info:
        image_statistics(model, block, x, torch.tensor([0]), mean=np.array(MEAN), std=np.array(STD))
    assert "pattern='random'" in str(info.value) and "--connection addition" in str(info.value)
    # The fix never names what is already in use (the addition connection was suggested to its user).
    added = ImprintBlock((3, 32, 32), mean=np.array(MEAN), std=np.array(STD), pattern="constant",
                         connection="addition")
    try:
        image_statistics(model, added, x, torch.tensor([0]), mean=np.array(MEAN), std=np.array(STD))
    except ConfigError as exc:
        assert "--connection addition" not in str(exc)
    ok = ImprintBlock((3, 32, 32), mean=np.array(MEAN), std=np.array(STD))
    stats = image_statistics(model, ok, x, torch.tensor([0]), mean=np.array(MEAN), std=np.array(STD))
    assert stats.rho[0] > 0.5 and stats.delta[0] != 0


def test_the_block_is_judged_on_several_images_not_the_first_alone() -> None:
    # One image can hold little of its gradient in the block by chance (a fresh 2-class U-Net: 4 of 40 slices at
    # 16 px); only a block dead on every judged image stops the attack, as a model that cancels it does.
    from dpaudit.attacks.imprint import DEAD_BLOCK_RHO, JUDGED_IMAGES, _judge_block

    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD))
    gnorm = np.ones(JUDGED_IMAGES)
    unlucky_first = np.full(JUDGED_IMAGES, 0.5)
    unlucky_first[0] = DEAD_BLOCK_RHO["linear"] / 10
    _judge_block(block, gnorm, unlucky_first)  # no error
    _judge_block(block, np.r_[0.0, gnorm[1:]], np.r_[0.0, unlucky_first[1:]])  # a first image with no gradient
    with pytest.raises(ConfigError, match=f"at most 1.00e-02 of the per-sample gradient norm over the first "
                                          f"{JUDGED_IMAGES} images") as info:
        _judge_block(block, gnorm, np.full(JUDGED_IMAGES, 0.01))
    assert "--connection addition" in str(info.value)
    with pytest.raises(ConfigError, match=f"each of the first {JUDGED_IMAGES} images is exactly zero"):
        _judge_block(block, np.zeros(JUDGED_IMAGES), np.zeros(JUDGED_IMAGES))
    stats = image_statistics(small_model(4), block, pictures(16, 2), torch.tensor([0, 1]), mean=np.array(MEAN),
                             std=np.array(STD))
    stats.grad_norm[1] = stats.block_norm[1] = 0.0
    assert stats.rho[1] == 0.0 and np.isfinite(stats.rho).all()


def test_images_the_block_barely_reads_are_counted_in_the_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block that passes the judgement on some images but holds less than DEAD_BLOCK_RHO on others is attacked
    as it is; the result says how many of all its images (not only the judged ones) are below, per connection."""
    import dpaudit.attacks.reconstruction as reconstruction
    from dpaudit.attacks.imprint import DEAD_BLOCK_RHO, JUDGED_IMAGES, ImageStatistics, weak_block_note

    for connection, threshold in DEAD_BLOCK_RHO.items():
        n = JUDGED_IMAGES + 4
        rho = np.full(n, 2 * threshold)
        rho[[1, 3, n - 1]] = threshold / 2  # one past the judged images
        note = weak_block_note(rho, connection)
        assert note is not None and note.startswith(f"3 of {n} images hold less than {threshold:g} of their "
                                                    "per-sample gradient norm in the imprint block")
        assert f"({connection} connection)" in note and "understate the risk" in note
        assert weak_block_note(np.full(n, threshold), connection) is None  # at the threshold: not below it
    assert weak_block_note(np.r_[0.5, 0.0], "linear").startswith("1 of 2")  # a zero gradient holds nothing

    real = reconstruction.image_statistics

    def halve_second(*args, **kwargs) -> ImageStatistics:
        s = real(*args, **kwargs)
        block = s.block_norm.copy()
        block[1] = s.grad_norm[1] * DEAD_BLOCK_RHO["linear"] / 2
        return ImageStatistics(s.delta, s.active_rows, s.grad_norm, block, s.x_norm1)

    kw = dict(mean=MEAN, std=STD, noise_multipliers=[0.0])
    assert run_attack(small_model(), pictures(16, 3), torch.arange(3), **kw).notes == ()  # rho > 0.98 here
    monkeypatch.setattr(reconstruction, "image_statistics", halve_second)
    result = run_attack(small_model(), pictures(16, 3), torch.arange(3), **kw)
    assert len(result.notes) == 1 and result.notes[0].startswith("1 of 3 images hold less than 0.1")


def test_row_zero_always_fires_and_rows_form_a_prefix() -> None:
    black = torch.zeros(1, 3, 16, 16)
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD))
    h = torch.nn.functional.linear(((black - 0.5) / 0.25).flatten(1), block.weight, block.bias)
    assert h[0, 0] > 0
    assert torch.all(torch.diff(block.thresholds) > 0)


def test_prefix_choice_recovers_the_active_rows(rng: np.random.Generator) -> None:
    u = rng.standard_normal(500)
    for m in range(10):
        rows = np.zeros((10, 500))
        rows[: m + 1] = u
        assert choose_prefix(rows) == m
        assert choose_prefix(rows + 0.05 * rng.standard_normal(rows.shape)) == m


def test_ssim_batch_matches_skimage(rng: np.random.Generator) -> None:
    gt = pictures(40, 4).permute(0, 2, 3, 1).numpy().astype(np.float64)
    for noise in (0.0, 0.02, 0.2):
        rec = np.clip(gt + noise * rng.standard_normal(gt.shape), 0, 1)
        ours = ssim_batch(rec, gt)
        ref = [structural_similarity(r, g, data_range=1.0, channel_axis=-1) for r, g in zip(rec, gt, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-10)
    grey = gt[..., :1]
    ref = structural_similarity(grey[0, ..., 0], np.clip(grey[0, ..., 0] + 0.1, 0, 1), data_range=1.0)
    assert ssim_batch(np.clip(grey[:1] + 0.1, 0, 1), grey[:1])[0] == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("size, channels", [((7, 7), 1), ((9, 13), 3), ((40, 40), 1), ((64, 64), 3)])
def test_ssim_batch_matches_skimage_on_adversarial_images(size, channels, rng: np.random.Generator) -> None:
    # Reference: scikit-image's structural_similarity in float64, image by image. Constant and near-constant pairs
    # (the variances cancel, c2 is all that is left), saturated 0/1 images, noise and smooth ramps; float32 and
    # float64 inputs; a count of planes that ends in a short chunk (scoring._ssim_step planes per chunk).
    from dpaudit.attacks.scoring import _ssim_step

    h, w = size
    step = _ssim_step(h, w)
    n = max(9, step // channels + 2)
    shape = (h, w, channels)
    ramp = np.linspace(0, 1, h * w * channels).reshape(shape)
    kinds = [
        lambda: (np.full(shape, 0.5), np.full(shape, 0.5)),
        lambda: (np.full(shape, rng.random()), np.full(shape, rng.random())),
        lambda: (np.full(shape, 0.7), np.clip(0.72 + 1e-4 * rng.random(shape), 0, 1)),
        lambda: (np.zeros(shape), np.ones(shape)),
        lambda: ((rng.random(shape) > 0.5).astype(float), (rng.random(shape) > 0.5).astype(float)),
        lambda: (rng.random(shape), rng.random(shape)),
        lambda: (ramp, np.clip(ramp + 0.05 * rng.standard_normal(shape), 0, 1)),
        lambda: (np.full(shape, 1.0), rng.random(shape)),
        lambda: (ramp, ramp),
    ]
    pairs = [kinds[i % len(kinds)]() for i in range(n)]
    rec, gt = (np.stack(p) for p in zip(*pairs, strict=True))
    assert (n * channels) % step != 0 or n * channels < step  # a short last chunk, or one chunk
    ref = [structural_similarity(r, g, data_range=1.0, channel_axis=-1) for r, g in zip(rec, gt, strict=True)]
    np.testing.assert_allclose(ssim_batch(rec, gt), ref, rtol=0, atol=1e-10)
    rec32, gt32 = rec.astype(np.float32), gt.astype(np.float32)
    ref32 = [structural_similarity(r.astype(np.float64), g.astype(np.float64), data_range=1.0, channel_axis=-1)
             for r, g in zip(rec32, gt32, strict=True)]
    np.testing.assert_allclose(ssim_batch(rec32, gt32), ref32, rtol=0, atol=1e-10)


def test_ssim_batch_reads_any_layout_and_dtype_alike(rng: np.random.Generator) -> None:
    # The decoders hand over float32 images stored plane after plane; tests and users pass C-ordered float64.
    # The images' 3 planes each end in a short chunk of planes (scoring._ssim_step planes per chunk).
    from dpaudit.attacks.scoring import _ssim_step

    n = _ssim_step(40, 40) // 3 + 1
    assert (3 * n) % _ssim_step(40, 40) != 0
    gt = np.concatenate([pictures(40, n).permute(0, 2, 3, 1).numpy()]).astype(np.float64)
    rec32 = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
    planar = np.moveaxis(np.ascontiguousarray(np.moveaxis(rec32, -1, 1)), 1, -1)
    frozen = rec32.copy()
    frozen.flags.writeable = False
    ours = ssim_batch(rec32, gt)
    for other in (planar, frozen, rec32.astype(np.float64), torch.from_numpy(planar)):
        np.testing.assert_array_equal(ssim_batch(other, gt), ours)
    ref = [structural_similarity(r.astype(np.float64), g, data_range=1.0, channel_axis=-1)
           for r, g in zip(rec32, gt, strict=True)]
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_strong_decoder_decodes_each_image_as_if_alone(rng: np.random.Generator) -> None:
    # Batching, denoising only the images above the 8-bit noise floor (here: half of them) and a dead bias
    # gradient change nothing: every image decodes to the same bits as on its own.
    from dpaudit.attacks.decoders import MIN_DENOISE_STD, decode_pooled

    lay = Layout((3, 24, 24), np.array(MEAN), np.array(STD))
    x = ((pictures(24, 6).numpy() - 0.5) / 0.25).reshape(6, -1)
    scale = np.array([2.0, 1e3, 3.0, 1e4, 0.0, 0.5])  # noise_std / scale: above, below, above, below, dead, above
    avg = np.concatenate([x * scale[:, None], scale[:, None]], axis=1)
    avg[:, :-1] += 0.02 * rng.standard_normal(x.shape)
    avg = avg.astype(np.float32)
    prefix = np.array([0, 3, 1, 9, 0, 2])
    noise_std = 0.02
    level = noise_std / np.sqrt(prefix + 1.0) / np.where(scale == 0, 1.0, scale) * np.max(STD)
    assert 0 < (level > MIN_DENOISE_STD).sum() < 6
    together = decode_pooled(avg, prefix, lay, noise_std)
    for i in range(6):
        np.testing.assert_array_equal(together[i], decode_pooled(avg[i : i + 1], prefix[i : i + 1], lay, noise_std)[0])
    assert together.dtype == np.float32 and together.min() >= 0 and together.max() <= 1
    np.testing.assert_array_equal(together[4], np.clip(lay.to_image(np.zeros(x.shape[1])), 0, 1))


def test_nearest_match_equals_brute_force(rng: np.random.Generator) -> None:
    inputs = rng.random((12, 16, 16, 3))
    cands = np.concatenate([np.clip(inputs + 0.1 * rng.standard_normal(inputs.shape), 0, 1),
                            rng.random((30, 16, 16, 3))])[rng.permutation(42)]
    brute = np.argmin(((inputs.reshape(12, 1, -1) - cands.reshape(1, 42, -1)) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest_match(inputs, cands), brute)


def test_nearest_match_resolves_near_ties_like_brute_force(rng: np.random.Generator) -> None:
    # Candidates closer to each other than the GEMM form's round-off: exact duplicates (the lower index wins) and
    # one-pixel perturbations of 1e-7; the certified search must agree with the direct-sum brute force.
    inputs = rng.random((6, 32, 32, 3))
    base = np.clip(inputs + 0.05 * rng.standard_normal(inputs.shape), 0, 1).astype(np.float32)
    near = base.copy()
    near[:, 3, 5, 1] -= np.float32(1e-7) * np.sign(near[:, 3, 5, 1] - inputs[:, 3, 5, 1]).astype(np.float32)
    cands = np.concatenate([base, near, base, rng.random((5, 32, 32, 3)).astype(np.float32)])
    cands = cands[rng.permutation(len(cands))]
    flat = cands.reshape(len(cands), -1).astype(np.float64)
    brute = np.array([np.argmin(((flat - a.reshape(-1)) ** 2).sum(1)) for a in inputs])
    np.testing.assert_array_equal(nearest_match(inputs, cands), brute)


def test_intervals_match_scipy_and_cover(rng: np.random.Generator) -> None:
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (10, 10), (57, 100)]:
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
        ref_w = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ref_w.low, ref_w.high), abs=1e-12)
    # Coverage by simulation at p = 0.9, n = 40: exact intervals cover at least 95% (MC s.e. ~0.7%).
    draws = rng.binomial(40, 0.9, size=2000)
    cover = np.mean([lo <= 0.9 <= hi for lo, hi in (clopper_pearson(int(k), 40) for k in draws)])
    assert cover >= 0.95 - 0.02


def test_almost_black_images_are_excluded_and_counted() -> None:
    x = pictures(24, 4)
    x[1] = 0.0
    x[1, :, :2, :2] = 1.0  # 4 of 576 pixels non-zero
    assert keep_mask(x.permute(0, 2, 3, 1).numpy()).tolist() == [True, False, True, True]
    res = run_attack(small_model(), x, torch.arange(4), mean=MEAN, std=STD, noise_multipliers=[0.0],
                     decoders=("strong",))
    assert res.n_excluded == 1 and res.rows[0].n_images == 3


def test_result_contract_json_keys_and_frozen_arrays() -> None:
    res = run_attack(small_model(), pictures(16, 3), torch.arange(3), mean=MEAN, std=STD,
                     noise_multipliers=[0.0, 1e-3], epsilons=[float("inf"), 8.0], observations=4)
    assert isinstance(res, AttackResult)
    js = encode(res)  # what dpaudit attack --json prints and the profile stores (rows whole)
    assert set(js) == {"rows", "n_excluded", "image_shape", "ssim_variant", "rho", "connection", "bins",
                       "max_grad_norm", "observations", "scoring", "seed", "notes", "success_ssim", "epsilon_mechanism",
                       "data_notes", "labels"}
    assert set(js["rows"][0]) == {"noise_multiplier", "epsilon", "decoder", "n_images", "success_rate", "ci_low",
                                  "ci_high", "mean_ssim", "mean_rho", "ssim", "eta"}  # never the kept images
    assert [r["decoder"] for r in js["rows"]] == ["strong", "paper", "strong", "paper"]
    assert js["rows"][2]["epsilon"] == 8.0 and js["image_shape"] == [3, 16, 16]
    assert "7x7" in res.ssim_variant
    with pytest.raises(ValueError):
        res.rows[0].ssim[0] = 0.0
    # Observations: eta scales as 1 / sqrt(T).
    one = run_attack(small_model(), pictures(16, 3), torch.arange(3), mean=MEAN, std=STD, noise_multipliers=[1e-3])
    np.testing.assert_allclose(res.rows[2].eta, one.rows[0].eta / 2, rtol=1e-9)


@pytest.mark.parametrize("kwargs, exc", [
    (dict(noise_multipliers=[-1.0]), ConfigError),
    (dict(noise_multipliers=[]), ConfigError),
    (dict(noise_multipliers=[0.0], decoders=("magic",)), ConfigError),
    (dict(noise_multipliers=[0.0], connection="cat"), ConfigError),
    (dict(noise_multipliers=[0.0], scoring="oracle"), ConfigError),
    (dict(noise_multipliers=[0.0], observations=0), ConfigError),
    (dict(noise_multipliers=[0.0], bins=1), ConfigError),
    (dict(noise_multipliers=[0.0], std=(0.0, 1.0, 1.0)), ConfigError),
    (dict(noise_multipliers=[0.0, 1.0], epsilons=[1.0]), ConfigError),
])
def test_bad_inputs_raise_clear_errors(kwargs: dict, exc: type[DpAuditError]) -> None:
    base = dict(mean=MEAN, std=STD)
    base.update(kwargs)
    with pytest.raises(exc):
        run_attack(small_model(), pictures(16, 2), torch.arange(2), **base)


def test_bad_images_raise_data_errors() -> None:
    x = pictures(16, 2)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        run_attack(small_model(), x * 255, torch.arange(2), mean=MEAN, std=STD, noise_multipliers=[0.0])
    with pytest.raises(DataError, match="one label per image"):
        run_attack(small_model(), x, torch.arange(3), mean=MEAN, std=STD, noise_multipliers=[0.0])
    with pytest.raises(DataError, match="non-zero"):
        run_attack(small_model(), torch.zeros(2, 3, 16, 16), torch.arange(2), mean=MEAN, std=STD,
                   noise_multipliers=[0.0])


def test_layout_round_trip() -> None:
    lay = Layout((3, 4, 5), np.array(MEAN), np.array(STD))
    img = np.random.default_rng(0).random((4, 5, 3))
    flat = ((np.moveaxis(img, -1, 0) - 0.5) / 0.25).ravel()
    np.testing.assert_allclose(lay.to_image(flat), img, atol=1e-12)
    np.testing.assert_array_equal(lay.denormalise_(flat[None].copy())[0], lay.to_image(flat))


def test_pooled_views_match_the_row_wise_replay_statistically(rng: np.random.Generator) -> None:
    # PooledNoise's claim: each decoder's view has exactly the law it has under the full K x (D+1) replay. Reference:
    # the row-wise replay, decoded by choose_prefix and breaching's reduction, at a noise level where the chosen
    # prefix and the kept row vary. Two-sample tests on R draws each; the false-alarm rate of each is 1e-3.
    from scipy.stats import chi2_contingency, ks_2samp

    from dpaudit.attacks.decoders import paper_choice
    from dpaudit.attacks.imprint import ImageStatistics, draw_pooled_noise, pooled_views

    d, k, m, r, sigma, delta = 48, 10, 3, 4000, 0.45, 0.12
    z = rng.standard_normal(d).astype(np.float32)
    x1 = float(np.sqrt((z.astype(np.float64) ** 2).sum() + 1.0))
    stats = ImageStatistics(np.full(r, delta), np.full(r, m), np.full(r, 0.5), np.full(r, 1.0), np.full(r, x1))
    views = pooled_views(stats, draw_pooled_noise(rng, np.tile(z, (r, 1)), k), noise_multiplier=sigma,
                         max_grad_norm=1.0)
    clean = clean_block_gradient(z, delta, m, k, 1.0)
    full = replay(clean[None], rng.standard_normal((r, *clean.shape), dtype=np.float32), sigma, 1.0)
    full = full.astype(np.float64)
    m_rows = np.array([choose_prefix(v) for v in full])
    avg_rows = np.stack([v[: j + 1].mean(axis=0) for v, j in zip(full, m_rows, strict=True)])
    diff = full.copy()
    diff[:, 1:] -= full[:, :-1]
    keep_rows = paper_choice(diff[:, :, -1], diff[:, :, :-1].mean(axis=-1))
    kept_rows = diff[np.arange(r), keep_rows]
    avg, m_pooled = views["strong"]
    kept, keep_pooled = views["paper"]
    assert 0.2 < np.mean(m_rows == m) < 0.9  # the test is sensitive: the prefix choice is often wrong
    for a, b in ((m_pooled, m_rows), (keep_pooled, keep_rows)):
        table = np.array([np.bincount(a, minlength=k), np.bincount(b, minlength=k)])
        assert chi2_contingency(table[:, table.sum(0) > 0]).pvalue > 1e-3
    resid = np.linalg.norm(avg - clean[0], axis=1), np.linalg.norm(avg_rows - clean[0], axis=1)
    assert ks_2samp(*resid).pvalue > 1e-3
    for j in (0, 17, d):  # a weight entry of each view, and the bias entry
        assert ks_2samp(avg[:, j], avg_rows[:, j]).pvalue > 1e-3
        assert ks_2samp(kept[:, j], kept_rows[:, j]).pvalue > 1e-3


def test_pooled_views_are_exact_without_noise() -> None:
    from dpaudit.attacks.imprint import draw_pooled_noise, pooled_views

    x = pictures(16, 3)
    model = small_model(5)
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD))
    stats = image_statistics(model, block, x, torch.tensor([0, 1, 2]), mean=np.array(MEAN), std=np.array(STD))
    z = ((x - 0.5) / 0.25).reshape(3, -1).numpy()
    views = pooled_views(stats, draw_pooled_noise(np.random.default_rng(0), z, 10), noise_multiplier=0.0,
                         max_grad_norm=0.1)
    for i in range(3):
        clean = clean_block_gradient(z[i], stats.delta[i], int(stats.active_rows[i]), 10, stats.clip_factor(0.1)[i])
        assert views["strong"][1][i] == stats.active_rows[i]
        np.testing.assert_allclose(views["strong"][0][i], clean[0], rtol=1e-5, atol=1e-6 * np.abs(clean).max())
        assert views["paper"][1][i] == 0
        np.testing.assert_allclose(views["paper"][0][i], clean[0], rtol=1e-5, atol=1e-6 * np.abs(clean).max())


@pytest.mark.parametrize("noise", [0.01, 0.03, 0.1])
def test_tv_denoiser_is_at_least_as_good_as_skimage(noise: float, rng: np.random.Generator) -> None:
    # Reference: scikit-image's denoise_tv_chambolle (default eps 2e-4) at the same weight, the decoder's earlier
    # denoiser, on the 12 bundled pictures at 64x64x3. Our fixed-iteration Chambolle-Pock must give a mean SSIM at
    # least as high (measured margin: +0.002..+0.02, bench/bench_attack.py --calibrate-tv), at least as many
    # images above 0.8, and no image more than 0.03 below skimage's (measured worst: -0.014).
    from skimage.restoration import denoise_tv_chambolle

    from dpaudit.attacks.decoders import denoise_tv

    gt = _pictures(64).astype(np.float64)
    noisy = np.clip(gt + noise * rng.standard_normal(gt.shape), -0.5, 1.5)
    ref = np.stack([denoise_tv_chambolle(im, weight=noise, channel_axis=-1) for im in noisy])
    ours = denoise_tv(noisy.astype(np.float32), np.full(len(gt), noise))
    s_ref = ssim_batch(np.clip(ref, 0, 1), gt)
    s_ours = ssim_batch(np.clip(ours, 0, 1), gt)
    assert s_ours.mean() >= s_ref.mean() - 1e-3
    assert (s_ours > 0.8).sum() >= (s_ref > 0.8).sum()
    assert np.min(s_ours - s_ref) > -0.03


def test_levels_scored_together_equal_levels_scored_alone() -> None:
    # run_attack reuses work across noise levels (the paper decoder's noise-only rows are decoded once, equal
    # candidate sets are scored once); each level must match a run at that level alone (float32 rounding of the
    # view aside) and the strong decoder exactly.
    x = pictures(24, 8)
    labels = torch.arange(8) % 4
    grid = [0.0, 1e-5, 1e-3, 3e-2, 1e-3]
    kw = dict(mean=MEAN, std=STD, decoders=("strong", "paper"))
    together = run_attack(small_model(3), x, labels, noise_multipliers=grid, **kw).rows
    for j, sigma in enumerate(grid):
        alone = run_attack(small_model(3), x, labels, noise_multipliers=[sigma], **kw).rows
        for a, b in zip(alone, together[2 * j : 2 * j + 2], strict=True):
            assert (a.decoder, a.success_rate) == (b.decoder, b.success_rate)
            np.testing.assert_allclose(b.ssim, a.ssim, rtol=0, atol=0 if a.decoder == "strong" else 1e-6)


def test_candidate_sets_compared_exactly(rng: np.random.Generator) -> None:
    # Reference: np.array_equal. The quick first-row check may only reject, never accept, a pair.
    from dpaudit.attacks.reconstruction import _same_images

    a = rng.random((4, 9, 8, 3)).astype(np.float32)
    planar = np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 1)), 1, -1)  # the decoders' layout
    below_first_row = a.copy()
    below_first_row[2, 5, 3, 1] += 1e-6
    in_first_row = a.copy()
    in_first_row[3, 0, 7, 2] = 0.0
    for b in (a.copy(), planar, below_first_row, in_first_row, a[:3], a[..., :1], np.zeros_like(a)):
        assert _same_images(a, b) == (a.shape == b.shape and np.array_equal(a, b))


def test_tv_denoiser_result_does_not_depend_on_the_chunking(rng: np.random.Generator, monkeypatch) -> None:
    # Each plane is solved on its own: one image denoised alone, with others, and in chunks of any size is the
    # same bit for bit (the attack relies on it: levels and images are batched as speed dictates).
    import dpaudit.attacks.decoders as decoders

    images = np.clip(rng.random((5, 24, 20, 3)) + 0.1 * rng.standard_normal((5, 24, 20, 3)), -0.5, 1.5)
    images = images.astype(np.float32)
    weight = np.array([0.01, 0.05, 0.1, 0.2, 0.03])
    together = decoders.denoise_tv(images, weight)
    for values in (1, 24 * 20 * 2, 24 * 20 * 7, 1 << 20):
        monkeypatch.setattr(decoders, "_TV_CHUNK_VALUES", values)
        np.testing.assert_array_equal(decoders.denoise_tv(images, weight), together)
    for i in range(len(images)):
        np.testing.assert_array_equal(decoders.denoise_tv(images[i : i + 1], weight[i : i + 1])[0], together[i])


def test_rof_solver_equals_a_plain_chambolle_pock_reference(rng: np.random.Generator) -> None:
    # Reference: Chambolle and Pock (2011), Algorithm 2 for the ROF problem, written out in float64 numpy without
    # in-place updates or buffer rotation; the solver must agree to float32 round-off.
    import math

    from dpaudit.attacks.decoders import TV_ITERATIONS, TV_TAU0, _rof_unit

    g = (rng.random((4, 20, 17)) + 0.3 * rng.standard_normal((4, 20, 17))) / 0.05

    def grad(u):
        gx, gy = np.zeros_like(u), np.zeros_like(u)
        gx[:, :-1] = u[:, 1:] - u[:, :-1]
        gy[:, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
        return gx, gy

    def div(px, py):  # the negative adjoint of grad
        d = px.copy()
        d[:, 1:] -= px[:, :-1]
        d[:, -1] = -px[:, -2]
        dy = py.copy()
        dy[:, :, 1:] -= py[:, :, :-1]
        dy[:, :, -1] = -py[:, :, -2]
        return d + dy

    u, ubar, px, py = g.copy(), g.copy(), np.zeros_like(g), np.zeros_like(g)
    tau = TV_TAU0
    sigma = 1.0 / (8.0 * tau)
    for _ in range(TV_ITERATIONS):
        gx, gy = grad(ubar)
        px, py = px + sigma * gx, py + sigma * gy
        norm = np.maximum(1.0, np.hypot(px, py))
        px, py = px / norm, py / norm
        u_new = (u + tau * (div(px, py) + g)) / (1.0 + tau)
        theta = 1.0 / math.sqrt(1.0 + 2.0 * tau)
        ubar = u_new + theta * (u_new - u)
        u, tau, sigma = u_new, tau * theta, sigma / theta
    ours = _rof_unit(torch.from_numpy(g.astype(np.float32)), TV_ITERATIONS, TV_TAU0).numpy()
    np.testing.assert_allclose(ours, u, rtol=0, atol=2e-5 * np.abs(u).max())


def test_paper_rows_formed_for_some_images_equal_the_full_view(rng: np.random.Generator) -> None:
    # The attack forms the paper decoder's kept row only for images it has not decoded before; those rows must be
    # the full view's rows bit for bit, and the cached decoding must equal decoding every row at every level.
    from dpaudit.attacks.decoders import decode_paper_rows
    from dpaudit.attacks.imprint import draw_pooled_noise, paper_view, pooled_views
    from dpaudit.attacks.reconstruction import _NoiseRowCache

    x = pictures(16, 6)
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD))
    stats = image_statistics(small_model(2), block, x, torch.arange(6) % 4, mean=np.array(MEAN), std=np.array(STD))
    z = ((x - 0.5) / 0.25).reshape(6, -1).numpy()
    noise = draw_pooled_noise(rng, z, 10)
    layout = Layout((3, 16, 16), np.array(MEAN), np.array(STD))
    cache = _NoiseRowCache(stats.active_rows)
    given = []  # what the cache returned, and a copy: a later level must not change an earlier level's images
    for sigma in (0.0, 1e-4, 1e-2, 3e-2, 1e-1, 1.0, 1e-2, 3.0, 3.0):
        kw = dict(noise_multiplier=sigma, max_grad_norm=0.5)
        view = paper_view(stats, noise, **kw)
        rows, keep = pooled_views(stats, noise, decoders=("paper",), **kw)["paper"]
        np.testing.assert_array_equal(view.keep, keep)
        for some in ([0], [4, 1], [2, 3, 5]):
            np.testing.assert_array_equal(view.rows(np.array(some)), rows[some])
        # float32 rounding of a noise-only row's view at another level aside (see _NoiseRowCache)
        images = cache(view, layout)
        np.testing.assert_allclose(images, decode_paper_rows(rows, keep, layout), rtol=0, atol=1e-6)
        given.append((images, images.copy()))
    for images, copy in given:
        np.testing.assert_array_equal(images, copy)
    assert any(a is b for (a, _), (b, _) in itertools.pairwise(given))  # a level of seen rows only: no copy
    # A row not seen before, after the stored images were handed out: they are copied, not overwritten.
    signal = stats.active_rows + 1
    noise_rows = np.array([next(r for r in range(1, 10) if r != m) for m in signal])
    cache(dataclasses.replace(view, keep=noise_rows), layout)
    handed = cache(dataclasses.replace(view, keep=noise_rows), layout)
    assert handed is cache(dataclasses.replace(view, keep=noise_rows), layout)
    copy = handed.copy()
    other = noise_rows.copy()
    other[2] = next(r for r in range(1, 10) if r not in (noise_rows[2], signal[2]))
    moved = dataclasses.replace(view, keep=other, along_unit=view.along_unit + 0.5 * np.abs(view.bias_shift))
    changed = cache(moved, layout)
    np.testing.assert_array_equal(handed, copy)
    np.testing.assert_array_equal(changed[2], decode_paper_rows(moved.rows([2]), other[[2]], layout)[0])
    assert not np.array_equal(changed[2], copy[2])
    np.testing.assert_array_equal(np.delete(changed, 2, axis=0), np.delete(copy, 2, axis=0))


def test_strong_decoder_float32_route_equals_the_float64_route(rng: np.random.Generator) -> None:
    # Images to denoise are de-normalised in float32 (float64 input takes the float64 route throughout); the two
    # routes differ by float32 rounding only, and the images not denoised are bit for bit the same.
    from dpaudit.attacks.decoders import MIN_DENOISE_STD, decode_pooled

    lay = Layout((3, 20, 20), np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3]))
    x = (pictures(20, 6).numpy() - lay.mean[:, None, None]) / lay.std[:, None, None]
    scale = np.array([2.0, 1e3, -3.0, 1e4, 0.0, 0.5])  # denoised, not, denoised, not, dead, denoised
    avg = np.concatenate([x.reshape(6, -1) * scale[:, None], scale[:, None]], axis=1)
    avg[:, :-1] += 0.02 * rng.standard_normal((6, x[0].size))
    avg = avg.astype(np.float32)
    prefix = np.array([0, 3, 1, 9, 0, 2])
    level = 0.02 / np.sqrt(prefix + 1.0) / np.where(scale == 0, 1.0, np.abs(scale)) * lay.std.max()
    todo = (level > MIN_DENOISE_STD) & (scale != 0)
    fast, plain = decode_pooled(avg, prefix, lay, 0.02), decode_pooled(avg.astype(np.float64), prefix, lay, 0.02)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fast[~todo], plain[~todo])
    assert todo.sum() == 3


def _device_case(device: str) -> AttackResult:
    return run_attack(small_model(), pictures(16, 4), torch.arange(4) % 4, mean=MEAN, std=STD,
                      noise_multipliers=[0.0, 1e-3, 1e-2], decoders=("strong", "paper"), device=device)


@pytest.mark.parametrize("arch", ["smallcnn", "resnet9"])
@pytest.mark.parametrize("connection", ["linear", "addition"])
@pytest.mark.parametrize("batched", [False, True])
def test_gradient_norms_equal_an_independent_per_sample_gradient(arch: str, connection: str, batched: bool) -> None:
    """G and the block's norm from the shortcut of :func:`image_statistics` (the pre-activations as a leaf, the
    block's K x D gradient never formed) equal autograd through the real :class:`ImprintBlock` with respect to every
    parameter (block weight and bias included), squared and summed in float64, of the same network in float64.
    Tolerances from float32 rounding of either route, measured at 16 px over the four parametrisations and model
    seeds 0-10. Batch-1 passes (their Mish as the batched route's, from one exponential): G within 1.3e-6 of float64
    with the addition connection (the model's gradient dominates G; torch's mish: 1.2e-6), checked at 5e-6; with
    the linear one the block's gradient dominates G and G inherits its rounding, up to 2.1e-5 (torch's mish: 9.9e-6),
    checked at 3e-5; the block's norm and rho up to 9.9e-5 (torch's mish: 8.3e-5; the block's gradient is a sum
    over the image's input gradient, which cancels), checked at 2e-4; at seed 5 (here) 8.6e-6 in G and 9.2e-6 in
    the block's norm. The batched route: the block's gradient is ill-conditioned in float32 (the model nearly cancels
    the block's direction) and lies up to 1.1e-5 from float64 at these seeds
    (test_batched_statistics_equal_batch_one_passes; measured here 1.9e-5, 3.5e-5 in rho): 5e-5. A forgotten bias
    entry in ``|[x, 1]|`` moves the block's norm by 6.5e-4 at 16 px, a forgotten active row by over 5%
    (sqrt(m / (m + 1)), m < 10 bins); with batch-1 passes, dropping any one parameter tensor from the sums fails
    the test in some parametrisation (by G or the block's norm), as against float32 autograd at 1e-5; in the
    batched route 8 of ResNet-9's GroupNorm tensors carry less of G than its tolerance in every parametrisation:
    test_batched_per_sample_gradient_of_every_tensor_equals_float64 checks each tensor on its own scale."""
    x, y = pictures(16, 4), torch.tensor([0, 3, 1, 2])
    model = small_model(5, arch)
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD), connection=connection)
    stats = image_statistics(model, block, x, y, mean=np.array(MEAN), std=np.array(STD), batched=batched)
    net = deepcopy(ImprintedModel(block, model).train()).double()  # the same network in float64
    dtype = torch.float64
    rtol, rho_rtol = (5e-5, 5e-5) if batched else (5e-6 if connection == "addition" else 3e-5, 2e-4)
    params = [p for p in net.parameters() if p.requires_grad]
    assert params[0] is net.block.weight and params[1] is net.block.bias
    total, in_block = [], []
    for i in range(len(x)):
        z = ((x[i].to(dtype) - torch.tensor(MEAN, dtype=dtype)[:, None, None])
             / torch.tensor(STD, dtype=dtype)[:, None, None])[None]
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(net(z), y[i : i + 1]), params)
        squares = [float((g.double() ** 2).sum()) for g in grads]
        total.append(np.sqrt(sum(squares)))
        in_block.append(np.sqrt(squares[0] + squares[1]))
    np.testing.assert_allclose(stats.grad_norm, total, rtol=rtol, atol=0)
    np.testing.assert_allclose(stats.block_norm, in_block, rtol=rho_rtol, atol=0)
    np.testing.assert_allclose(stats.rho, np.array(in_block) / np.array(total), rtol=rho_rtol, atol=0)


@functools.cache
def _tensor_gradient_norms(arch: str, connection: str, size: int, seed: int):
    """Per parameter tensor of the model (by name), each of 4 images' gradient norm: from the batched route's
    per-tensor sums of squares, and from autograd through the same network in float64 (block included), image by
    image. Also the model's part of G that :func:`image_statistics` reports for the same images."""
    from dpaudit.attacks.imprint import _batched_tensor_squares

    x, y = pictures(size, 4), torch.tensor([0, 3, 1, 2])
    model = small_model(seed, arch).train()
    block = ImprintBlock((3, size, size), mean=np.array(MEAN), std=np.array(STD), connection=connection)
    dtype = torch.float64
    mean64, std64 = (torch.tensor(v, dtype=dtype)[:, None, None] for v in (MEAN, STD))
    z = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    _, _, squares = _batched_tensor_squares(model, block, z, y, block.thresholds, first=True)
    names = {id(p): name for name, p in model.named_parameters()}
    route = {names[id(p)]: np.sqrt(sq.double().numpy()) for p, sq in squares}
    stats = image_statistics(model, block, x, y, mean=np.array(MEAN), std=np.array(STD), batched=True)
    net = deepcopy(ImprintedModel(block, model).train()).double()
    params = dict(net.model.named_parameters())
    reference = {name: np.zeros(len(x)) for name in params}
    for i in range(len(x)):
        loss = torch.nn.functional.cross_entropy(net(((x[i].to(dtype) - mean64) / std64)[None]), y[i : i + 1])
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            reference[name][i] = float(g.norm())
    return route, reference, np.sqrt(stats.grad_norm**2 - stats.block_norm**2)


def _tensor_faults(route: dict[str, np.ndarray], reference: dict[str, np.ndarray], rtol: float) -> list[str]:
    """Each parameter tensor the route left out, added, or got wrong: relative error of its per-image gradient
    norm against the float64 reference, on that tensor's own scale (a GroupNorm bias's norm is ~1e-3 of G)."""
    faults = [f"{name}: missing" for name in reference if name not in route]
    faults += [f"{name}: not a parameter" for name in route if name not in reference]
    for name in reference.keys() & route.keys():
        err = float(np.max(np.abs(route[name] - reference[name]) / reference[name]))
        if not err <= rtol:
            faults.append(f"{name}: relative error {err:.2e} > {rtol:g}")
    return sorted(faults)


# Per-tensor tolerances, measured (largest relative error of any tensor's per-image norm over the four
# parametrisations, model seeds 0-10, 4 images): 16 px 1.8e-6 (ResNet-9's, Conv2d, GroupNorm and Linear alike;
# the small CNN's below 1.7e-6): checked at 1e-5. 32 px (the folded convolution path, FOLDED_MIN_POSITIONS) 1.2e-5
# (the small CNN's first convolution, addition, seed 8) in 43 of the 44 cases: checked at 5e-5. Not covered: ResNet-9,
# linear connection, seed 3 at 32 px, where one image's tensors of the 32 x 32 stage lie up to 1e-3 from float64.
# Not a fault of the route: that image has a max-pooling window (features.3) whose two largest inputs differ by
# 7.8e-8 in float64, below float32's rounding there; the attack's Mish rounds them the other way round than torch's
# Mish and float64, so the pooling's gradient goes to the other position (a point where the loss is not
# differentiable, both choices being valid subgradients) and every gradient upstream differs by ~4e-3 for that
# image. The same route with torch's Mish lies within 6.3e-7 of float64 there.
_TENSOR_RTOL = {16: 1e-5, 32: 5e-5}
_CASE_SEED = {16: 5, 32: 1}  # the seeds of the whole-G tests above (16 px) and of the batch-1 comparison (32 px)


@pytest.mark.parametrize("arch", ["smallcnn", "resnet9"])
@pytest.mark.parametrize("connection", ["linear", "addition"])
@pytest.mark.parametrize("size", [16, 32])
def test_batched_per_sample_gradient_of_every_tensor_equals_float64(arch: str, connection: str, size: int) -> None:
    """The batched route's per-sample gradient norm of every parameter tensor, each on its own scale, against
    autograd through the same network in float64 (tolerances: _TENSOR_RTOL); and the model's part of G that
    image_statistics reports is their sum (float32 rounding of the squares' sum, 1e-6). G as a whole cannot see a
    dropped tensor that carries less of it than G's tolerance (8 of ResNet-9's GroupNorm tensors)."""
    route, reference, model_part = _tensor_gradient_norms(arch, connection, size, _CASE_SEED[size])
    assert _tensor_faults(route, reference, _TENSOR_RTOL[size]) == []
    summed = np.sqrt(sum(v**2 for v in route.values()))
    np.testing.assert_allclose(model_part, summed, rtol=1e-6, atol=0)


def _parameter_names(arch: str) -> list[str]:
    return [name for name, _ in build_model(arch, num_classes=4).named_parameters()]


@pytest.mark.parametrize(("arch", "name"), [(a, n) for a in ("smallcnn", "resnet9") for n in _parameter_names(a)])
def test_the_per_tensor_check_flags_any_one_tensor_dropped(arch: str, name: str) -> None:
    """Mutation check of the test above: zeroing one tensor's per-sample gradient, or leaving it out, fails it,
    GroupNorm weights and biases included (their share of G is below G's tolerance, not of their own norm)."""
    route, reference, _ = _tensor_gradient_norms(arch, "linear", 16, _CASE_SEED[16])
    assert _tensor_faults(route, reference, _TENSOR_RTOL[16]) == []
    zeroed = {**route, name: np.zeros_like(route[name])}
    assert [f.split(":")[0] for f in _tensor_faults(zeroed, reference, _TENSOR_RTOL[16])] == [name]
    dropped = {k: v for k, v in route.items() if k != name}
    assert _tensor_faults(dropped, reference, _TENSOR_RTOL[16]) == [f"{name}: missing"]


def test_the_model_comes_back_to_its_device_and_a_missing_gpu_is_named(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_attack(model, pictures(16, 2), torch.arange(2), mean=MEAN, std=STD, noise_multipliers=[0.0], device="cpu")
    assert all(v.device.type == "cpu" and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device must be a CUDA device visible to this process"):
        run_attack(model, pictures(16, 2), torch.arange(2), mean=MEAN, std=STD, noise_multipliers=[0.0],
                   device="cuda")
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        run_attack(model, pictures(16, 2), torch.arange(2), mean=MEAN, std=STD, noise_multipliers=[0.0],
                   device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_agree_with_the_cpu_within_float32_rounding() -> None:
    """A GPU's kernels are not bitwise the CPU's: the per-image statistics agree to float32 rounding, so the SSIM of
    every image agrees to well under the SSIM's own resolution of success (a tolerance sized to the quantity: the
    statistics' relative error, ~1e-5, carried through the decoders), and the successes agree except where an SSIM
    lies within that distance of the threshold."""
    cpu, gpu = _device_case("cpu"), _device_case("cuda")
    assert np.allclose(gpu.rho, cpu.rho, rtol=1e-4)
    for a, b in zip(cpu.rows, gpu.rows, strict=True):
        assert np.allclose(a.eta, b.eta, rtol=1e-4)
        assert np.max(np.abs(a.ssim - b.ssim)) < 1e-3, (a.noise_multiplier, a.decoder)
        near = np.abs(a.ssim - cpu.success_ssim) < 1e-3
        assert np.array_equal((a.ssim > cpu.success_ssim)[~near], (b.ssim > gpu.success_ssim)[~near])


@pytest.mark.parametrize("arch", ["smallcnn", "resnet9"])
@pytest.mark.parametrize("connection", ["linear", "addition"])
def test_batched_statistics_equal_batch_one_passes(arch: str, connection: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The batched route (one pass per chunk of images, each image's gradient norm from every layer's input and
    output gradient) gives the statistics of batch-1 passes up to float32 rounding, in any chunking: the same
    active rows and |[x, 1]| exactly, delta, G and rho within 5e-5 (the block's gradient is ill-conditioned in
    float32: both routes lie up to 1.1e-5 from a float64 model at these seeds), the model's part of G within 1e-5,
    and the same float64-model values to those tolerances."""
    import dpaudit.attacks.imprint as imprint

    x, y = pictures(32, 6), torch.arange(6) % 4
    model = small_model(1, arch)
    block = ImprintBlock((3, 32, 32), mean=np.array(MEAN), std=np.array(STD), connection=connection)
    kw = dict(mean=np.array(MEAN), std=np.array(STD))
    one = image_statistics(model, block, x, y, batched=False, **kw)
    exact = image_statistics(deepcopy(model).double(), deepcopy(block).double(), x.double(), y,
                             batched=False, **kw)
    whole = image_statistics(model, block, x, y, batched=True, **kw)
    monkeypatch.setattr(imprint, "BATCH_VALUES", 2 * 3 * 32 * 32)  # chunks of 2 images
    chunked = image_statistics(model, block, x, y, batched=True, **kw)
    for stats in (whole, chunked):
        np.testing.assert_array_equal(stats.active_rows, one.active_rows)
        np.testing.assert_array_equal(stats.x_norm1, one.x_norm1)
        for ref in (one, exact):
            for name in ("delta", "grad_norm", "block_norm", "rho"):
                np.testing.assert_allclose(getattr(stats, name), getattr(ref, name), rtol=5e-5, atol=0,
                                           err_msg=name)
            # The model's own part of the norm is well conditioned: float32 rounding (measured below 1e-6).
            np.testing.assert_allclose(np.sqrt(stats.grad_norm**2 - stats.block_norm**2),
                                       np.sqrt(ref.grad_norm**2 - ref.block_norm**2), rtol=1e-5, atol=0)


def test_batched_chunks_are_as_equal_as_they_can_be() -> None:
    """Images (and the TV denoiser's planes) go through in the fewest chunks of at most the bound, as equal as they
    can be (no short last chunk)."""
    from dpaudit.attacks.decoders import equal_chunk_size as _chunk_size

    for n in range(1, 60):
        for most in range(1, 20):
            size = _chunk_size(n, most)
            chunks = -(-n // size)
            assert size <= most and chunks == -(-n // most)
            assert n - (chunks - 1) * size >= size - chunks + 1  # the last chunk is short by less than one per chunk
    assert _chunk_size(12, 8) == 6 and _chunk_size(24, 8) == 8 and _chunk_size(7, 8) == 7


def test_batched_attack_results_equal_batch_one_passes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The whole attack with the batched route (the default for small images) against batch-1 passes: the same
    successes at every level, SSIM and the decoded images within float32 rounding of the statistics carried through
    the decoders (measured 2e-7 at 64 px; 1e-5 allowed)."""
    import dpaudit.attacks.imprint as imprint

    x, y = pictures(32, 6), torch.arange(6) % 4
    model = small_model(2, "resnet9")
    kw = dict(mean=MEAN, std=STD, noise_multipliers=[0.0, 1e-4, 1e-3, 3e-3, 1e-2], keep_images=6)
    batched = run_attack(model, x, y, **kw)
    monkeypatch.setattr(imprint, "BATCHED_MAX_PIXELS", 0)
    single = run_attack(model, x, y, **kw)
    np.testing.assert_allclose(batched.rho, single.rho, rtol=5e-5)
    for a, b in zip(batched.rows, single.rows, strict=True):
        assert a.success_rate == b.success_rate
        np.testing.assert_allclose(a.ssim, b.ssim, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(a.best_indices, b.best_indices)
        np.testing.assert_allclose(a.best_images, b.best_images, rtol=0, atol=1e-5)


def test_models_the_batched_route_cannot_serve_get_batch_one_passes() -> None:
    """A layer that runs twice (shared weights: its per-image gradient is the sum of two outer products), an
    in-place activation (its input is overwritten), dropout or any module of unknown kind (its forward may mix
    images): batch-1 passes, bit for bit; asking for the batched route there is an error."""
    from dpaudit.attacks.imprint import _samplewise

    torch.manual_seed(3)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    shared = torch.nn.Sequential(conv, torch.nn.GroupNorm(1, 3), torch.nn.ReLU(), conv, torch.nn.Flatten(),
                                 torch.nn.Linear(3 * 16 * 16, 4))
    x, y = pictures(16, 3), torch.tensor([0, 1, 2])
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD))
    kw = dict(mean=np.array(MEAN), std=np.array(STD))
    assert not _samplewise(shared)  # one module at two places in the tree: refused up front
    default = image_statistics(shared, block, x, y, **kw)
    single = image_statistics(shared, block, x, y, batched=False, **kw)
    for name in ("delta", "active_rows", "grad_norm", "block_norm", "x_norm1"):
        np.testing.assert_array_equal(getattr(default, name), getattr(single, name))
    for bad in (torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True), torch.nn.Flatten(),
                                    torch.nn.LazyLinear(4)),
                torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.1), torch.nn.Flatten(),
                                    torch.nn.LazyLinear(4)),
                torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                    torch.nn.LazyLinear(4)),
                torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), torch.nn.Flatten(),
                                    torch.nn.LazyLinear(4))):
        assert not _samplewise(bad)
    scaled = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    scaled.register_parameter("scale", torch.nn.Parameter(torch.ones(1)))  # a parameter outside the known layers
    assert not _samplewise(scaled)
    with pytest.raises(ConfigError, match="batched=True"):
        image_statistics(bad, block, x, y, batched=True, **kw)


def _served_model(case: str) -> torch.nn.Module:
    """Models the batched route serves: every parameter layer's per-image gradient follows from its own input and
    output gradient (16 px, 3 channels in)."""
    nn = torch.nn
    if case == "stride, dilation, groups, GroupNorm without affine":
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2), nn.GroupNorm(2, 8, affine=False),
                             nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4, padding=1, bias=False), nn.GroupNorm(4, 8),
                             nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    if case == "frozen conv weight, GroupNorm bias and Linear weight":
        m = _served_model("stride, dilation, groups, GroupNorm without affine")
        for p in (m[0].weight, m[4].bias, m[8].weight):
            p.requires_grad_(False)
        return m
    if case == "Linear on 3-D input":
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2), nn.Linear(16 * 16, 5), nn.ReLU(),
                             nn.Flatten(), nn.Linear(20, 4))
    if case == "ghost-norm convolution (4 x 4 map, 64 -> 128 channels)":
        return nn.Sequential(nn.Conv2d(3, 64, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))
    if case == "GroupNorm after Linear (2-D input)":
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.GroupNorm(2, 8), nn.ReLU(), nn.Linear(8, 4))
    assert case == "per-pixel logits, label maps"
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 2, 1))


@pytest.mark.parametrize("case", [
    "stride, dilation, groups, GroupNorm without affine", "frozen conv weight, GroupNorm bias and Linear weight",
    "Linear on 3-D input", "ghost-norm convolution (4 x 4 map, 64 -> 128 channels)",
    "GroupNorm after Linear (2-D input)", "per-pixel logits, label maps"])
@pytest.mark.parametrize("connection", ["linear", "addition"])
def test_the_default_route_serves_these_models_as_batch_one_passes(case: str, connection: str, rng, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each model is served by the batched route (a batch-1 pass would fail the test) and gets the statistics of
    batch-1 passes to float32 rounding (tolerances of test_batched_statistics_equal_batch_one_passes). Per-pixel
    logits (N x K x H x W) with label maps: each image's loss is its batch-1 loss, the mean over its own positions
    with torch's ignore_index (-100) left out, not the batch's sum (which weighs the gradient by H x W)."""
    import dpaudit.attacks.imprint as imprint

    torch.manual_seed(int(rng.integers(1 << 30)))
    model = _served_model(case)
    x = pictures(16, 5)
    if case == "per-pixel logits, label maps":
        y = torch.from_numpy(rng.integers(0, 2, (5, 16, 16)))
        y[torch.from_numpy(rng.random((5, 16, 16)) < 0.2)] = -100  # unlabelled pixels
    else:
        y = torch.from_numpy(rng.integers(0, 4, 5))
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD), connection=connection)
    kw = dict(mean=np.array(MEAN), std=np.array(STD))
    assert imprint._samplewise(model)
    one = image_statistics(model, block, x, y, batched=False, **kw)

    def no_batch_one_pass(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the default route fell back to batch-1 passes")

    monkeypatch.setattr(imprint, "_single_model_statistics", no_batch_one_pass)
    default = image_statistics(model, block, x, y, **kw)
    np.testing.assert_array_equal(default.active_rows, one.active_rows)
    np.testing.assert_array_equal(default.x_norm1, one.x_norm1)
    for name in ("delta", "grad_norm", "block_norm", "rho"):
        np.testing.assert_allclose(getattr(default, name), getattr(one, name), rtol=5e-5, atol=0, err_msg=name)
    np.testing.assert_allclose(np.sqrt(default.grad_norm**2 - default.block_norm**2),
                               np.sqrt(one.grad_norm**2 - one.block_norm**2), rtol=1e-5, atol=0)


def _refused_model(case: str) -> torch.nn.Module:
    """Models of known layer types whose per-image gradient the batched route's formulas would get wrong."""
    nn = torch.nn
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)]
    if case == "two Linear share one weight":
        l1, l2 = nn.Linear(8, 8), nn.Linear(8, 8)
        l2.weight = l1.weight
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), l1, nn.Tanh(), l2, nn.Tanh(),
                             nn.Linear(8, 4))
    if case == "two Conv2d share one weight":
        c1, c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        c2.weight = c1.weight
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), c1, nn.ReLU(), c2, *head)
    if case == "weight_norm(Conv2d), g != |v|":
        with warnings.catch_warnings():  # deprecated for the parametrization (a type of its own: refused as unknown)
            warnings.simplefilter("ignore", FutureWarning)
            conv = torch.nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
        with torch.no_grad():
            conv.weight_g.mul_(3.0)  # as after training
        return nn.Sequential(conv, *head)
    if case == "spectral_norm(Linear)":
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             torch.nn.utils.spectral_norm(nn.Linear(4, 4)))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), *head)
    if case == "forward pre-hook scaling a conv's input":
        model[0].register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    elif case == "forward hook replacing a conv's output":
        model[0].register_forward_hook(lambda mod, args, out: out * 3)
    else:
        assert case == "backward hook scaling a conv's input gradient"
        model[0].register_full_backward_hook(lambda mod, gin, gout: tuple(None if g is None else 2 * g for g in gin))
    return model


@pytest.mark.parametrize("case", [
    "two Linear share one weight", "two Conv2d share one weight", "weight_norm(Conv2d), g != |v|",
    "spectral_norm(Linear)", "forward pre-hook scaling a conv's input", "forward hook replacing a conv's output",
    "backward hook scaling a conv's input gradient"])
def test_models_the_batched_formulas_would_get_wrong_get_batch_one_passes(case: str, rng) -> None:  # type: ignore[no-untyped-def]
    """Tied weights (the per-image gradient is g1 + g2, not two tensors), an old-style weight_norm or spectral_norm
    (the class stays Conv2d/Linear, its parameters are weight_g/weight_v or weight_orig) and a user's hook (it
    changes an input, output or gradient the formulas do not see): refused up front, so the default route is batch-1
    passes, bit for bit (on two copies: spectral_norm's power iteration updates its state in every training-mode
    forward)."""
    from dpaudit.attacks.imprint import _samplewise

    seed = int(rng.integers(1 << 30))
    torch.manual_seed(seed)
    model = _refused_model(case)
    torch.manual_seed(seed)
    twin = _refused_model(case)  # a copy (deepcopy refuses weight_norm's computed weight)
    x, y = pictures(16, 3), torch.from_numpy(rng.integers(0, 4, 3))
    block = ImprintBlock((3, 16, 16), mean=np.array(MEAN), std=np.array(STD))
    kw = dict(mean=np.array(MEAN), std=np.array(STD))
    assert not _samplewise(model)
    default = image_statistics(model, block, x, y, **kw)
    single = image_statistics(twin, block, x, y, batched=False, **kw)
    for name in ("delta", "active_rows", "grad_norm", "block_norm", "x_norm1"):
        np.testing.assert_array_equal(getattr(default, name), getattr(single, name))


def test_a_global_module_hook_or_a_flatten_over_the_batch_axis_is_refused() -> None:
    """torch's global module hooks run on every module (as a per-module hook does); Flatten(start_dim=0), or a
    negative start_dim that reaches the batch axis at some rank, mixes the images."""
    from dpaudit.attacks.imprint import _samplewise

    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    assert _samplewise(model)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
    try:
        assert not _samplewise(model)
    finally:
        handle.remove()
    assert _samplewise(model)
    for start_dim in (0, -1):
        assert not _samplewise(nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(start_dim)))


@pytest.mark.parametrize("arch", ["smallcnn", "resnet9"])
def test_batched_pre_activations_are_the_batch_one_ones_bit_for_bit(arch: str) -> None:
    """Each image's query (the mean of its normalised values) is reduced as a batch-1 pass reduces it, so the
    pre-activations, and with them the active row m, are the same bits on both routes."""
    from dpaudit.attacks.imprint import _batched_model_statistics, _normalise, _single_model_statistics

    model = small_model(4, arch).train()
    x = _normalise(pictures(64, 8), torch.tensor(MEAN), torch.tensor(STD))
    y = torch.arange(8) % 4
    block = ImprintBlock((3, 64, 64), mean=np.array(MEAN), std=np.array(STD))
    params = [p for p in model.parameters() if p.requires_grad]
    out = _batched_model_statistics(model, block, x, y, block.thresholds, first=True)
    assert out is not None
    for j in range(len(x)):
        h0 = _single_model_statistics(model, block, x[j : j + 1], y[j : j + 1], block.thresholds, params,
                                      first=True)[0]
        assert torch.equal(out[0][j], h0)


@pytest.mark.parametrize("c_in, c_out, size, stride, dilation, groups, branch", [
    (64, 64, 6, 1, 1, 1, "ghost"), (32, 96, 5, 2, 1, 1, "ghost"), (48, 48, 9, 1, 2, 1, "per image"),
    (3, 8, 16, 1, 1, 1, "per image"), (3, 16, 64, 1, 1, 1, "folded"), (4, 6, 66, 2, 1, 1, "folded"),
    (6, 4, 34, 1, 2, 2, "folded"), (8, 8, (32, 40), 1, 1, 4, "folded")])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_per_image_convolution_gradient_norms_equal_autograd(c_in, c_out, size, stride, dilation, groups, branch,
                                                             layout, rng) -> None:  # type: ignore[no-untyped-def]
    """Each image's squared weight-gradient norm of a convolution from its input and output gradient (the ghost
    norm on small maps, one grouped weight gradient of the images folded into the channels on large maps, torch's
    batch-1 weight gradient elsewhere; every branch here, with strides, dilations, groups and a map that is not
    square, in either memory layout) equals autograd's per-image gradient, squared and summed in float64, to
    float32 rounding."""
    from dpaudit.attacks.imprint import FOLDED_MIN_POSITIONS, _conv_weight_squares

    torch.manual_seed(int(rng.integers(1 << 30)))
    conv = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, dilation=dilation, groups=groups)
    h, w = (size, size) if isinstance(size, int) else size
    a = torch.randn(4, c_in, h, w).contiguous(memory_format=layout)
    g = torch.randn_like(conv(a)).contiguous(memory_format=layout)
    positions, k = g.shape[2] * g.shape[3], c_in // groups * 9
    with torch.no_grad():
        ours = _conv_weight_squares(conv, a, g).double().numpy()
    ref = [float((torch.autograd.grad((conv(a[i : i + 1]) * g[i : i + 1]).sum(), conv.weight)[0].double() ** 2).sum())
           for i in range(4)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    taken = ("ghost" if groups == 1 and positions * (k + c_out) < k * c_out
             else "folded" if positions >= FOLDED_MIN_POSITIONS else "per image")
    assert taken == branch


def test_folded_convolution_weight_gradients_are_each_images_own(rng) -> None:  # type: ignore[no-untyped-def]
    """The grouped weight gradient of the images folded into the channels holds, block by block, each image's
    batch-1 weight gradient (torch's own, one call per image) to float32 rounding, for one image too."""
    from dpaudit.attacks.imprint import _folded_conv_weight_grads

    torch.manual_seed(int(rng.integers(1 << 30)))
    conv = torch.nn.Conv2d(6, 4, (3, 5), stride=(1, 2), padding=(1, 2), groups=2)
    for n in (1, 3):
        a = torch.randn(n, 6, 20, 24).contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(conv(a))
        folded = _folded_conv_weight_grads(conv, a, g).reshape(n, *conv.weight.shape)
        for i in range(n):
            own = torch.ops.aten.convolution_backward(
                g[i : i + 1], a[i : i + 1], conv.weight, None, conv.stride, conv.padding, conv.dilation, False,
                [0, 0], conv.groups, [False, True, False])[1]
            torch.testing.assert_close(folded[i], own, rtol=1e-5, atol=1e-5)


def test_folded_gradients_with_kept_buffers_equal_fresh_copies_bit_for_bit(rng) -> None:  # type: ignore[no-untyped-def]
    """The folded weight gradients from the buffers and repeated weights kept between calls (one image_statistics
    call's chunks and layers) are bit for bit those from fresh copies: for two layers of one shape in turn (the
    buffers reused), a shorter last chunk, and a weight changed in place (its repeated copy made again)."""
    from dpaudit.attacks.imprint import _folded_conv_weight_grads, _FoldScratch, _repeated_weight

    torch.manual_seed(int(rng.integers(1 << 30)))
    convs = [torch.nn.Conv2d(6, 8, 3, padding=1, groups=2) for _ in range(2)]
    scratch = _FoldScratch()
    for n in (4, 4, 3):
        for conv in convs:
            a = torch.randn(n, 6, 32, 36).contiguous(memory_format=torch.channels_last)
            g = torch.randn_like(conv(a))
            kept = _folded_conv_weight_grads(conv, a, g, scratch)
            assert torch.equal(kept, _folded_conv_weight_grads(conv, a, g))
    with torch.no_grad():
        convs[0].weight.mul_(-2.0)
    assert torch.equal(scratch.weight(convs[0], 4), _repeated_weight(convs[0].weight.detach(), 4))


def test_mish_with_its_slope_equals_float64_mish_to_rounding() -> None:
    """The batched route's Mish (one exponential, the derivative kept from the forward) against float64 Mish and
    autograd's derivative on [-20, 20] and beyond: within 3 eps relative (torch's own float32 mish: 2.1 eps
    measured; ours 2.3) and the derivative within 2 eps absolute (torch's mish_backward: 8.2 eps); exact at the
    extremes (x past 20; far left both underflow below float32's normal range) and no NaN for finite inputs."""
    from dpaudit.attacks.imprint import _mish_and_slope

    eps = float(torch.finfo(torch.float32).eps)
    x = torch.cat([torch.linspace(-20, 20, 400_001), torch.tensor([-1e4, -150.0, -90.0, 25.0, 60.0, 1e4, 3e38])])
    y, slope = _mish_and_slope(x)
    xd = x.double().requires_grad_(True)
    ref = torch.nn.functional.mish(xd)
    (ref_slope,) = torch.autograd.grad(ref.sum(), xd)
    assert not (y.isnan().any() or slope.isnan().any())
    inner = x.abs() <= 20
    rel = (y.double() - ref.detach()).abs() / ref.detach().abs().clamp(min=1e-300)
    assert float(rel[inner].max()) < 3 * eps
    assert float((slope.double() - ref_slope).abs()[inner].max()) < 2 * eps
    far = ~inner  # x past 20: x and 1 exactly; far left: below float32's normal range, as torch's own
    torch.testing.assert_close(y[far].double(), ref.detach()[far], rtol=eps, atol=1e-37)
    torch.testing.assert_close(slope[far].double(), ref_slope[far], rtol=eps, atol=1e-37)


def test_mish_in_chunks_with_kept_temporaries_equals_whole_tensor_mish_bit_for_bit(monkeypatch) -> None:
    """_MishScratch's chunked Mish (temporaries kept across calls) against the whole-tensor formulas: the same bits
    for y and the slope (signed zeros, inf and NaN included) in contiguous and channels-last layouts, with a short
    last chunk, a scratch reused for a larger and a smaller tensor, and the outputs laid out as the input; a
    strided (non-dense) input takes the whole-tensor route."""
    from dpaudit.attacks import imprint

    monkeypatch.setattr(imprint, "MISH_CHUNK", 1000)
    scratch = imprint._MishScratch()

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and a.stride() == b.stride() and torch.equal(a.view(torch.int32), b.view(torch.int32))

    gen = torch.Generator().manual_seed(0)
    edges = torch.tensor([-0.0, 0.0, 20.0, 20.000002, -1e4, -150.0, -90.0, 60.0, 1e4, 3e38, -3e38, float("inf"),
                          -float("inf"), float("nan")])
    line = torch.cat([torch.linspace(-30, 30, 4321), edges])
    inputs = [line, (torch.randn(2, 5, 13, 17, generator=gen) * 6).contiguous(memory_format=torch.channels_last),
              torch.randn(3, 7, 11, 9, generator=gen) * 6, torch.randn(1, 3, 4, 4, generator=gen)]
    for x in inputs:
        plain = imprint._mish_and_slope(x)
        chunked = imprint._mish_and_slope(x, scratch)
        assert all(same(a, b) for a, b in zip(plain, chunked, strict=True))
    mish = torch.nn.Mish()
    with imprint._MishWithSlope(scratch) as mode:  # the mode hands its scratch to _MishFunction while entered
        assert imprint._MishWithSlope.scratches() == [scratch] and mode.scratch is scratch
        kept = mish(inputs[1])
    assert imprint._MishWithSlope.scratches() == []
    assert same(kept, imprint._mish_and_slope(inputs[1])[0])
    strided = (torch.randn(4, 6, 10, 10, generator=gen) * 6)[:, :, ::2]
    assert not imprint._dense(strided)
    assert all(same(a, b) for a, b in zip(imprint._mish_and_slope(strided), imprint._mish_and_slope(strided, scratch),
                                          strict=True))


def test_each_thread_has_its_own_mish_scratch() -> None:
    """Two threads inside the mode at once: each one's Mish uses its own scratch (a shared one would let one
    thread's chunk overwrite the other's temporaries), and both give the values of the plain function bit for bit."""
    import threading

    import dpaudit.attacks.imprint as imprint

    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 8, 64, 64, generator=gen) * 6 for _ in range(2)]
    expected = [imprint._mish_and_slope(x)[0] for x in inputs]
    barrier = threading.Barrier(2)
    seen: dict[int, list] = {}
    results: dict[int, list[bool]] = {0: [], 1: []}

    def work(k: int) -> None:
        scratch = imprint._MishScratch()
        with imprint._MishWithSlope(scratch):
            barrier.wait()  # both threads have entered before either runs
            seen[k] = list(imprint._MishWithSlope.scratches())
            for _ in range(20):
                results[k].append(torch.equal(torch.nn.functional.mish(inputs[k]), expected[k]))
        seen[k].append(scratch)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(seen[k]) == 2 and seen[k][0] is seen[k][1] for k in range(2))  # its own, alone on its stack
    assert all(results[0]) and all(results[1]) and len(results[0]) == len(results[1]) == 20
    assert imprint._MishWithSlope.scratches() == []


@pytest.mark.parametrize("settings", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                      dict(kernel_size=2, stride=1, dilation=2),
                                      dict(kernel_size=3, stride=2, ceil_mode=True),
                                      dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), ceil_mode=True)])
@pytest.mark.parametrize("chunk", [2**19, 600])
def test_max_pool_on_a_channels_last_copy_equals_torchs_nchw_pool_bit_for_bit(settings, chunk, monkeypatch) -> None:
    """Inside _MaxPoolChannelsLast a MaxPool2d on NCHW float32 input runs _MaxPoolFunction (channels-last kernel,
    kept buffers): the same bits as torch's NCHW max_pool2d for the output and the input's gradient, on windows
    with ties, signed zeros, infinities and NaN (a window's first largest value, or its NaN), odd sizes and every
    setting of the layer, all channels in one chunk or in a few (2 + 2 + 1 of 5 channels); the buffers serve
    a second, smaller call. Other inputs (channels-last, float64, with indices) keep torch's own pooling."""
    from dpaudit.attacks import imprint

    monkeypatch.setattr(imprint, "POOL_CHUNK", chunk)
    gen = torch.Generator().manual_seed(0)
    scratch = imprint._PoolScratch()
    for shape in [(2, 5, 13, 11), (1, 3, 7, 9)]:
        x = torch.randint(-3, 4, shape, generator=gen).float()  # many ties
        x[x == 1] = -0.0
        x[x == 2] = 0.0
        x.view(-1)[::37] = float("nan")
        x.view(-1)[5::41] = float("inf")
        x.view(-1)[7::43] = -float("inf")
        layer = torch.nn.MaxPool2d(**settings)

        def run(mode, x=x, layer=layer):
            leaf = x.clone().requires_grad_(True)
            with mode:
                y = layer(leaf)
            weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
            (g,) = torch.autograd.grad((y.nan_to_num(0.0) * weights).sum(), leaf)
            return y, g

        calls = []
        real = imprint._MaxPoolFunction.apply
        try:
            imprint._MaxPoolFunction.apply = lambda *a, calls=calls, real=real: calls.append(a[0].shape) or real(*a)
            ours = run(imprint._MaxPoolChannelsLast(scratch))
        finally:
            imprint._MaxPoolFunction.apply = real
        assert calls == [shape]
        plain = run(contextlib.nullcontext())
        for a, b in zip(ours, plain, strict=True):
            assert a.shape == b.shape and a.is_contiguous()
            assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    for other in (torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last),
                  torch.randn(1, 3, 8, 8, dtype=torch.float64)):
        with imprint._MaxPoolChannelsLast():
            kept = torch.nn.functional.max_pool2d(other, 2)
        assert torch.equal(kept, torch.nn.functional.max_pool2d(other, 2))
    with imprint._MaxPoolChannelsLast():
        values, indices = torch.nn.functional.max_pool2d(torch.ones(1, 1, 4, 4), 2, return_indices=True)
    assert indices.dtype == torch.int64 and values.shape == (1, 1, 2, 2)


def test_mish_with_its_slope_replaces_only_float32_cpu_mish_out_of_place() -> None:
    """Inside _MishWithSlope a model's nn.Mish layers run as _MishFunction: the same output and parameter
    gradients as torch's mish to float32 rounding; float64 tensors and in-place Mish keep torch's own (bit for bit),
    and every other function runs unchanged."""
    from dpaudit.attacks.imprint import _MishFunction, _MishWithSlope

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.Mish(),
                                torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.Mish(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 64, 3))
    x = torch.randn(5, 3, 8, 8)

    def grads(net, inp, fast):
        with _MishWithSlope() if fast else contextlib.nullcontext():
            out = net(inp)
        params = list(net.parameters())
        return out, torch.autograd.grad(out.square().sum(), params)

    calls = []
    real = _MishFunction.apply
    try:
        _MishFunction.apply = lambda t: calls.append(t.dtype) or real(t)
        out_fast, g_fast = grads(model, x, True)
        assert calls == [torch.float32, torch.float32]
        out_plain, g_plain = grads(model, x, False)
        torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-6)
        for a, b in zip(g_fast, g_plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        calls.clear()
        wide = deepcopy(model).double()
        for fast_d, plain_d in zip(grads(wide, x.double(), True)[1], grads(wide, x.double(), False)[1], strict=True):
            assert torch.equal(fast_d, plain_d)
        with _MishWithSlope():
            z = torch.randn(7)
            kept = z.clone()
            torch.nn.functional.mish(z, inplace=True)
        assert torch.equal(z, torch.nn.functional.mish(kept)) and calls == []
    finally:
        _MishFunction.apply = real


def test_mish_with_its_slope_refuses_a_second_derivative() -> None:
    """_MishFunction keeps its slope without a graph: a double backward through it would drop Mish's second
    derivative silently; it raises instead (the attack takes first derivatives only)."""
    from dpaudit.attacks.imprint import _MishWithSlope

    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    with _MishWithSlope():
        y = torch.nn.functional.mish(x) + x**3
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(y.sum(), x)  # a first derivative as before
    xd = x.detach().double().requires_grad_(True)
    (ref,) = torch.autograd.grad((torch.nn.functional.mish(xd) + xd**3).sum(), xd)
    torch.testing.assert_close(g.double(), ref, rtol=1e-6, atol=1e-6)

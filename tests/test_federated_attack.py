"""The federated bin attack: exact recovery of lone samples at sigma 0, secure aggregation = the summed update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dpaudit.attacks.decoders import Layout
from dpaudit.attacks.federated import (
    BinImprintBlock,
    FederatedAttackConfig,
    attack_views,
    bin_thresholds,
    client_update,
    decode_bins,
    run_federated_attack,
    server_views,
)
from dpaudit.codec import encode


@pytest.fixture(scope="module")
def setup():
    from dpaudit.data import load_splits
    from dpaudit.models import build_model

    splits = load_splits("demo", image_size=16, max_images=60, seed=0)
    mean, std = np.asarray(splits.mean), np.asarray(splits.std)
    m = torch.tensor(splits.mean)[None, :, None, None]
    s = torch.tensor(splits.std)[None, :, None, None]
    x_all = (splits.train.images - m) / s
    x_aux = (splits.val.images - m) / s  # the server's assumed distribution: not the attacked images
    thresholds = bin_thresholds(x_aux.flatten(1).mean(1).numpy(), 12, float(np.min(-mean / std)) - 1.0)
    torch.manual_seed(0)
    model = nn.Sequential(BinImprintBlock(splits.image_shape, thresholds, seed=0),
                          build_model("smallcnn", num_classes=2, in_channels=3))
    return splits, model, thresholds, x_all, Layout(splits.image_shape, mean, std)


def test_block_is_opacus_compatible(setup) -> None:
    from dpaudit.audit.train import check_dp_compatible

    check_dp_compatible(setup[1])  # raises when a layer cannot be trained by Opacus


def test_sigma_zero_recovers_every_sample_alone_in_its_bin_exactly(setup) -> None:
    splits, model, thresholds, x_all, layout = setup
    x, y = x_all[:6], splits.train.labels[:6]
    update = client_update(model, x, y, noise_multiplier=0.0, max_grad_norm=1.0, lr=1.0,
                           generator=torch.Generator().manual_seed(0))
    dec = attack_views([update], 1, block_prefix="0.", batch_size=6, lr=1.0, noise_multiplier=0.0,
                       max_grad_norm=1.0, layout=layout)[0]
    with torch.no_grad():  # a sample's bin is its highest active row (rows 0..m fire)
        active = (model[0].linear(x.flatten(1)) > 0).numpy()
    bin_of = np.array([np.nonzero(a)[0].max() for a in active])
    counts = np.bincount(bin_of, minlength=len(thresholds))
    assert (counts == 1).sum() >= 2  # the test needs lone samples (this seed gives several)
    assert np.array_equal(dec.occupied, counts > 0)  # occupied bins are found, empty ones are not
    for j in np.nonzero(counts[bin_of] == 1)[0]:
        # float32 model updates: x = dW/db to 1e-4 of the normalised pixel values (about 0.3 of an 8-bit level)
        np.testing.assert_allclose(dec.ratio[bin_of[j]], x[j].flatten().numpy(), atol=1e-4)


def test_secure_aggregation_of_two_clients_equals_the_attack_on_the_summed_update(setup) -> None:
    splits, model, _, x_all, layout = setup
    updates = [client_update(model, x_all[2 * c : 2 * c + 2], splits.train.labels[2 * c : 2 * c + 2],
                             noise_multiplier=0.01, max_grad_norm=1.0, lr=1.0,
                             generator=torch.Generator().manual_seed(c)) for c in range(2)]
    views = server_views(updates, secure_aggregation=True)
    assert len(views) == 1
    summed = {k: updates[0][k] + updates[1][k] for k in updates[0]}
    kw = dict(block_prefix="0.", batch_size=2, lr=1.0, noise_multiplier=0.01, max_grad_norm=1.0, layout=layout)
    a = attack_views(views, 2, **kw)[0]
    b = attack_views([summed], 2, **kw)[0]
    assert np.array_equal(a.occupied, b.occupied) and np.array_equal(a.images, b.images)
    assert np.array_equal(a.ratio, b.ratio)


def test_bin_test_declares_pure_noise_empty(rng) -> None:
    layout = Layout((1, 8, 8), np.array([0.5]), np.array([0.25]))
    k, d = 16, 64
    noise = rng.standard_normal((k, d + 1)) * 0.1
    dec = decode_bins(noise[:, :-1], noise[:, -1], 0.1, layout)
    assert dec.occupied.sum() == 0 and dec.images.shape == (0, 8, 8, 1)


def test_run_federated_attack_table(setup) -> None:
    splits = setup[0]
    result = run_federated_attack(FederatedAttackConfig(image_size=16, arch="smallcnn", clients=2, batch_size=2,
                                                        bins=16, noise_multipliers=(0.0, 10.0), rounds=2,
                                                        threads=1), splits=splits)
    zero, loud = result.rows
    assert zero.n_images == loud.n_images == 8
    assert zero.ci_low <= zero.success_rate <= zero.ci_high
    assert zero.success_rate >= zero.alone_share - 1e-12  # every lone sample is recovered without noise
    assert loud.success_rate == 0.0
    assert zero.expected_alone_share == pytest.approx((1 - 1 / 16) ** 1)
    keys = {"noise_multiplier", "clients", "batch_size", "bins", "secure_aggregation", "n_images", "success_rate",
            "ci_low", "ci_high", "mean_ssim"}
    assert keys <= set(encode(result)["rows"][0]) and encode(result)["success_ssim"] == result.success_ssim

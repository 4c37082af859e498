"""Benchmark of ``dpaudit attack`` (issue 3, Performance): dpaudit's pipeline against the naive flow.

* floor: one forward and backward pass per image through the model (the network must see each image once);
* dpaudit: ``run_attack`` over a 9-value noise grid, strong and paper decoders, nearest-match SSIM scoring;
* naive (breaching's flow): for every noise level and image, the full per-sample gradient of the imprinted model,
  Opacus clipping, noise on every parameter, the same decoders, scikit-image SSIM per image (paired).

Usage: ``python bench/bench_attack.py [--sizes 64,224] [--n-images 16] [--width 16] [--skip-naive]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from harness import Comparison

GRID = [0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def pictures(size: int, n: int) -> torch.Tensor:
    import skimage.data
    from skimage.transform import resize

    names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel")
    out = []
    for name in names:
        im = getattr(skimage.data, name)()[..., :3]
        h, w = im.shape[:2]
        for y0, x0, frac in ((0, 0, 1.0), (h // 4, w // 4, 0.5), (0, 0, 0.5), (h // 2, w // 2, 0.5)):
            crop = im[y0 : y0 + int(h * frac), x0 : x0 + int(w * frac)]
            out.append(resize(crop, (size, size), anti_aliasing=True))
    arr = np.stack([out[i % len(out)] for i in range(n)]).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def floor(model, images, labels) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    z = (images - 0.5) / 0.25
    for i in range(len(images)):
        loss = torch.nn.functional.cross_entropy(model(z[i : i + 1]), labels[i : i + 1])
        torch.autograd.grad(loss, params)
    return 0.0


def naive(model, images, labels, sigmas, clip=1.0, seed=0):
    """Breaching-style flow: per noise level and image, full gradient, clip, noise everywhere, decode, SSIM."""
    from dpaudit.attacks.decoders import Layout, decode_paper, decode_strong
    from dpaudit.attacks.imprint import OPACUS_CLIP_EPS, ImprintBlock, ImprintedModel
    from skimage.metrics import structural_similarity

    n, c, h, w = images.shape
    block = ImprintBlock((c, h, w), mean=np.array(MEAN), std=np.array(STD))
    net = ImprintedModel(block, model)
    params = [p for p in net.parameters() if p.requires_grad]
    layout = Layout((c, h, w), np.array(MEAN), np.array(STD))
    z = (images - 0.5) / 0.25
    gen = torch.Generator().manual_seed(seed)
    success = {}
    for sigma in sigmas:
        ok = {"strong": 0, "paper": 0}
        for i in range(n):
            loss = torch.nn.functional.cross_entropy(net(z[i : i + 1]), labels[i : i + 1])
            grads = torch.autograd.grad(loss, params)
            norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
            f = min(1.0, clip / (norm + OPACUS_CLIP_EPS))
            noisy = [g * f + sigma * clip * torch.randn(g.shape, generator=gen) for g in grads]
            rows = torch.cat([noisy[0], noisy[1][:, None]], dim=1).numpy()
            gt = images[i].permute(1, 2, 0).numpy()
            for name, rec in (("strong", decode_strong(rows, layout, sigma * clip)), ("paper", decode_paper(rows, layout))):
                ok[name] += structural_similarity(rec, gt, data_range=1.0, channel_axis=-1) > 0.8
        success[sigma] = ok
    return success


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--width", type=int, default=16, help="ResNet-9 width (the paper's network: 64)")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    from dpaudit.attacks.reconstruction import run_attack
    from dpaudit.models import build_model

    print(f"torch threads: {torch.get_num_threads()}; ResNet-9 width {args.width}; grid {GRID}")
    for size in (int(s) for s in args.sizes.split(",")):
        n = args.n_images if size <= 64 else max(2, args.n_images // 4)
        torch.manual_seed(0)
        model = build_model("resnet9", num_classes=7, width=args.width)
        images = pictures(size, n)
        labels = torch.arange(n) % 7

        def ours(grid=GRID, model=model, images=images, labels=labels):
            return run_attack(model, images, labels, mean=MEAN, std=STD, noise_multipliers=grid,
                              decoders=("strong", "paper"))

        def reference(model=model, images=images, labels=labels):
            return naive(model, images, labels, GRID)

        t0 = time.perf_counter()
        floor(model, images, labels)
        floor_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours([1e-3])
        one_s = time.perf_counter() - t0
        cmp = Comparison.run(f"{size}x{size}x3, {n} images, 9 sigmas", ours=ours,
                             reference=None if args.skip_naive else reference,
                             repeats=1)
        t9 = cmp.ours_median
        per_level = (t9 - one_s) / (len(GRID) - 1) / n
        print(f"\n== {size}x{size}x3, {n} images, 9 noise levels, decoders strong+paper ==")
        print(f"floor (1 fwd+bwd per image):   {floor_s / n * 1e3:8.1f} ms/image  {n / floor_s:7.2f} images/s")
        print(f"dpaudit, 9 levels (scored):    {t9 / n * 1e3:8.1f} ms/image  {n / t9:7.2f} images/s  "
              f"ratio to floor {t9 / floor_s:5.2f}x")
        print(f"dpaudit, 1 level:              {one_s / n * 1e3:8.1f} ms/image; each extra level "
              f"{per_level * 1e3:.1f} ms/image = {100 * per_level / (floor_s / n):.0f}% of one fwd+bwd")
        if cmp.reference_s:
            tr = cmp.reference_median
            print(f"naive (breaching flow):        {tr / n * 1e3:8.1f} ms/image  {n / tr:7.2f} images/s  "
                  f"ratio to floor {tr / floor_s:5.2f}x; dpaudit speed-up {tr / t9:.1f}x")
            print("naive success (strong, paper) per sigma:",
                  {s: (int(v["strong"]), int(v["paper"])) for s, v in cmp.reference_value.items()})
        print("dpaudit success (strong, paper) per sigma:",
              {r.noise_multiplier: round(r.success_rate, 2) for r in cmp.ours_value.rows if r.decoder == "strong"},
              {r.noise_multiplier: round(r.success_rate, 2) for r in cmp.ours_value.rows if r.decoder == "paper"})


if __name__ == "__main__":
    main()

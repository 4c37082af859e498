"""Benchmark of ``dpaudit attack``: dpaudit's pipeline against the naive flow.

* floor: one forward and backward pass per image through the model (the network must see each image once);
* dpaudit: ``run_attack`` over a 9-value noise grid, strong and paper decoders, nearest-match SSIM scoring;
* naive (breaching's flow): for every noise level and image, the full per-sample gradient of the imprinted model,
  Opacus clipping, noise on every parameter, the same decoders, scikit-image SSIM per image (paired).

Usage: ``python bench/bench_attack.py [--sizes 64,224] [--n-images 12] [--width 16] [--repeats 3] [--threads 1]
[--skip-naive] [--cpu-time] [--breakdown] [--alternatives]``; ``--calibrate-tv`` prints the TV denoiser sweep
(dpaudit's solver against scikit-image's). ``--breakdown`` adds where the 9-level attack's CPU time goes beyond the
floor, per stage, and the model part by each route (the batched one also with its convolutions' weight gradients
image by image, with the earlier chunk bound and with torch's Mish, the batch-1 passes with torch's Mish and with torch's NCHW max_pool2d; two rejected channels-last forms of the batch-1 passes), with page
faults per image and each route's largest error of the gradient norm against a float64 model. ``--alternatives``
times, per image and side by side, the ways of computing the two largest stages that were considered: TV and SSIM for one level's images against all 9 levels' in one call, SSIM's 7 x 7 window
sums by running sums (dpaudit) against scipy.ndimage.uniform_filter (what skimage calls), torch's grouped
convolution and sums of shifted rows along the columns (doubling), the TV denoiser with 2 torch threads, SSIM in
float32 (its error against float64), the projection's square root and quotient against the reciprocal square root
and product or pow(-0.5), the whole projection against one vector_norm over the two dual components, and
de-normalising in float32.
"""

from __future__ import annotations

import argparse
import contextlib
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
    from skimage.metrics import structural_similarity

    from dpaudit.attacks.decoders import Layout, decode_paper, decode_strong
    from dpaudit.attacks.imprint import OPACUS_CLIP_EPS, ImprintBlock, ImprintedModel

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


def calibrate_tv(size: int = 64, n: int = 24) -> None:
    """SSIM of scikit-image's ``denoise_tv_chambolle`` and of dpaudit's batched Chambolle-Pock per noise level."""
    from skimage.restoration import denoise_tv_chambolle

    from dpaudit.attacks.decoders import TV_WEIGHT_PER_NOISE_STD, denoise_tv
    from dpaudit.attacks.scoring import ssim_batch

    gt = pictures(size, n).permute(0, 2, 3, 1).numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    settings = [(8, 1.0), (10, 1.0), (12, 1.0), (15, 0.5), (20, 0.25), (30, 0.5)]
    print(f"TV calibration, {n} pictures {size}x{size}x3: mean SSIM (count > 0.8) [worst per-image change] ms/image")
    for std in (0.003, 0.01, 0.03, 0.06, 0.1, 0.2):
        noisy = np.clip(gt + std * rng.standard_normal(gt.shape), -0.5, 1.5)
        w = TV_WEIGHT_PER_NOISE_STD * std
        t0 = time.perf_counter()
        ref = np.stack([denoise_tv_chambolle(x, weight=w, channel_axis=-1) for x in noisy])
        t_ref = (time.perf_counter() - t0) / n
        s_ref = ssim_batch(np.clip(ref, 0, 1), gt)
        line = f"std {std:<6} skimage {s_ref.mean():.4f} ({(s_ref > 0.8).sum():2d}) {t_ref * 1e3:5.2f}ms |"
        for it, tau in settings:
            t0 = time.perf_counter()
            out = denoise_tv(noisy.astype(np.float32), np.full(n, w), iterations=it, tau0=tau)
            t = (time.perf_counter() - t0) / n
            s = ssim_batch(np.clip(out, 0, 1), gt)
            line += (f" {it}/{tau}: {s.mean():.4f} ({(s > 0.8).sum():2d}) [{np.min(s - s_ref):+.3f}]"
                     f" {t * 1e3:4.2f}ms |")
        print(line)


#: (module, function, label) of the attack's stages timed by --breakdown (cumulative CPU time per call).
STAGES = (
    ("reconstruction", "image_statistics", "forward+backward per image (image_statistics)"),
    ("reconstruction", "draw_pooled_noise", "noise draws (once)"),
    ("reconstruction", "pooled_views", "exact views per level (pooled_views)"),
    ("reconstruction", "decode_pooled", "strong decoder, TV included (decode_pooled)"),
    ("decoders", "denoise_tv", "  of which TV denoiser (denoise_tv)"),
    ("reconstruction", "paper_view", "paper decoder's choice per level (paper_view)"),
    ("reconstruction", "_NoiseRowCache.__call__", "paper decoder (rows not decoded before)"),
    ("reconstruction", "SsimReference", "SSIM reference statistics (once)"),
    ("reconstruction", "NearestMatcher", "nearest-match set-up (once)"),
    ("reconstruction", "_score", "scoring: nearest match + SSIM (_score)"),
)


def breakdown(model, images, labels, floor_s: float, repeats: int) -> None:
    """Cumulative CPU time of each stage of ``run_attack`` (9 levels), as a share of the floor."""
    import importlib

    from dpaudit.attacks.reconstruction import run_attack

    spent: dict[str, float] = {}
    undo = []
    for mod_name, attr, label in STAGES:
        mod = importlib.import_module(f"dpaudit.attacks.{mod_name}")
        owner, name = (getattr(mod, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (mod, attr)
        fn = getattr(owner, name)

        def timed(*a, _fn=fn, _label=label, **k):
            t0 = time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.process_time() - t0

        setattr(owner, name, timed)
        undo.append((owner, name, fn))
    try:
        t0 = time.process_time()
        for _ in range(repeats):
            run_attack(model, images, labels, mean=MEAN, std=STD, noise_multipliers=GRID, decoders=("strong", "paper"))
        total = (time.process_time() - t0) / repeats
    finally:
        for owner, name, fn in undo:
            setattr(owner, name, fn)
    print(f"where the time goes (CPU, mean of {repeats} runs; % of the floor's {floor_s * 1e3:.0f} ms):")
    for _, _, label in STAGES:
        v = spent.get(label, 0.0) / repeats
        print(f"  {label:<48} {v * 1e3:8.1f} ms {100 * v / floor_s:6.1f}%")
    print(f"  {'the whole attack':<48} {total * 1e3:8.1f} ms {100 * total / floor_s:6.1f}%")
    model_passes(model, images, labels, repeats)


def model_passes(model, images, labels, repeats: int) -> None:
    """The model part side by side, CPU time interleaved in every repeat, as medians of ratios to the floor: the
    statistics by batch-1 passes and by the batched route (image_statistics' default for images of at most
    BATCHED_MAX_PIXELS pixels), the batched route with each convolution's weight gradients image by image (no
    folded grouped call), with the earlier chunk bound (2^19 input values: 42 images at 64 px), both routes with
    torch's own Mish (instead of the routes' Mish with its derivative kept from the forward), the batch-1 passes
    with torch's NCHW max_pool2d (instead of the kernel on channels-last copies of chunks of channels), and the floor
    with channels-last input (the batched route's layout; the floor itself stays NCHW, batch 1). The minor page
    faults per image (medians) show the chunks' memory coming back from the operating system.

    Two rejected forms of the batch-1 passes run beside them: the imprinted input in channels-last (fast where the
    floor's channels-last line is, at 224 px) and the same with every GroupNorm run on a contiguous NCHW copy (hooks
    convert in and out). The last column is each route's largest relative error of the gradient norm G against
    batch-1 passes of a float64 copy of the model: torch's channels-last GroupNorm sums its statistics in float32
    with an error that grows with the positions per channel (ResNet-9 width 16, the bench's images: 224 px 9.0e-4
    against 3.2e-6 by NCHW batch-1 passes; 64 px 1.0e-5 against 6.2e-6), too large for statistics that set each
    image's clipping and noise scale; with GroupNorm on NCHW copies the error is back to NCHW's and the speed is
    gone (224 px 1.055x the floor against 1.042x for the batch-1 passes, 64 px 1.15x)."""
    import resource
    from copy import deepcopy

    from dpaudit.attacks import imprint
    from dpaudit.attacks.imprint import BATCHED_MAX_PIXELS, ImprintBlock, image_statistics

    block = ImprintBlock(tuple(images.shape[1:]), mean=np.array(MEAN), std=np.array(STD))
    kw = dict(mean=np.array(MEAN), std=np.array(STD))
    cl = images.contiguous(memory_format=torch.channels_last)

    def batched(route=True, **constants):
        def run():
            saved = {k: getattr(imprint, k) for k in constants}
            for k, v in constants.items():
                setattr(imprint, k, v)
            try:
                return image_statistics(model, block, images, labels, batched=route, **kw)
            finally:
                for k, v in saved.items():
                    setattr(imprint, k, v)
        return run

    class ChannelsLastBlock(ImprintBlock):  # the imprinted input laid out channels-last
        def connect(self, activations, x):
            return super().connect(activations, x).contiguous(memory_format=torch.channels_last)

    cl_block = ChannelsLastBlock(tuple(images.shape[1:]), mean=np.array(MEAN), std=np.array(STD))
    cl_block.load_state_dict(block.state_dict())

    def group_norm_nchw(fn):
        def run():
            handles = []
            for m in model.modules():
                if type(m) is torch.nn.GroupNorm:
                    handles.append(m.register_forward_pre_hook(lambda _m, a: (a[0].contiguous(),)))
                    handles.append(m.register_forward_hook(
                        lambda _m, _a, out: out.contiguous(memory_format=torch.channels_last)))
            try:
                return fn()
            finally:
                for handle in handles:
                    handle.remove()
        return run

    runs = {"floor": lambda: floor(model, images, labels),
            "floor, channels-last input": lambda: floor(model, cl, labels),
            "statistics, batch-1 passes": lambda: image_statistics(model, block, images, labels, batched=False, **kw),
            "  batch-1, torch's mish and mish_backward": batched(False, _MishWithSlope=contextlib.nullcontext),
            "  batch-1, torch's NCHW max_pool2d": batched(
                False, _MaxPoolChannelsLast=lambda scratch=None: contextlib.nullcontext()),
            "statistics, batched route": batched(),
            "  batched, weight gradients image by image": batched(FOLDED_MIN_POSITIONS=2**62),
            "  batched, chunks of <= 2^19 input values": batched(BATCH_VALUES=2**19),
            "  batched, torch's mish and mish_backward": batched(_MishWithSlope=contextlib.nullcontext),
            "batch-1, channels-last input (rejected)": lambda: image_statistics(model, cl_block, images, labels,
                                                                             batched=False, **kw),
            "  and GroupNorm on NCHW copies (rejected)": group_norm_nchw(
                lambda: image_statistics(model, cl_block, images, labels, batched=False, **kw))}
    exact = image_statistics(deepcopy(model).double(), deepcopy(block).double(), images.double(), labels,
                             batched=False, **kw).grad_norm
    error: dict[str, float] = {}
    for key in runs:
        if key.startswith(("statistics", "  batched", "  batch-1", "batch-1", "  and")):
            g = runs[key]().grad_norm
            error[key] = float(np.max(np.abs(g - exact) / exact))
    spent: dict[str, list[float]] = {k: [] for k in runs}
    faults: dict[str, list[int]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.process_time()
            fn()
            spent[key].append(time.process_time() - t0)
            faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    fl = np.array(spent["floor"])
    default = "batched" if images.shape[-2] * images.shape[-1] <= BATCHED_MAX_PIXELS else "batch-1"
    print(f"model part (CPU, medians of {repeats} interleaved repeats; ratio to the floor; page faults per image; "
          f"default here: {default}; largest relative error of G against float64):")
    for key, v in spent.items():
        err = f"{error[key]:9.1e}" if key in error else ""
        print(f"  {key:<48} {np.median(v) * 1e3:8.1f} ms {np.median(np.array(v) / fl):6.3f}x "
              f"{np.median(faults[key]) / len(images):8.0f}{err}")


def alternatives(size: int, n: int, repeats: int) -> None:
    """Per-image CPU time (minimum over ``repeats``) of the TV denoiser and SSIM done as dpaudit does and otherwise."""
    import scipy.ndimage
    from skimage.metrics import structural_similarity

    from dpaudit.attacks.decoders import denoise_tv
    from dpaudit.attacks.scoring import _WIN, SsimReference, _box_sum

    def cpu(fn, *, wall=False):
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter() if wall else time.process_time()
            fn()
            best = min(best, (time.perf_counter() if wall else time.process_time()) - t0)
        return best

    gt = pictures(size, n).permute(0, 2, 3, 1).numpy()
    rng = np.random.default_rng(0)
    noisy = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), -0.5, 1.5).astype(np.float32)
    rec = np.clip(noisy, 0, 1)
    w = np.full(n, 0.05)
    nine, gt9, w9 = np.concatenate([noisy] * 9), np.concatenate([gt] * 9), np.concatenate([w] * 9)
    print(f"\n-- alternatives at {size}x{size}x3 ({n} images; CPU ms per image, minimum of {repeats}) --")
    tv1, tv9 = cpu(lambda: denoise_tv(noisy, w)) / n, cpu(lambda: denoise_tv(nine, w9)) / (9 * n)
    ref1, ref9, rec9 = SsimReference(gt), SsimReference(gt9), np.clip(nine, 0, 1)
    s1, s9 = cpu(lambda: ref1(rec)) / n, cpu(lambda: ref9(rec9)) / (9 * n)
    print(f"TV, one level's images per call {tv1 * 1e3:7.3f} | all 9 levels in one call {tv9 * 1e3:7.3f} ({tv9 / tv1:.2f}x)")
    print(f"SSIM, one level per call        {s1 * 1e3:7.3f} | all 9 levels in one call {s9 * 1e3:7.3f} ({s9 / s1:.2f}x)")
    x = torch.from_numpy(np.moveaxis(rec, -1, 1).astype(np.float64))
    y = torch.from_numpy(np.moveaxis(gt, -1, 1).astype(np.float64))
    maps = torch.stack([x, x * x, x * y], dim=2).reshape(n * 3, 3, size, size)  # x, x^2, x y per plane
    ones = torch.ones((maps.shape[1], 1, 1, 7), dtype=torch.float64)
    t_ours = cpu(lambda: _box_sum(maps)) / n
    t_nd = cpu(lambda: scipy.ndimage.uniform_filter(maps.numpy(), size=(1, 1, 7, 7))) / n
    t_conv = cpu(lambda: torch.nn.functional.conv2d(torch.nn.functional.conv2d(maps, ones, groups=3),
                                                    ones.transpose(2, 3), groups=3)) / n

    def doubling(m=maps):  # running sums along the rows, then along the columns 2 + 1, 3 + 3, 6 + 1 rows (4 sums)
        cols = (lambda c: c[..., _WIN:] - c[..., :-_WIN])(torch.nn.functional.pad(m.cumsum(-1), (1, 0)))
        s3 = cols[..., :-2, :] + cols[..., 1:-1, :] + cols[..., 2:, :]
        return (s3[..., :-4, :] + s3[..., 3:-1, :]).add_(cols[..., _WIN - 1 :, :])  # 3 + 3 + 1 rows

    assert torch.allclose(doubling(), _box_sum(maps), rtol=0, atol=1e-12)  # the same sums, in another order
    t_dbl = cpu(doubling) / n
    print(f"SSIM window sums (x, x^2, x y): running sums {t_ours * 1e3:7.3f} | scipy.ndimage.uniform_filter "
          f"{t_nd * 1e3:7.3f} ({t_nd / t_ours:.1f}x) | torch grouped conv 1x7, 7x1 {t_conv * 1e3:7.3f} "
          f"({t_conv / t_ours:.1f}x) | rows by running sums, columns by doubling {t_dbl * 1e3:7.3f} "
          f"({t_dbl / t_ours:.1f}x)")
    # Near-constant pairs are the hard case: the variances cancel and c2 = 9e-4 is all that is left.
    flat = np.full((20, 16, 16, 3), rng.random((20, 1, 1, 1)), dtype=np.float32)
    other = np.clip(flat + np.float32(0.02) + 1e-4 * rng.random(flat.shape, dtype=np.float32), 0, 1)
    pairs = [*zip(rec, gt, strict=True), *zip(flat, other, strict=True)]
    err32 = [abs(structural_similarity(r, g, data_range=1.0, channel_axis=-1)
                 - structural_similarity(r.astype(np.float64), g.astype(np.float64), data_range=1.0, channel_axis=-1))
             for r, g in pairs]
    print(f"SSIM in float32 (skimage on float32 input), largest deviation from float64: {max(err32[:n]):.1e} on "
          f"the pictures, {max(err32[n:]):.1e} on near-constant images (tolerance 1e-6)")
    threads = torch.get_num_threads()
    c1, w1 = cpu(lambda: denoise_tv(noisy, w)) / n, cpu(lambda: denoise_tv(noisy, w), wall=True) / n
    torch.set_num_threads(2)
    try:
        c2, w2 = cpu(lambda: denoise_tv(noisy, w)) / n, cpu(lambda: denoise_tv(noisy, w), wall=True) / n
    finally:
        torch.set_num_threads(threads)
    print(f"TV with 1 torch thread: CPU {c1 * 1e3:7.3f}, wall {w1 * 1e3:7.3f} | 2 threads: CPU {c2 * 1e3:7.3f}, "
          f"wall {w2 * 1e3:7.3f}")
    # The projection's scaling of q by max(1, |q|): square root and quotient (main until this bench's change) against
    # reciprocal square root and product (dpaudit), on dual variables of the size of one TV chunk, 1/3 inside the ball.
    q = torch.randn(2, 128 * 1024) * 1.5
    sq = (q * q).sum(0).clamp_(min=1.0)
    norm = torch.empty_like(sq)
    qq = torch.empty_like(q)
    t_add = cpu(lambda: torch.add(q[0], q[1], out=norm))
    t_div = cpu(lambda: qq.copy_(q).div_(torch.sqrt(sq, out=norm))) - cpu(lambda: qq.copy_(q))
    t_mul = cpu(lambda: qq.copy_(q).mul_(torch.rsqrt(sq, out=norm))) - cpu(lambda: qq.copy_(q))
    t_pow = cpu(lambda: qq.copy_(q).mul_(torch.pow(sq, -0.5, out=norm))) - cpu(lambda: qq.copy_(q))
    # The whole projection as dpaudit makes it (|q|^2, clamp, rsqrt, product: 6 passes' worth of the 16), against
    # |q| in one reduction over the two components (torch.linalg.vector_norm, dim 0), clamp and quotient.
    def projection():
        torch.mul(q[0], q[0], out=norm).addcmul_(q[1], q[1]).clamp_(min=1.0).rsqrt_()
        return qq.copy_(q).mul_(norm)

    t_proj = cpu(projection) - cpu(lambda: qq.copy_(q))
    t_vn = cpu(lambda: qq.copy_(q).div_(torch.linalg.vector_norm(q, dim=0, out=norm).clamp_(min=1.0))) \
        - cpu(lambda: qq.copy_(q))
    print(f"TV projection over a chunk, in plain passes (add): sqrt + div {t_div / t_add:.1f} | rsqrt + mul "
          f"{t_mul / t_add:.1f} (dpaudit; an iteration makes 16 passes) | pow(-0.5) + mul {t_pow / t_add:.1f}")
    print(f"TV projection, all of it: |q|^2, clamp, rsqrt, product (dpaudit) {t_proj / t_add:.1f} | |q| by "
          f"vector_norm over the two components, clamp, quotient {t_vn / t_add:.1f}")
    # De-normalising the strong decoder's output in float32 (one product by std / scale, one sum) instead of float64
    # (rejected: 1 ulp off, so the exact reconstructions without noise are no longer bit-exact; see decode_pooled).
    avg = rng.standard_normal((n, 3 * size * size), dtype=np.float32)
    scale = rng.random(n) + 0.5
    std_ = np.array(STD)[None, :, None, None]
    f64 = cpu(lambda: ((avg / scale[:, None]).reshape(n, 3, size, size) * std_ + 0.5).astype(np.float32)) / n
    f32 = cpu(lambda: avg.reshape(n, 3, size, size) * (std_ / scale[:, None, None, None]).astype(np.float32)
              + np.float32(0.5)) / n
    print(f"de-normalising per image: float64 {f64 * 1e3:7.3f} | float32 {f32 * 1e3:7.3f} ({f32 / f64:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--n-images", type=int, default=12)
    ap.add_argument("--width", type=int, default=16, help="ResNet-9 width (the paper's network: 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, set once (on the shared 2-core machine 2 threads made one forward and "
                         "backward pass up to 30x slower under contention: OpenMP workers spin on a busy core)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time floor and dpaudit by this process's CPU time instead of wall time (with --threads 1, "
                         "far less sensitive to other users of a shared machine; the naive comparison stays wall)")
    ap.add_argument("--calibrate-tv", action="store_true", help="print the TV denoiser sweep and exit")
    ap.add_argument("--breakdown", action="store_true", help="also time each stage of the attack (CPU time)")
    ap.add_argument("--alternatives", action="store_true",
                    help="also time the alternatives considered for the TV denoiser and SSIM (CPU time per image)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.calibrate_tv:
        calibrate_tv()
        return
    from dpaudit.attacks.reconstruction import run_attack
    from dpaudit.models import build_model

    print(f"torch threads: {torch.get_num_threads()}; ResNet-9 width {args.width}; grid {GRID}; "
          f"medians of {args.repeats} alternating repeats after a warm-up")
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

        def base(model=model, images=images, labels=labels):
            return floor(model, images, labels)

        ours([1e-3])  # warm-up: imports (scipy.stats, skimage), allocator, first-call costs
        base()
        # Floor, 1 level and 9 levels back to back in every repeat; the ratios are medians of per-repeat ratios,
        # which cancel most of the load of a shared machine (medians of separately timed runs do not).
        times: dict[str, list[float]] = {"floor": [], "one": [], "nine": []}
        nine_value = None
        for _ in range(args.repeats):
            for key, fn in (("floor", base), ("one", lambda: ours([1e-3])), ("nine", ours)):
                t0 = time.process_time() if args.cpu_time else time.perf_counter()
                value = fn()
                times[key].append((time.process_time() if args.cpu_time else time.perf_counter()) - t0)
                nine_value = value if key == "nine" else nine_value
            print(f"  .. {size}px: floor {times['floor'][-1]:.3f}s, 1 level {times['one'][-1]:.3f}s, "
                  f"9 levels {times['nine'][-1]:.3f}s", file=sys.stderr, flush=True)
        fl, one_t, nine_t = (np.array(times[k]) for k in ("floor", "one", "nine"))
        floor_s, one_s, t9 = float(np.median(fl)), float(np.median(one_t)), float(np.median(nine_t))
        ratio = float(np.median(nine_t / fl))
        level_frac = float(np.median((nine_t - one_t) / (len(GRID) - 1) / fl))
        per_level = level_frac * floor_s / n
        cmp = None if args.skip_naive else Comparison.run(f"{size}x{size}x3, {n} images, 9 sigmas", ours=ours,
                                                          reference=reference, repeats=args.repeats)
        print(f"\n== {size}x{size}x3, {n} images, 9 noise levels, decoders strong+paper, scored ==")
        print(f"floor (1 fwd+bwd per image):   {floor_s / n * 1e3:8.1f} ms/image  {n / floor_s:7.2f} images/s")
        print(f"dpaudit, 9 levels (scored):    {t9 / n * 1e3:8.1f} ms/image  {n / t9:7.2f} images/s  "
              f"ratio to floor {ratio:5.2f}x (goal <= 1.25x at 64 px, <= 1.5x at 224 px)")
        print(f"dpaudit, 1 level:              {one_s / n * 1e3:8.1f} ms/image; each extra level "
              f"{per_level * 1e3:.2f} ms/image = {100 * level_frac:.1f}% of one fwd+bwd (goal < 5%)")
        print(f"({'CPU' if args.cpu_time else 'wall'} time; ratios: medians over {args.repeats} repeats of floor, 1 level, 9 levels run back to back; "
              f"per repeat, 9 levels / floor: {', '.join(f'{v:.2f}' for v in nine_t / fl)})")
        if cmp is not None:
            tr = cmp.reference_median
            print(f"naive (breaching flow):        {tr / n * 1e3:8.1f} ms/image  {n / tr:7.2f} images/s  "
                  f"ratio to floor {tr / floor_s:5.2f}x; dpaudit speed-up {tr / cmp.ours_median:.1f}x")
            print("naive success (strong, paper) per sigma:",
                  {s: (int(v["strong"]), int(v["paper"])) for s, v in cmp.reference_value.items()})
        print("dpaudit success (strong, paper) per sigma:",
              {r.noise_multiplier: round(r.success_rate, 2) for r in nine_value.rows if r.decoder == "strong"},
              {r.noise_multiplier: round(r.success_rate, 2) for r in nine_value.rows if r.decoder == "paper"})
        if args.breakdown:
            breakdown(model, images, labels, float(np.min(fl)), args.repeats)
        if args.alternatives:
            alternatives(size, n, max(args.repeats, 5))


if __name__ == "__main__":
    main()

"""Scoring reconstructions: SSIM, nearest-match and paired assignment, exclusion, intervals for success fractions.

SSIM follows scikit-image 0.26 ``structural_similarity(rec, gt, data_range=1.0, channel_axis=-1)`` with its
defaults (7 x 7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the window-valid region and over
channels). :func:`ssim_batch` computes exactly that for many images at once (the uniform filter's values on the
region skimage keeps need no padding, so running sums over 7 x 7 windows give them); the tests compare it with
skimage.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from dpaudit.attacks.binomial import clopper_pearson_limits
from dpaudit.errors import check_probability, invalid

SSIM_VARIANT = ("skimage structural_similarity, data_range=1.0, 7x7 uniform window, sample covariance, "
                "K1=0.01, K2=0.03, mean over channels")


#: The seed paper (section 4.3) only considers images with more than 10% non-zero pixels.
MIN_NONZERO_FRACTION = 0.10

_WIN = 7  # skimage's default win_size for uniform windows
_K1, _K2 = 0.01, 0.03
_C1, _C2 = (_K1 * 1.0) ** 2, (_K2 * 1.0) ** 2  # data_range 1.0
_COV_NORM = _WIN * _WIN / (_WIN * _WIN - 1.0)  # sample covariance


def ssim_batch(rec: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> np.ndarray:
    """SSIM of each pair (N x H x W x C arrays in [0, 1], data_range 1.0); scikit-image's definition.

    Raises :class:`~dpaudit.errors.ConfigError` when an image is smaller than the 7 x 7 window.
    """
    return SsimReference(gt)(rec)


class SsimReference:
    """SSIM against fixed ground truths (N x H x W x C): their window statistics are computed once.

    ``SsimReference(gt)(rec)`` equals :func:`ssim_batch` ``(rec, gt)``; an attack scores every noise level and
    decoder against the same images.
    """

    def __init__(self, gt: np.ndarray | torch.Tensor) -> None:
        y = _as_tensor(gt)
        if y.ndim != 4:
            raise invalid("images", tuple(y.shape), "N x H x W x C arrays")
        if min(y.shape[1], y.shape[2]) < _WIN:
            raise invalid("image_size", tuple(y.shape[1:3]), "at least 7 x 7 pixels (SSIM's window)",
                          "pass a larger --image-size")
        self.shape = tuple(y.shape)
        n, h, w, c = y.shape
        self._stack: torch.Tensor | None = None  # the buffers of __call__, made at its first call
        self._scratch: _BoxScratch | None = None
        # Planes in float64, converted and laid out in one copy.
        self._y = torch.empty((n * c, h, w), dtype=torch.float64)
        self._y.view(n, c, h, w).copy_(y.permute(0, 3, 1, 2))
        self._step = step = _ssim_step(h, w)
        self._uy2 = torch.empty((n * c, h - _WIN + 1, w - _WIN + 1), dtype=torch.float64)  # 2 uy (2 ux uy, 2 vxy)
        self._uy2c1 = torch.empty_like(self._uy2)  # ux^2 + uy^2 + c1 needs uy^2 + c1
        self._vyc2 = torch.empty_like(self._uy2)  # vx + vy + c2 needs vy + c2
        stack = torch.empty((min(step, n * c), 2, h, w), dtype=torch.float64)  # y, y^2
        scratch = _BoxScratch(tuple(stack.shape))
        uy_sq = torch.empty((len(stack), *self._uy2.shape[1:]), dtype=torch.float64)
        for s in range(0, n * c, step):
            yc = self._y[s : s + step]
            k = len(yc)
            stack[:k, 0].copy_(yc)
            torch.mul(yc, yc, out=stack[:k, 1])
            uy, uyy = _box_sum(stack[:k], scratch).div_(_WIN * _WIN).unbind(dim=1)
            sq = torch.mul(uy, uy, out=uy_sq[:k])
            torch.mul(uy, 2.0, out=self._uy2[s : s + k])
            torch.add(sq, _C1, out=self._uy2c1[s : s + k])
            torch.sub(uyy, sq, out=self._vyc2[s : s + k]).mul_(_COV_NORM).add_(_C2)

    def __call__(self, rec: np.ndarray | torch.Tensor) -> np.ndarray:
        x = _as_tensor(rec)
        if tuple(x.shape) != self.shape:
            raise invalid("images", tuple(x.shape), f"N x H x W x C arrays of the same shape as {self.shape}")
        n, h, w, c = x.shape
        # A view when the images are stored plane after plane (the decoders' layout), else one copy in their dtype.
        x = x.permute(0, 3, 1, 2).reshape(n * c, h, w)
        per_plane = torch.empty(n * c, dtype=torch.float64)
        step = self._step
        if self._stack is None:  # made at the first call, reused by every later one
            self._stack = torch.empty((min(step, n * c), 3, h, w), dtype=torch.float64)  # x, x^2, x y
            self._scratch = _BoxScratch(tuple(self._stack.shape))
        stack, scratch = self._stack, self._scratch
        for s in range(0, n * c, step):
            k = min(step, n * c - s)
            st = stack[:k]
            x64 = st[:, 0]
            x64.copy_(x[s : s + k])  # to float64 here, in the chunk (the values are those of a float64 copy)
            torch.mul(x64, x64, out=st[:, 1])
            torch.mul(x64, self._y[s : s + k], out=st[:, 2])
            per_plane[s : s + k] = _ssim_planes(_box_sum(st, scratch), self._uy2[s : s + k],
                                                self._uy2c1[s : s + k], self._vyc2[s : s + k])
        return per_plane.reshape(n, c).mean(dim=1).numpy()


#: Values per map in one chunk of SSIM planes (float64: 512 KB per map). Measured on this 2-core EPYC (2 MB L2),
#: minimum CPU time, 16K..256K: 64 px fastest at 16 planes (64K; 32K: 5-10% slower, 128K: 20-30% slower), 224 px
#: at 1 plane (16K..128K all give 1 plane there and equal times; 256K, 5 planes: 45% slower).
_SSIM_CHUNK_VALUES = 1 << 16


def _ssim_step(h: int, w: int) -> int:
    return max(1, _SSIM_CHUNK_VALUES // (h * w))


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor over the same memory where possible (float32 or float64 in native byte order), else a float64 copy."""
    if isinstance(images, torch.Tensor):
        return images
    arr = np.asarray(images)
    if arr.dtype not in (np.float32, np.float64) or not arr.dtype.isnative or not arr.flags.writeable:
        arr = arr.astype(np.float64)
    return torch.from_numpy(arr)


def _ssim_planes(sums: torch.Tensor, uy2: torch.Tensor, uy2c1: torch.Tensor, vyc2: torch.Tensor) -> torch.Tensor:
    """Mean SSIM map of each plane pair from the window sums of x, x^2 and x y (P x 3 x H' x W', float64, consumed),
    skimage's formula (in-place to save memory traffic); ``uy2`` is 2 uy (doubling is exact: the products with it
    are bit for bit twice those with uy, one pass fewer).

    ``S = (2 ux uy + c1)(2 vxy + c2) / ((ux^2 + uy^2 + c1)(vx + vy + c2))`` with sample (co)variances
    ``v = N / (N - 1) (E[ab] - E[a] E[b])`` over the 7 x 7 window (skimage 0.26, ``use_sample_covariance``). The
    window sums are scaled to means inside the variance terms (``addcmul``), which saves passes over the maps.
    """
    sx, sxx, sxy = sums.unbind(dim=1)
    area = float(_WIN * _WIN)
    ux = sx.mul_(1.0 / area)
    vx = sxx.mul_(_COV_NORM / area).addcmul_(ux, ux, value=-_COV_NORM)
    vxy2c2 = sxy.mul_(2.0 * _COV_NORM / area).addcmul_(ux, uy2, value=-_COV_NORM).add_(_C2)  # 2 vxy + c2
    den = torch.addcmul(uy2c1, ux, ux).mul_(vx.add_(vyc2))
    num = ux.mul_(uy2).add_(_C1).mul_(vxy2c2)
    return num.div_(den).mean(dim=(1, 2))


class _BoxScratch:
    """The buffers of :func:`_box_sum` for maps of one shape, reused across chunks. The running sums have a leading
    zero row (column) that stays zero, so that every window sum is one difference of two running sums (no
    separate first window: one pass and no small strided copy less per direction)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        *lead, h, w = shape
        self.along_w = torch.zeros((*lead, h, w + 1), dtype=torch.float64)
        self.cols = torch.empty((*lead, h, w - _WIN + 1), dtype=torch.float64)
        self.along_h = torch.zeros((*lead, h + 1, w - _WIN + 1), dtype=torch.float64)
        self.out = torch.empty((*lead, h - _WIN + 1, w - _WIN + 1), dtype=torch.float64)

    def take(self, k: int) -> tuple[torch.Tensor, ...]:
        return self.along_w[:k], self.cols[:k], self.along_h[:k], self.out[:k]


def _box_sum(x: torch.Tensor, scratch: _BoxScratch | None = None) -> torch.Tensor:
    """Sum over every 7 x 7 window inside the image (49 ``avg_pool2d(x, 7, stride=1)``), by separable running sums.

    Two cumulative sums instead of 49 additions per output, along the rows first (contiguous; measured 1.5x
    faster than columns first). In float64 the difference from the direct sum is below 1e-12 for values in [0, 1]
    (the tests compare the SSIM with scikit-image to 1e-10). ``scratch`` (made for x's shape, or a larger first
    dimension) holds the buffers between calls, and the result is then a view into it.
    """
    if scratch is None:
        scratch = _BoxScratch(tuple(x.shape))
    along_w, cols, along_h, out = scratch.take(x.shape[0])
    torch.cumsum(x, dim=-1, out=along_w[..., 1:])  # along_w[..., j + 1] = x[..., 0] + ... + x[..., j]
    torch.sub(along_w[..., _WIN:], along_w[..., : -_WIN], out=cols)  # sums over 7 consecutive columns
    torch.cumsum(cols, dim=-2, out=along_h[..., 1:, :])
    return torch.sub(along_h[..., _WIN:, :], along_h[..., : -_WIN, :], out=out)


def nonzero_fraction(images: np.ndarray) -> np.ndarray:
    """Fraction of pixels with any non-zero channel, per image (N x H x W x C)."""
    return (np.asarray(images) > 0).any(axis=-1).mean(axis=(1, 2))


def keep_mask(images: np.ndarray) -> np.ndarray:
    """Images the seed paper scores: more than 10% non-zero pixels (section 4.3)."""
    return nonzero_fraction(images) > MIN_NONZERO_FRACTION


def nearest_match(inputs: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """For each input, the index of the candidate reconstruction with the smallest Euclidean distance (exact).

    As the seed paper (section 4.3): "calculating the pairwise distance between all data samples and
    reconstructions and assigning each input the reconstruction with the lowest distance". See
    :class:`NearestMatcher` (which this builds) for the certified search.
    """
    return NearestMatcher(inputs)(candidates)


#: Relative slack of the GEMM form of the squared distance: ``|a|^2 + |c|^2 - 2 a.c`` in float64 differs from
#: the direct sum ``sum((a - c)^2)`` by at most about ``D * 2^-53 * (|a| + |c|)^2`` (standard dot-product error
#: bound, Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1), below
#: ``1e-9 * (|a|^2 + |c|^2)`` for D up to 10^6 values.
_GEMM_SLACK = 1e-9


class NearestMatcher:
    """Exact nearest-candidate search for fixed inputs (N x H x W x C); the inputs' summaries are computed once.

    All squared distances come from one float64 matrix product (``|a|^2 + |c|^2 - 2 a.c``); each is within
    ``_GEMM_SLACK * (|a|^2 + |c|^2 + 1)`` of the direct sum, so a candidate can be the nearest only if its GEMM
    distance minus that slack does not exceed the smallest GEMM distance plus its slack. When more than one
    candidate survives (near-ties), the survivors are compared by the direct sum ``sum((a - c)^2)`` in float64,
    the brute-force definition; ties go to the lower index.
    """

    def __init__(self, inputs: np.ndarray) -> None:
        inputs = np.asarray(inputs)
        self.shape = inputs.shape[1:]
        self._flat = _flat_planes(inputs).astype(np.float64)
        self._sq = np.einsum("nd,nd->n", self._flat, self._flat)

    def __call__(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates)
        if candidates.shape[0] == 0:
            raise invalid("candidates", 0, "at least one reconstruction")
        if candidates.shape[1:] != self.shape:
            raise invalid("candidates", candidates.shape[1:], f"images of shape {self.shape}")
        flat_in = self._flat
        flat_c = _flat_planes(candidates).astype(np.float64)
        sq_c = np.einsum("nd,nd->n", flat_c, flat_c)
        # torch's matrix product: for these few-by-few products of long rows numpy's was 3.7x slower (224 px, 3
        # images: 0.82 ms against 0.22 ms); any order of summation is within the slack below.
        cross = torch.mm(torch.from_numpy(flat_in), torch.from_numpy(flat_c).T).numpy()
        dist = self._sq[:, None] + sq_c[None, :] - 2.0 * cross
        slack = _GEMM_SLACK * (self._sq[:, None] + sq_c[None, :] + 1.0)
        best = np.argmin(dist, axis=1)
        rows = np.arange(len(best))
        survive = dist - slack <= (dist + slack)[rows, best][:, None]
        for i in np.nonzero(survive.sum(axis=1) > 1)[0]:
            idx = np.nonzero(survive[i])[0]
            d = np.empty(len(idx))
            for start in range(0, len(idx), 256):  # bounded memory: 256 candidates at a time
                chunk = idx[start : start + 256]
                d[start : start + 256] = ((flat_c[chunk] - flat_in[i]) ** 2).sum(1)
            best[i] = idx[int(np.argmin(d))]  # argmin returns the first (lowest index) of ties
        return best


def _flat_planes(images: np.ndarray) -> np.ndarray:
    """N x H x W x C images as N flat vectors, channel plane after plane (the order of every image's values does not
    change a distance; this one is a view of the decoders' output, which is stored plane after plane)."""
    if images.ndim < 2:
        return images.reshape(len(images), -1)
    return np.moveaxis(images, -1, 1).reshape(len(images), -1)


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper and Pearson, Biometrika 1934) two-sided interval for a binomial proportion.

    Its coverage is at least ``confidence`` for every true proportion (conservative).
    """
    confidence = check_probability("confidence", confidence)
    if n <= 0:
        return (0.0, 1.0)
    return _clopper_pearson(int(successes), int(n), float(confidence))


@functools.lru_cache(maxsize=4096)
def _clopper_pearson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    # Cached: an attack asks for the same (successes, n) at many noise levels (e.g. 0 successes for the paper
    # decoder). Two-sided at ``confidence`` = each one-sided limit at (1 + confidence) / 2.
    low, high = clopper_pearson_limits(np.array([successes]), n, (1.0 + confidence) / 2)
    return float(low[0]), float(high[0])


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson, JASA 1927) for a binomial proportion (approximate coverage)."""
    from scipy.stats import norm

    confidence = check_probability("confidence", confidence)
    if n <= 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)

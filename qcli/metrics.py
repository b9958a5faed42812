"""Pure math for accuracy and latency reports. Each function states its degenerate cases."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 * log10(sum(ref**2) / sum((ref - q)**2))``.

    Takes the two sums (so they can be accumulated over batches). No noise gives ``inf``; noise
    on an all-zero signal gives ``-inf``; both zero (all-zero reference reproduced exactly) is ``inf``.
    """
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def power_sums(ref: Tensor, test: Tensor) -> tuple[float, float]:
    """(sum of ref², sum of (ref - test)²) in float64, for ``sqnr_db``."""
    ref64, test64 = ref.double(), test.double()
    return float((ref64 * ref64).sum()), float(((ref64 - test64) ** 2).sum())


def cosine_per_sample(ref: Tensor, test: Tensor) -> Any:
    """Cosine similarity of each sample's flattened outputs (a tensor of length batch).

    Two all-zero vectors are identical (1.0); one all-zero vector against a non-zero one is 0.0.
    """
    import torch

    a = ref.reshape(ref.shape[0], -1).double()
    b = test.reshape(test.shape[0], -1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(1e-300)
    both_zero = (na == 0) & (nb == 0)
    return torch.where(both_zero, torch.ones_like(cos), torch.where((na == 0) | (nb == 0), torch.zeros_like(cos), cos))


def topk_hits(logits: Tensor, labels: Tensor, k: int) -> int:
    """How many rows have their label among the ``k`` largest logits (k is capped at the class count)."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return int((top == labels.unsqueeze(-1)).any(dim=-1).sum())


def top1_agreement_hits(ref: Tensor, test: Tensor) -> int:
    """How many rows have the same arg-max in both outputs (ties go to the lowest index in both)."""
    return int((ref.argmax(dim=-1) == test.argmax(dim=-1)).sum())


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of a non-empty sequence; q in [0, 100]."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the ranks (ties averaged).

    ``None`` when it is undefined: fewer than two pairs, or one side constant.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs two sequences of one length, not {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)


def auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive): the chance
    that a random positive scores above a random negative, ties counting half (Mann-Whitney U
    from the averaged ranks). ``None`` when one class is absent.
    """
    if len(scores) != len(labels):
        raise ValueError(f"auc needs one score per label, not {len(scores)} and {len(labels)}")
    positives = sum(1 for y in labels if y == 1)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    r = ranks(scores)
    rank_sum = sum(rk for rk, y in zip(r, labels, strict=True) if y == 1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def median_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(median, low, high): the median and its percentile-bootstrap interval.

    The values are resampled with replacement ``resamples`` times; the interval spans the middle
    ``confidence`` of the resampled medians. One value gives a zero-width interval at it.
    """
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("median of no values")
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, data.size, (resamples, data.size))], axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(np.median(data)), float(lo), float(hi)


def ratio_interval(
    base: Sequence[float], test: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(ratio, low, high) for median(base) / median(test), with a percentile-bootstrap interval.

    ``base[i]`` and ``test[i]`` were measured in the same round (interleaved), so rounds are
    resampled as pairs: a disturbance that slowed both calls of a round stays paired, and the
    interval reflects how the ratio, not each latency, varies. Needs one pair or more.
    """
    import numpy as np

    a, b = np.asarray(base, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if a.size == 0 or a.size != b.size:
        raise ValueError("ratio of unpaired or empty samples")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, a.size, (resamples, a.size))
    ratios = np.median(a[index], axis=1) / np.median(b[index], axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def verdict(low: float, high: float, threshold: float) -> str:
    """A three-valued gate on an interval: ``pass`` when all of it is at or above the threshold,
    ``fail`` when all of it is below, ``inconclusive`` when it straddles the threshold."""
    if low >= threshold:
        return "pass"
    if high < threshold:
        return "fail"
    return "inconclusive"

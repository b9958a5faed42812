"""Stage 6a: accuracy of the INT8 model next to FP32, on the same batches.

A labeled folder (class sub-folders) gives top-1/top-5 for both models; every folder gives the
fidelity of INT8 to FP32: top-1 agreement, SQNR (dB) and mean cosine similarity of the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from qcli import metrics
from qcli.calibrate import args_for, identity_track
from qcli.data import InputSpec, SampleFolder


@dataclass(frozen=True)
class Accuracy:
    samples: int
    labeled: bool
    fp32_top1: float | None  # percent
    int8_top1: float | None
    fp32_top5: float | None
    int8_top5: float | None
    top1_agreement: float  # percent of samples where both models pick the same class
    sqnr_db: float
    cosine: float

    @property
    def drop(self) -> float:
        """Accuracy lost, in points: top-1 drop on labels, else disagreement with FP32."""
        if self.fp32_top1 is not None and self.int8_top1 is not None:
            return self.fp32_top1 - self.int8_top1
        return 100.0 - self.top1_agreement

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop}


def _first_tensor(out: Any) -> Any:
    while isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def evaluate(
    fp32: Callable[..., Any],
    int8: Callable[..., Any],
    folder: SampleFolder,
    spec: InputSpec,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    track: Callable[[Any, int | None], Any] = identity_track,
) -> Accuracy:
    """Run both models over the folder and compare; ``track`` may wrap the batch stream."""
    import torch

    n = hits1_fp = hits1_q = hits5_fp = hits5_q = agree = 0
    signal = noise = 0.0
    cos_sum = 0.0
    total = min(limit, len(folder.files)) if limit else len(folder.files)
    with torch.no_grad():
        for batch in track(folder.batches(spec, batch_size, limit), total):
            args = args_for(batch.inputs, spec)
            ref = _first_tensor(fp32(*args)).float()
            out = _first_tensor(int8(*args)).float()
            n += ref.shape[0]
            s, e = metrics.power_sums(ref, out)
            signal, noise = signal + s, noise + e
            cos_sum += float(metrics.cosine_per_sample(ref, out).sum())
            if ref.ndim == 2:
                agree += metrics.top1_agreement_hits(ref, out)
                if batch.labels is not None:
                    hits1_fp += metrics.topk_hits(ref, batch.labels, 1)
                    hits1_q += metrics.topk_hits(out, batch.labels, 1)
                    hits5_fp += metrics.topk_hits(ref, batch.labels, 5)
                    hits5_q += metrics.topk_hits(out, batch.labels, 5)
    labeled = folder.labeled

    def pct(hits: int) -> float | None:
        return 100.0 * hits / n if labeled and n else None

    return Accuracy(
        samples=n,
        labeled=labeled,
        fp32_top1=pct(hits1_fp),
        int8_top1=pct(hits1_q),
        fp32_top5=pct(hits5_fp),
        int8_top5=pct(hits5_q),
        top1_agreement=100.0 * agree / n if n else 0.0,
        sqnr_db=metrics.sqnr_db(signal, noise),
        cosine=cos_sum / n if n else 0.0,
    )

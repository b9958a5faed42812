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
from qcli.data import InputSpec, SampleFolder, read_pairs
from qcli.errors import DataError


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
    pairs: int | None = None  # scored pairs in the folder's pairs.csv (embedding models)
    fp32_spearman: float | None = None  # rank correlation of the pairs' cosine with their scores
    int8_spearman: float | None = None

    @property
    def drop(self) -> float:
        """Accuracy lost, in points: top-1 drop on labels; for scored pairs, the Spearman
        correlation lost times 100; else disagreement with FP32."""
        if self.fp32_top1 is not None and self.int8_top1 is not None:
            return self.fp32_top1 - self.int8_top1
        if self.fp32_spearman is not None and self.int8_spearman is not None:
            return 100.0 * (self.fp32_spearman - self.int8_spearman)
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

    pairs = read_pairs(folder)
    wanted = {name for a, b, _ in pairs for name in (a, b)} if pairs else set()
    embedded: dict[str, tuple[Any, Any]] = {}
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
            for i, name in enumerate(batch.files):
                if name in wanted:
                    if name in embedded:
                        raise DataError(f"'{name}' holds several samples; a scored pair names files of one sample")
                    embedded[name] = (ref[i].flatten(), out[i].flatten())
            if ref.ndim == 2:
                agree += metrics.top1_agreement_hits(ref, out)
                if batch.labels is not None:
                    hits1_fp += metrics.topk_hits(ref, batch.labels, 1)
                    hits1_q += metrics.topk_hits(out, batch.labels, 1)
                    hits5_fp += metrics.topk_hits(ref, batch.labels, 5)
                    hits5_q += metrics.topk_hits(out, batch.labels, 5)
    if n == 0:  # an agreement of 0% on no samples would be a number qcli cannot stand behind
        raise DataError(f"evaluation folder '{folder.root}' holds no samples (its files hold zero rows)")
    labeled = folder.labeled
    spearman: tuple[float | None, float | None] = (None, None)
    if pairs:
        missing = sorted(wanted - set(embedded))
        if missing:
            raise DataError(
                f"pairs.csv names {len(missing)} file(s) that were not evaluated (first: {missing[0]}); "
                "raise --eval-limit or drop those pairs"
            )
        spearman = _pair_spearman(pairs, embedded)

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
        pairs=len(pairs) if pairs else None,
        fp32_spearman=spearman[0],
        int8_spearman=spearman[1],
    )


def _pair_spearman(
    pairs: list[tuple[str, str, float]], embedded: dict[str, tuple[Any, Any]]
) -> tuple[float | None, float | None]:
    """Spearman correlation of each pair's embedding cosine with its score, for FP32 and INT8."""
    import torch

    scores = [s for _, _, s in pairs]
    out = []
    for which in (0, 1):
        a = torch.stack([embedded[x][which] for x, _, _ in pairs])
        b = torch.stack([embedded[y][which] for _, y, _ in pairs])
        out.append(metrics.spearman(metrics.cosine_per_sample(a, b).tolist(), scores))
    return out[0], out[1]

"""Stage 6a: the INT8 model's outputs next to FP32's, on the same batches.

Every output is compared: a model may return a tensor, a tuple or list, a dict (or a
``transformers`` model output) or a nested mix; ``named_outputs`` flattens them into names such as
``output`` (a single tensor), ``0``, ``1.logits`` or ``pred_boxes``. For each output: SQNR (dB),
mean cosine similarity, the largest absolute error, and top-1 agreement where the output is
``[B, C]`` class scores.

One *primary metric* decides ``--max-drop`` and what the FP32 fall-back search optimises
(``JudgeOptions``). Its drop is in points, the larger the worse:

- ``top1``, ``top5``: FP32's accuracy minus INT8's, in points (labeled folder; one ``[B, C]``
  output whose columns cover the folder's classes);
- ``agreement``: 100 minus INT8's top-1 agreement with FP32 (a ``[B, C]`` output);
- ``sqnr``: the quantization noise as a percentage of the output's power, ``100 * 10**(-SQNR/10)``
  (20 dB is 1 point, 30 dB 0.1); of the chosen output, or of the worst output;
- ``cosine``: ``100 * (1 - cosine)``, of the chosen or the worst output;
- ``spearman``: the rank correlation with ``pairs.csv`` scores lost, times 100;
- ``auc``: the area under the ROC curve lost, times 100 (two class sub-folders; the score of class
  1 of the chosen output, after softmax where it holds logits);
- ``mae``, ``rmse``: INT8's error against ``targets.csv`` minus FP32's, in the targets' units;
- ``module:function``: the user's own (``custom_metric``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from qcli import metrics
from qcli.calibrate import args_for, identity_track
from qcli.data import InputSpec, SampleFolder, read_pairs, read_targets
from qcli.errors import DataError, OptionError, QcliError
from qcli.options import JudgeOptions

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor

LABELED = ("top1", "top5", "auc")
ONE_OUTPUT = ("top1", "top5", "agreement", "spearman", "auc", "mae", "rmse")


@dataclass(frozen=True)
class OutputFidelity:
    """How close one INT8 output is to FP32's."""

    name: str
    shape: list[int]  # one sample's shape (without the batch dimension)
    sqnr_db: float
    cosine: float  # mean over samples
    max_abs_error: float
    top1_agreement: float | None = None  # percent, for [B, C] class scores


@dataclass(frozen=True)
class Score:
    """The primary metric: FP32's and INT8's figures and the points lost (see the module notes)."""

    metric: str
    output: str | None  # the output it is computed on; None: every output (the worst counts)
    fp32: float | None  # None where FP32 is the reference itself (sqnr)
    int8: float
    drop: float
    higher_is_better: bool = True
    unit: str = "%"


@dataclass(frozen=True)
class Accuracy:
    samples: int
    labeled: bool
    fp32_top1: float | None  # percent
    int8_top1: float | None
    fp32_top5: float | None
    int8_top5: float | None
    top1_agreement: float | None  # percent of samples where both pick the same class ([B, C] output)
    sqnr_db: float  # of the chosen output, else of the worst output
    cosine: float
    pairs: int | None = None  # scored pairs in the folder's pairs.csv (embedding models)
    fp32_spearman: float | None = None  # rank correlation of the pairs' cosine with their scores
    int8_spearman: float | None = None
    outputs: list[OutputFidelity] = field(default_factory=list)
    score: Score | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float:
        """Points of the primary metric lost (reports from before the metric was recorded: top-1,
        Spearman or agreement, as they were judged then)."""
        if self.score is not None:
            return self.score.drop
        if self.fp32_top1 is not None and self.int8_top1 is not None:
            return self.fp32_top1 - self.int8_top1
        if self.fp32_spearman is not None and self.int8_spearman is not None:
            return 100.0 * (self.fp32_spearman - self.int8_spearman)
        return 100.0 - (self.top1_agreement or 0.0)

    @property
    def worst_output(self) -> OutputFidelity | None:
        return min(self.outputs, key=lambda o: o.sqnr_db, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop}


def named_outputs(out: Any, prefix: str = "") -> list[tuple[str, Tensor]]:
    """The tensors of a model's output with their names, in order: a single tensor is
    ``output``; items of a tuple or list are ``0``, ``1``; of a dict (or a ``transformers``
    model output) their keys; nested levels are joined with dots (``1.logits``). Values that
    are not tensors (None, numbers) are left out."""
    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    items: list[tuple[str, Any]]
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(out)]
    else:
        return []
    found = []
    for key, value in items:
        found += named_outputs(value, f"{prefix}.{key}" if prefix else key)
    return found


def _is_classes(shape: tuple[int, ...]) -> bool:
    """``[B, C]`` class scores (C of 2 or more)."""
    return len(shape) == 2 and shape[1] >= 2


def noise_points(sqnr_db: float) -> float:
    """Quantization noise as a percentage of the signal's power."""
    if sqnr_db == math.inf:
        return 0.0
    if sqnr_db == -math.inf:
        return math.inf
    return 100.0 * 10 ** (-sqnr_db / 10)


class _OutputStats:
    """Running sums for one output."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape
        self.n = self.agree = 0
        self.signal = self.noise = self.cos_sum = self.max_abs = 0.0

    def add(self, ref: Tensor, out: Tensor) -> None:
        if ref.shape != out.shape:
            raise DataError(
                f"output '{self.name}' has shape {list(out.shape)} in INT8 but {list(ref.shape)} in FP32; "
                "the artifact was not made from this model"
            )
        s, e = metrics.power_sums(ref, out)
        self.signal, self.noise = self.signal + s, self.noise + e
        rows = ref.shape[0] if ref.ndim else 1
        self.n += rows
        if ref.ndim:
            self.cos_sum += float(metrics.cosine_per_sample(ref, out).sum())
        else:
            self.cos_sum += 1.0 if float(ref) == float(out) else 0.0
        if ref.numel():
            self.max_abs = max(self.max_abs, float((ref.double() - out.double()).abs().max()))
        if _is_classes(tuple(ref.shape)):
            self.agree += metrics.top1_agreement_hits(ref, out)

    def result(self) -> OutputFidelity:
        agreement = 100.0 * self.agree / self.n if _is_classes(self.shape) and self.n else None
        return OutputFidelity(
            self.name,
            list(self.shape[1:]),
            metrics.sqnr_db(self.signal, self.noise),
            self.cos_sum / self.n if self.n else 0.0,
            self.max_abs,
            agreement,
        )


@dataclass
class _Plan:
    """The metric and output settled on the first batch."""

    metric: str
    output: int | None  # index into the named outputs; None: every output
    names: list[str]


def _choose_output(names: list[str], wanted: str) -> int:
    if wanted in names:
        return names.index(wanted)
    if wanted.lstrip("-").isdigit() and -len(names) <= int(wanted) < len(names):
        return int(wanted) % len(names)
    raise OptionError(
        f"{{output_name}} '{wanted}' is not an output of the model; its outputs are {', '.join(names)} "
        f"(a name, or an index from 0 to {len(names) - 1})"
    )


def _plan(
    named: list[tuple[str, Tensor]], folder: SampleFolder, judge: JudgeOptions, pairs: bool, targets: bool
) -> _Plan:
    """The metric and output to judge by: the user's, checked against the outputs, or the default."""
    names = [n for n, _ in named]
    shapes = [tuple(t.shape) for _, t in named]
    if not names:
        raise DataError("the model returned no tensors to compare")
    chosen = _choose_output(names, judge.output_name) if judge.output_name is not None else None
    if chosen is None and len(names) == 1:
        chosen = 0
    metric = judge.metric
    if metric is None:
        if chosen is not None and _is_classes(shapes[chosen]) and folder.labeled:
            metric = "top1"
        elif pairs and chosen is not None:
            metric = "spearman"
        elif targets and chosen is not None:
            metric = "mae"
        else:
            metric = "sqnr"
    if metric in ONE_OUTPUT and chosen is None:
        raise OptionError(
            f"{{metric}} {metric} needs one output and the model returns {len(names)} ({', '.join(names)}); "
            "name one with {output_name}"
        )
    plan = _Plan(metric, chosen, names)
    _check_plan(plan, shapes, folder, pairs, targets)
    return plan


def check_folder(judge: JudgeOptions, folder: SampleFolder) -> None:
    """What the chosen metric needs from the folder (and the user's metric importing), checked
    before any work; what it needs from the outputs is checked on the first batch."""
    metric = judge.metric
    if metric is None:
        return
    if ":" in metric:
        custom_metric(metric)
        return
    pairs = metric == "spearman" and read_pairs(folder) is not None
    targets = metric in ("mae", "rmse") and read_targets(folder) is not None
    _check_folder_for(metric, folder, pairs, targets)


def _check_folder_for(metric: str, folder: SampleFolder, pairs: bool, targets: bool) -> None:
    """Refuse a metric the folder cannot serve (``pairs``, ``targets``: whether it has those files)."""
    classes = len(folder.classes or ())
    if metric in LABELED and not folder.labeled:
        raise OptionError(
            f"{{metric}} {metric} needs a labeled evaluation folder (one sub-folder per class); this one has none"
        )
    if metric == "auc" and classes != 2:
        raise OptionError(f"{{metric}} auc needs two class sub-folders (0 and 1), this folder has {classes}")
    if metric == "spearman" and not pairs:
        raise OptionError("{metric} spearman needs a pairs.csv of scored sample pairs in the evaluation folder")
    if metric in ("mae", "rmse") and not targets:
        raise OptionError(f"{{metric}} {metric} needs a targets.csv (file,<target>...) in the evaluation folder")


def _check_plan(plan: _Plan, shapes: list[tuple[int, ...]], folder: SampleFolder, pairs: bool, targets: bool) -> None:
    """Refuse what cannot be judged: one line naming the option to change."""
    metric = plan.metric
    name = plan.names[plan.output] if plan.output is not None else ""
    shape = shapes[plan.output] if plan.output is not None else ()
    classes = len(folder.classes or ())
    if ":" not in metric:  # also a default metric: what it needs from the folder
        _check_folder_for(metric, folder, pairs, targets)
    if metric in ("top1", "top5", "agreement") and not _is_classes(shape):
        raise OptionError(
            f"{{metric}} {metric} needs [batch, classes] scores, but output '{name}' has shape {_shown(shape)}; "
            "pick the class output with {output_name}, or judge by sqnr or cosine with {metric}"
        )
    if metric == "top5" and shape[1] <= 5:
        raise OptionError(
            f"{{metric}} top5 on output '{name}' of {shape[1]} classes is always 100%; judge by top1 with {{metric}}"
        )
    if metric in ("top1", "top5") and classes > shape[1]:
        raise OptionError(
            f"the evaluation folder has {classes} classes but output '{name}' has {shape[1]} columns; "
            "pick the class output with {output_name}, or another {metric}"
        )
    if metric == "auc" and not (len(shape) == 1 or (len(shape) == 2 and shape[1] <= 2)):
        raise OptionError(
            f"{{metric}} auc needs a score per sample ([batch], [batch, 1] or [batch, 2]), but output "
            f"'{name}' has shape {_shown(shape)}; pick it with {{output_name}}"
        )


def _shown(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(["batch", *(str(d) for d in shape[1:])]) + "]"


def _class1_score(t: Tensor) -> Tensor:
    """One score per sample for AUC: the value itself, or class 1's probability (softmax unless
    the rows already are probabilities)."""
    if t.ndim == 1:
        return t
    if t.shape[1] == 1:
        return t[:, 0]
    rows_are_probabilities = bool(((t >= 0) & (t <= 1)).all()) and bool(((t.sum(1) - 1).abs() < 1e-3).all())
    return t[:, 1] if rows_are_probabilities else t.softmax(1)[:, 1]


def custom_metric(target: str) -> tuple[Callable[..., Any], bool]:
    """The user's metric ``module:function`` and whether higher is better.

    It is called batch by batch as ``function(reference, outputs, labels, files)``: ``reference``
    and ``outputs`` map output names (as in the reports) to tensors, ``labels`` is the int64 label
    tensor of a labeled folder (else None) and ``files`` the sample files' relative paths. It
    returns one number for the batch. qcli calls it with FP32's outputs as both arguments (FP32's
    figure) and with INT8's as ``outputs`` (INT8's), and averages each over samples. Set
    ``function.higher_is_better = False`` for an error or a loss.
    """
    from qcli.load import import_target

    fn = import_target(target, "{metric}", OptionError)
    if not callable(fn):
        raise OptionError(f"{{metric}} '{target}' is not callable")
    return fn, bool(getattr(fn, "higher_is_better", True))


class _Scorer:
    """Accumulates the primary metric over batches."""

    def __init__(self, plan: _Plan, custom: tuple[Callable[..., Any], bool] | None) -> None:
        self.plan, self.custom = plan, custom
        self.hits = {"fp32_1": 0, "int8_1": 0, "fp32_5": 0, "int8_5": 0}
        self.scores: tuple[list[float], list[float]] = ([], [])
        self.labels: list[int] = []
        self.abs_err = [0.0, 0.0]
        self.sq_err = [0.0, 0.0]
        self.values = 0
        self.custom_sums = [0.0, 0.0]
        self.n = 0
        self.targets_seen: set[str] = set()

    def add(
        self, named_ref: list[tuple[str, Tensor]], named_out: list[tuple[str, Tensor]], batch: Any, targets: Any
    ) -> None:
        import torch

        rows = batch.labels.shape[0] if batch.labels is not None else len(batch.files)
        self.n += rows
        i = self.plan.output
        ref = named_ref[i][1] if i is not None else None
        out = named_out[i][1] if i is not None else None
        if ref is not None and out is not None and _is_classes(tuple(ref.shape)) and batch.labels is not None:
            for k in (1, 5):
                self.hits[f"fp32_{k}"] += metrics.topk_hits(ref, batch.labels, k)
                self.hits[f"int8_{k}"] += metrics.topk_hits(out, batch.labels, k)
        metric = self.plan.metric
        if metric == "auc" and ref is not None and out is not None:
            self.scores[0].extend(_class1_score(ref).tolist())
            self.scores[1].extend(_class1_score(out).tolist())
            self.labels.extend(int(y) for y in batch.labels)
        elif metric in ("mae", "rmse") and ref is not None and out is not None:
            want = torch.tensor([self._target(targets, f) for f in batch.files], dtype=torch.float64)
            for k, t in enumerate((ref, out)):
                got = t.reshape(t.shape[0], -1).double()
                if got.shape != want.shape:
                    raise OptionError(
                        f"{{metric}} {metric}: output '{self.plan.names[i or 0]}' holds {got.shape[1]} value(s) per "
                        f"sample and targets.csv {want.shape[1]}; pick the output with {{output_name}}"
                    )
                diff = got - want
                self.abs_err[k] += float(diff.abs().sum())
                self.sq_err[k] += float((diff * diff).sum())
            self.values += want.numel()
        elif self.custom is not None:
            fn = self.custom[0]
            reference = dict(named_ref)
            for k, outputs in enumerate((reference, dict(named_out))):
                self.custom_sums[k] += self._call(fn, reference, outputs, batch) * rows

    def _target(self, targets: dict[str, list[float]], name: str) -> list[float]:
        if name in self.targets_seen:
            raise DataError(f"'{name}' holds several samples; targets.csv names files of one sample each")
        self.targets_seen.add(name)
        if name not in targets:
            raise DataError(f"sample '{name}' has no row in targets.csv; add it or remove the file")
        return targets[name]

    def _call(self, fn: Callable[..., Any], reference: Any, outputs: Any, batch: Any) -> float:
        try:
            value = fn(reference, outputs, batch.labels, batch.files)
            number = float(value)
        except QcliError:
            raise
        except Exception as exc:
            raise QcliError(f"--metric {self.plan.metric} failed: {type(exc).__name__}: {exc}") from None
        if not math.isfinite(number):
            raise QcliError(f"--metric {self.plan.metric} returned {number}, not a finite number")
        return number

    def hit_rate(self, key: str) -> float:
        return 100.0 * self.hits[key] / self.n if self.n else 0.0


def evaluate(
    fp32: Callable[..., Any],
    int8: Callable[..., Any],
    folder: SampleFolder,
    spec: InputSpec,
    *,
    judge: JudgeOptions | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    track: Callable[[Any, int | None], Any] = identity_track,
) -> Accuracy:
    """Run both models over the folder and compare every output; ``track`` may wrap the batch stream."""
    import torch

    judge = judge or JudgeOptions()
    pairs = read_pairs(folder)
    targets = read_targets(folder)
    custom = custom_metric(judge.metric) if judge.metric is not None and ":" in judge.metric else None
    wanted = {name for a, b, _ in pairs for name in (a, b)} if pairs else set()
    embedded: dict[str, tuple[Any, Any]] = {}
    stats: list[_OutputStats] = []
    plan: _Plan | None = None
    scorer: _Scorer | None = None
    total = min(limit, len(folder.files)) if limit else len(folder.files)
    with torch.no_grad():
        for batch in track(folder.batches(spec, batch_size, limit), total):
            args = args_for(batch.inputs, spec)
            named_ref = [(n, t.float()) for n, t in named_outputs(fp32(*args))]
            flat_out = [t.float() for _, t in named_outputs(int8(*args))]
            if len(flat_out) != len(named_ref):
                raise DataError(
                    f"the INT8 artifact returns {len(flat_out)} output tensor(s) and the FP32 model "
                    f"{len(named_ref)}; the artifact was not made from this model"
                )
            named_out = [(n, t) for (n, _), t in zip(named_ref, flat_out, strict=True)]
            if plan is None:
                plan = _plan(named_ref, folder, judge, bool(pairs), targets is not None)
                scorer = _Scorer(plan, custom)
                stats = [_OutputStats(n, tuple(t.shape)) for n, t in named_ref]
            assert scorer is not None
            for s, (_, ref), (_, out) in zip(stats, named_ref, named_out, strict=True):
                s.add(ref, out)
            scorer.add(named_ref, named_out, batch, targets)
            if pairs:
                embed = named_ref[plan.output if plan.output is not None else 0][1]
                embed_q = named_out[plan.output if plan.output is not None else 0][1]
                for i, name in enumerate(batch.files):
                    if name in wanted:
                        if name in embedded:
                            raise DataError(f"'{name}' holds several samples; a scored pair names files of one sample")
                        embedded[name] = (embed[i].flatten(), embed_q[i].flatten())
    if plan is None or scorer is None or scorer.n == 0:  # a figure on no samples is one qcli cannot stand behind
        raise DataError(f"evaluation folder '{folder.root}' holds no samples (its files hold zero rows)")
    spearman: tuple[float | None, float | None] = (None, None)
    if pairs:
        missing = sorted(wanted - set(embedded))
        if missing:
            raise DataError(
                f"pairs.csv names {len(missing)} file(s) that were not evaluated (first: {missing[0]}); "
                "raise --eval-limit or drop those pairs"
            )
        spearman = _pair_spearman(pairs, embedded)
    return _result(plan, scorer, [s.result() for s in stats], folder, spearman, len(pairs) if pairs else None)


def _result(
    plan: _Plan,
    scorer: _Scorer,
    outputs: list[OutputFidelity],
    folder: SampleFolder,
    spearman: tuple[float | None, float | None],
    pairs: int | None,
) -> Accuracy:
    chosen = outputs[plan.output] if plan.output is not None else None
    summary = chosen or min(outputs, key=lambda o: o.sqnr_db)
    with_classes = chosen is not None and chosen.top1_agreement is not None
    top = with_classes and folder.labeled and chosen is not None and len(folder.classes or ()) <= chosen.shape[0]
    # top-5 of five classes or fewer is 100% whatever the model does: not a figure to show
    top5 = top and chosen is not None and chosen.shape[0] > 5
    score = _score(plan, scorer, summary, chosen, spearman)
    accuracy = Accuracy(
        samples=scorer.n,
        labeled=folder.labeled,
        fp32_top1=scorer.hit_rate("fp32_1") if top else None,
        int8_top1=scorer.hit_rate("int8_1") if top else None,
        fp32_top5=scorer.hit_rate("fp32_5") if top5 else None,
        int8_top5=scorer.hit_rate("int8_5") if top5 else None,
        top1_agreement=chosen.top1_agreement if chosen is not None else None,
        sqnr_db=summary.sqnr_db,
        cosine=summary.cosine,
        pairs=pairs,
        fp32_spearman=spearman[0],
        int8_spearman=spearman[1],
        outputs=outputs,
        score=score,
    )
    return dataclasses.replace(accuracy, warnings=_warnings(accuracy, folder))


def _score(
    plan: _Plan,
    scorer: _Scorer,
    summary: OutputFidelity,
    chosen: OutputFidelity | None,
    spearman: tuple[float | None, float | None],
) -> Score:
    metric, output = plan.metric, chosen.name if chosen is not None else None
    if metric in ("top1", "top5"):
        k = metric[-1]
        fp, q = scorer.hit_rate(f"fp32_{k}"), scorer.hit_rate(f"int8_{k}")
        return Score(metric, output, fp, q, fp - q)
    if metric == "agreement":
        agreement = chosen.top1_agreement if chosen is not None else None
        q = agreement if agreement is not None else 0.0
        return Score(metric, output, 100.0, q, 100.0 - q)
    if metric == "sqnr":
        return Score(metric, output, None, summary.sqnr_db, noise_points(summary.sqnr_db), unit="dB")
    if metric == "cosine":
        return Score(metric, output, 1.0, summary.cosine, 100.0 * (1.0 - summary.cosine), unit="")
    if metric == "spearman":
        rho_fp, rho_q = spearman
        if rho_fp is None or rho_q is None:
            raise DataError("the pairs' scores or embeddings are constant: no rank correlation to judge by")
        return Score(metric, output, rho_fp, rho_q, 100.0 * (rho_fp - rho_q), unit="")
    if metric == "auc":
        auc_fp, auc_q = metrics.auc(scorer.scores[0], scorer.labels), metrics.auc(scorer.scores[1], scorer.labels)
        if auc_fp is None or auc_q is None:
            raise DataError("auc needs samples of both classes in the evaluation folder")
        return Score(metric, output, auc_fp, auc_q, 100.0 * (auc_fp - auc_q), unit="")
    if metric in ("mae", "rmse"):
        count = max(scorer.values, 1)
        if metric == "mae":
            fp, q = scorer.abs_err[0] / count, scorer.abs_err[1] / count
        else:
            fp, q = math.sqrt(scorer.sq_err[0] / count), math.sqrt(scorer.sq_err[1] / count)
        return Score(metric, output, fp, q, q - fp, higher_is_better=False, unit="")
    assert scorer.custom is not None
    higher = scorer.custom[1]
    fp, q = scorer.custom_sums[0] / scorer.n, scorer.custom_sums[1] / scorer.n
    return Score(scorer.plan.metric, output, fp, q, (fp - q) if higher else (q - fp), higher_is_better=higher, unit="")


def _warnings(accuracy: Accuracy, folder: SampleFolder) -> list[str]:
    """What looks wrong about the figures themselves."""
    out = []
    classes = len(folder.classes or ())
    if accuracy.fp32_top1 is not None and classes >= 2:
        chance = 100.0 / classes
        if accuracy.fp32_top1 < chance + 0.1 * (100.0 - chance):
            out.append(
                f"FP32 top-1 is {accuracy.fp32_top1:.1f}%, near chance ({chance:.1f}% for {classes} classes): the "
                "preprocessing (--config), the class sub-folders' order or the output judged is probably not the "
                "model's"
            )
    return out


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

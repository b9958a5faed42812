"""One function per command, usable from Python without the CLI; each returns a typed report
(``qcli.reports``) whose ``to_dict()`` is the command's JSON document.

Options come as the frozen objects of ``qcli.options``; paths may be ``str`` or ``os.PathLike``.
``track`` arguments accept a callable ``(iterable, total) -> iterable`` that the CLI uses for a
progress bar; the default does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcli import __version__
from qcli.calibrate import (
    Prepared,
    Stats,
    Track,
    apply_stats,
    calibrate,
    check_stats,
    identity_track,
    load_stats,
    prepare,
    save_stats,
)
from qcli.config import Recipe, to_toml
from qcli.data import SampleFolder, infer_input_spec
from qcli.errors import GateFailed, GateInconclusive, OptionError
from qcli.files import atomic_output, check_output, require_file, sha256_file
from qcli.load import ArchSpec, LoadedModel, load_model
from qcli.options import BenchOptions, CalibrationOptions, ConvertOptions
from qcli.reports import (
    ArtifactInfo,
    BaselineReport,
    BenchReport,
    CalibrateReport,
    ConvertReport,
    Gates,
    InspectArtifactReport,
    InspectModelReport,
    ModelInfo,
    Resources,
    StatsFile,
    WrittenFile,
)

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule


PathLike = str | os.PathLike[str]


def _effective_config(recipe: Recipe, options: CalibrationOptions) -> dict[str, Any]:
    """What the stats file and the artifact record as the configuration they were made with:
    every setting that decided the result, in the shape of a recipe (see ``config.to_toml``)."""
    calibration = {"limit": options.limit, "seed": options.seed, "batch_size": options.batch_size, "mode": options.mode}
    return {
        "recipe": str(recipe.path) if recipe.path else None,
        "preprocess": recipe.preprocess.to_dict(),
        "calibrate": calibration,
        "seed": options.seed,
    }


def folder_recipe(model: Path, recipe: Recipe) -> Recipe:
    """A model folder's own preprocessing where the recipe sets none: an image model's
    ``preprocessor_config.json`` (without any recipe), and its tokenizer for text samples."""
    if not model.is_dir():
        return recipe
    from qcli import hf, text

    preprocess = recipe.preprocess
    if recipe.path is None and preprocess.images_default:
        image = hf.preprocess_of(model)
        if image is not None:
            preprocess = replace(image, max_length=preprocess.max_length, lengths=preprocess.lengths)
    if preprocess.tokenizer is None and text.has_tokenizer(model):
        preprocess = replace(preprocess, tokenizer=str(model))
        longest = text.model_max_length(model)
        if (
            preprocess.max_length is None
            and preprocess.lengths is None
            and longest
            and longest < text.DEFAULT_MAX_LENGTH
        ):
            preprocess = replace(preprocess, max_length=longest)  # a model made for shorter texts
    return replace(recipe, preprocess=preprocess)


def _with_recorded_text(recipe: Recipe, artifact: Path) -> Recipe:
    """The artifact's recorded ``max_length`` and padding ``lengths`` where the recipe and flags
    set neither: ``bench`` tokenizes texts the way calibration did."""
    from qcli.artifact import read_metadata
    from qcli.errors import QcliError

    pre = recipe.preprocess
    try:
        recorded = (read_metadata(artifact).get("config") or {}).get("preprocess") or {}
    except QcliError:
        return recipe  # loading the artifact reports what is wrong with it
    if pre.max_length is not None or pre.lengths is not None or not isinstance(recorded, dict):
        return recipe
    lengths = recorded.get("lengths")
    return replace(
        recipe,
        preprocess=replace(
            pre, max_length=recorded.get("max_length"), lengths=tuple(lengths) if isinstance(lengths, list) else None
        ),
    )


def use_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count for the rest of the process (``None``: leave it)."""
    if threads is None:
        return
    if threads <= 0:
        raise OptionError(f"{{threads}} must be positive, not {threads}")
    import torch

    torch.set_num_threads(threads)


def calibrate_model(
    model: PathLike,
    calib_dir: PathLike,
    out: PathLike,
    *,
    arch: ArchSpec | None = None,
    recipe: Recipe | None = None,
    options: CalibrationOptions | None = None,
    force: bool = False,
    trust_model: bool = False,
    track: Track = identity_track,
    task: str | None = None,
) -> CalibrateReport:
    """``qcli calibrate``: observe the folder and write the statistics file.

    Example:
        >>> from qcli import demo
        >>> report = calibrate_model(demo.WEIGHTS, demo.CALIB_DIR, "stats.safetensors",
        ...                          arch=ArchSpec.parse(demo.ARCH), options=CalibrationOptions(limit=64))
        >>> report.samples
        64
    """
    model, out = Path(model), Path(out)
    recipe, options = folder_recipe(model, recipe or Recipe()), options or CalibrationOptions()
    check_output(out, force)
    loaded = load_model(model, arch, trust_model, task)
    folder = SampleFolder.open(Path(calib_dir), recipe.preprocess, seed=options.seed)
    result = calibrate(loaded, folder, options, track=track)
    meta = {
        "model_sha256": loaded.sha256,
        "model_file": loaded.path.name,
        "calibration": result.manifest,
        "config": _effective_config(recipe, options),
    }
    save_stats(out, result.prepared, meta, result.samples)
    from qcli import graph

    stats = StatsFile(str(out), out.stat().st_size, len(graph.observers(result.prepared.graph)))
    return CalibrateReport(ModelInfo.of(model, loaded), stats, result.manifest["samples"], options.mode)


@dataclass
class Calibrated:
    """An observed graph ready to convert, and where its statistics came from."""

    prepared: Prepared
    calibration: dict[str, Any]  # manifest of the samples (and the stats file, when one was used)
    samples: tuple[Tensor, ...] | None  # kept calibration samples, for the per-layer report
    config: dict[str, Any]  # effective configuration of the calibration


def convert_model_file(
    model: PathLike,
    out: PathLike,
    *,
    stats: PathLike | None = None,
    calib_dir: PathLike | None = None,
    arch: ArchSpec | None = None,
    recipe: Recipe | None = None,
    options: ConvertOptions | None = None,
    force: bool = False,
    save_config: PathLike | None = None,
    trust_model: bool = False,
    track: Track = identity_track,
    task: str | None = None,
) -> ConvertReport:
    """``qcli convert``: quantize from saved statistics or a calibration folder; write the artifact.

    ``save_config`` also writes the effective configuration as a TOML recipe (the artifact's
    metadata carries the same configuration). With ``options.search``, layers fall back to FP32
    until the accuracy drop is within budget (``qcli.search``); the best artifact found is always
    written, and ``GateFailed`` (exit 3) is raised after it when the budget is not met.

    Example:
        >>> from qcli import demo
        >>> report = convert_model_file(demo.WEIGHTS, "digits-int8.pt2", calib_dir=demo.CALIB_DIR,
        ...                             arch=ArchSpec.parse(demo.ARCH), options=ConvertOptions(method="entropy"))
        >>> report.quantized_layers
        10
    """
    model, out = Path(model), Path(out)
    recipe, options = folder_recipe(model, recipe or Recipe()), options or ConvertOptions()
    saved_config = Path(save_config) if save_config is not None else None
    _check_convert_outputs(out, options, saved_config, force, stats, calib_dir)
    use_threads(options.threads)  # oneDNN packs weights for the thread count it compiles with
    loaded = load_model(model, arch, trust_model, task)
    from qcli.convert import fixed_sizes_refusal, resolve_excludes

    if options.package_shapes and not infer_input_spec(loaded.module).sequence:
        raise fixed_sizes_refusal()  # before calibrating (convert checks the exported inputs too)

    excluded = resolve_excludes(loaded.module, options.exclude)
    if options.search is not None:  # a judge that cannot work fails now, not after calibrating
        from qcli.evaluate import check_folder

        check_folder(
            options.search.judge,
            SampleFolder.open(options.search.eval_dir, recipe.preprocess, what="evaluation folder"),
        )
    if stats is not None:
        source = _from_stats(loaded, Path(stats), excluded, options)
    elif calib_dir is not None:
        source = _from_folder(loaded, Path(calib_dir), excluded, options, recipe, track)
    else:  # dynamic or weight-only (checked above): the shapes are enough
        source = _from_shapes(loaded, excluded, options, recipe)
    searched = _search(loaded, source, options, recipe) if options.search is not None else None
    report = _convert(model, loaded, out, source, options, searched)
    if saved_config is not None:
        _write_config(saved_config, report.config, loaded)
        report.saved_config = str(saved_config)
    if searched is not None and not searched.met:
        raise GateFailed(_search_failure(searched, options), report=report)
    return report


def _check_convert_outputs(
    out: Path,
    options: ConvertOptions,
    save_config: Path | None,
    force: bool,
    stats: PathLike | None,
    calib_dir: PathLike | None,
) -> None:
    """Fail before any work on the inputs' combination and on outputs that cannot be written."""
    from qcli.convert import program_path

    given = sum(x is not None for x in (stats, calib_dir)) + bool(options.input_shape)
    if given > 1:
        raise OptionError("pass one of {stats}, {calib_dir} or {input_shape}: each says where the inputs come from")
    if given == 0 and options.mode == "static":
        raise OptionError(
            "static INT8 needs calibration data: pass {stats} STATS.safetensors or {calib_dir} DIR "
            "(dynamic and weight-only modes need only the input shapes: {input_shape})"
        )
    if options.input_shape and options.mode == "static":
        raise OptionError("{input_shape} is for --mode dynamic and weight-only; static INT8 needs {calib_dir} samples")
    check_output(out, force)
    if options.form == "both":
        check_output(program_path(out), force)
    if save_config is not None:
        check_output(save_config, force)


def _from_stats(
    loaded: LoadedModel, stats_path: Path, excluded: tuple[str, ...], options: ConvertOptions
) -> Calibrated:
    """The observed graph with the statistics of an earlier ``calibrate`` loaded into it."""
    require_file(stats_path, "statistics file")
    saved: Stats = load_stats(stats_path)
    spec = infer_input_spec(loaded.module)
    check_stats(saved, loaded.sha256, options.mode)
    prepared = prepare(loaded, saved.example(), spec, options.mode, excluded, options.weights)
    samples = saved.samples()
    apply_stats(prepared, saved, loaded.sha256, fill_from=samples)
    calibration = {
        **saved.meta.get("calibration", {}),
        "stats_file": stats_path.name,
        "stats_sha256": sha256_file(stats_path),
    }
    return Calibrated(prepared, calibration, samples, saved.meta.get("config", {}))


def _from_folder(
    loaded: LoadedModel,
    calib_dir: Path,
    excluded: tuple[str, ...],
    options: ConvertOptions,
    recipe: Recipe,
    track: Track,
) -> Calibrated:
    """The observed graph after a calibration pass over ``calib_dir``."""
    folder = SampleFolder.open(calib_dir, recipe.preprocess, seed=options.calibration.seed)
    result = calibrate(loaded, folder, options.calibration, exclude=excluded, weights=options.weights, track=track)
    return Calibrated(result.prepared, result.manifest, result.samples, _effective_config(recipe, options.calibration))


def _from_shapes(loaded: LoadedModel, excluded: tuple[str, ...], options: ConvertOptions, recipe: Recipe) -> Calibrated:
    """The exported graph of a dynamic or weight-only conversion, from ``--input-shape`` or the
    shapes the model file records: no samples, so no per-layer report."""
    from qcli.data import example_from_shapes

    spec = infer_input_spec(loaded.module)
    example = example_from_shapes(loaded, spec, options.input_shape)
    prepared = prepare(loaded, example, spec, options.mode, excluded, options.weights)
    shapes = [
        {"name": n, "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).replace("torch.", "")}
        for n, t in zip(spec.names, example, strict=False)
    ]
    calibration = {"samples": 0, "input_shapes": shapes}
    return Calibrated(prepared, calibration, None, _effective_config(recipe, options.calibration))


def _search(loaded: LoadedModel, source: Calibrated, options: ConvertOptions, recipe: Recipe) -> Any:
    """Run the FP32 fall-back search; when its best trial excluded other layers than the user,
    ``source.prepared`` becomes that trial's graph (same statistics)."""
    from qcli.evaluate import evaluate
    from qcli.search import Searcher, search, snapshot

    assert options.search is not None
    search_options = options.search
    folder = SampleFolder.open(search_options.eval_dir, recipe.preprocess, what="evaluation folder")
    prepared = source.prepared

    warnings: list[str] = []
    mismatch = preprocess_warning(source.config, recipe, folder, "calibration")
    warnings += [mismatch] if mismatch else []

    def evaluate_int8(converted: GraphModule) -> Any:
        accuracy = evaluate(
            loaded.module, converted, folder, prepared.spec, judge=search_options.judge, limit=search_options.eval_limit
        )
        warnings.extend(w for w in accuracy.warnings if w not in warnings)
        return accuracy

    samples = source.samples
    if samples is None and prepared.mode != "static":
        # dynamic/weight-only from input shapes alone: no calibration samples to rank the layers
        # by, so the first evaluation batch ranks them (static ranges never come from it)
        from qcli.calibrate import args_for

        batch = next(folder.batches(prepared.spec, batch_size=32, limit=32), None)
        samples = args_for(batch.inputs, prepared.spec) if batch is not None else None
    searcher = Searcher(loaded, prepared, samples, evaluate_int8, options.method, options.percentile)
    result = search(searcher, search_options)
    result.warnings = warnings
    if result.best.excluded != prepared.exclude:
        best = prepare(loaded, prepared.example, prepared.spec, prepared.mode, result.best.excluded, prepared.weights)
        apply_stats(best, snapshot(prepared, loaded), loaded.sha256, fill_from=source.samples)
        source.prepared = best
    return result


def _convert(
    model: Path, loaded: LoadedModel, out: Path, source: Calibrated, options: ConvertOptions, searched: Any
) -> ConvertReport:
    """Write the artifact and describe it."""
    from qcli.convert import Provenance, convert_model

    prepared = source.prepared
    config = {**source.config, "convert": _convert_config(source, options)}
    search = searched.to_dict(options.search.max_drop) if searched is not None and options.search else None
    compare = _DefaultMethod.of(loaded, source, options)  # its statistics, before conversion uses them
    conversion = convert_model(
        loaded, prepared, out, options, Provenance(source.calibration, config, search), source.samples
    )
    meta = conversion.metadata
    warnings = list(searched.warnings) if searched is not None else []
    method_warning = compare.warning(meta.get("per_layer")) if compare is not None else None
    warnings += [method_warning] if method_warning else []
    return ConvertReport(
        model=ModelInfo.of(model, loaded),
        outputs={form: WrittenFile.of(path) for form, path in conversion.outputs.items()},
        mode=prepared.mode,
        quantized_layers=sum(1 for la in conversion.layers if la.quantized),
        layers=conversion.layers,
        calibration_samples=source.calibration.get("samples"),
        config=config,
        per_layer=meta.get("per_layer"),
        suggested_exclude=meta.get("suggested_exclude") or [],
        search=meta.get("search"),
        bias_correction=meta.get("bias_correction"),
        speed=meta.get("speed"),
        warnings=warnings,
    )


METHOD_WARN_DB = 6.0  # a range method whose worst layer is this far under the default's is named


@dataclass
class _DefaultMethod:
    """The default range method's per-layer report on the same statistics, to tell the user when
    the method they chose is much worse (measured: entropy's worst layer at 21.9 dB where the
    default gave 31.1 on a residual CNN)."""

    loaded: LoadedModel
    source: Calibrated
    stats: Stats
    method: str  # the one the user chose

    @classmethod
    def of(cls, loaded: LoadedModel, source: Calibrated, options: ConvertOptions) -> _DefaultMethod | None:
        from qcli.options import DEFAULT_METHOD
        from qcli.search import snapshot

        if options.method == DEFAULT_METHOD or source.samples is None or source.prepared.mode != "static":
            return None
        return cls(loaded, source, snapshot(source.prepared, loaded), options.method)

    def warning(self, per_layer: list[dict[str, Any]] | None) -> str | None:
        from qcli.convert import quantize_and_measure
        from qcli.options import DEFAULT_METHOD

        chosen = _worst(per_layer)
        if chosen is None or self.source.samples is None:
            return None
        p = self.source.prepared
        fresh = prepare(self.loaded, p.example, p.spec, p.mode, p.exclude, p.weights)
        apply_stats(fresh, self.stats, self.loaded.sha256, fill_from=self.source.samples)
        default = _worst(
            quantize_and_measure(fresh, ConvertOptions(method=DEFAULT_METHOD), self.source.samples).per_layer
        )
        if default is None or chosen[1] >= default[1] - METHOD_WARN_DB:
            return None
        return (
            f"with --method {self.method} the worst layer's output SQNR is {chosen[1]:.1f} dB ({chosen[0]}), "
            f"{default[1] - chosen[1]:.1f} dB under the default {DEFAULT_METHOD}'s {default[1]:.1f} dB on the same "
            "statistics: this range method does not suit this model"
        )


def _worst(rows: list[dict[str, Any]] | None) -> tuple[str, float] | None:
    found = [(r["name"], r["output_sqnr_db"]) for r in rows or [] if r.get("output_sqnr_db") is not None]
    return min(found, key=lambda x: x[1]) if found else None


def _convert_config(source: Calibrated, options: ConvertOptions) -> dict[str, Any]:
    """The ``[convert]`` section of the effective configuration (a recipe ``--config`` reads)."""
    return {
        **(source.config.get("calibrate") or {}),
        "mode": source.prepared.mode,
        "method": options.method,
        "percentile": options.percentile if options.method == "percentile" else None,
        "exclude": list(source.prepared.exclude) or None,
        "bias_correction": options.bias_correction,
        "weights": options.weights,
        "form": options.form,
        "package_batch_sizes": list(options.package_batch_sizes),
        "package_weights": options.package_weights,
        "prefer": options.prefer,
        "threads": options.threads,
    }


def _write_config(path: Path, config: dict[str, Any], loaded: LoadedModel) -> None:
    header = (
        f"Effective configuration of `qcli convert` for {loaded.path.name} (qcli {__version__}).\n"
        "Use it again with --config; flags on the command line win."
    )
    with atomic_output(path) as tmp:
        tmp.write_text(to_toml(config, header), encoding="utf-8")


def _search_failure(searched: Any, options: ConvertOptions) -> str:
    assert options.search is not None
    best = searched.best
    return (
        f"--max-drop {options.search.max_drop:g} not met: the best trial dropped {best.drop:.2f} points with "
        f"{len(best.excluded)} layer(s) in FP32 ({searched.stopped_by}); it was written anyway"
    )


def bench_model(
    model: PathLike,
    artifact_path: PathLike | None = None,
    *,
    arch: ArchSpec | None = None,
    eval_dir: PathLike | None = None,
    calib_dir: PathLike | None = None,
    recipe: Recipe | None = None,
    options: BenchOptions | None = None,
    trust_model: bool = False,
    track: Track = identity_track,
    task: str | None = None,
) -> BenchReport:
    """``qcli bench``: FP32 eager, FP32 compiled and INT8 side by side; accuracy; gates.

    With ``options.baseline`` (an earlier report), figures that regressed beyond the tolerances
    fail the gates too (see ``qcli.baseline``). Without an artifact, the model is quantized first
    from ``calib_dir`` into a temporary file. Raises ``GateFailed`` (exit 3) after the report is
    complete; the report is its ``report``. The FP32 model is built with ``arch``; the
    architecture an artifact's metadata names is used only with ``trust_model`` (metadata is text
    anyone can edit, and importing it runs code).

    Example:
        >>> from qcli import demo
        >>> report = bench_model(demo.WEIGHTS, "digits-int8.pt2", eval_dir=demo.EVAL_DIR,
        ...                      options=BenchOptions(batch_sizes=(1, 16), max_drop=0.5))
        >>> report.gates.passed
        True
    """
    from qcli import baseline as baselines
    from qcli import bench

    model = Path(model)
    recipe, options = recipe or Recipe(), options or BenchOptions()
    if artifact_path is not None:
        recipe = _with_recorded_text(recipe, Path(artifact_path))
    recipe = folder_recipe(model, recipe)
    evaluation = Path(eval_dir) if eval_dir is not None else None
    previous = baselines.load_baseline(options.baseline) if options.baseline is not None else None
    if previous is not None:
        _check_common_ground(previous, options, evaluation is not None)
    use_threads(options.threads)
    if evaluation is not None:  # a bad pairs.csv or metric fails now, not after minutes of compiling
        from qcli.data import read_pairs
        from qcli.evaluate import check_folder

        eval_folder = SampleFolder.open(evaluation, recipe.preprocess, what="evaluation folder")
        read_pairs(eval_folder)
        check_folder(options.judge, eval_folder)
    with bench.temp_workdir() as tmp:
        workdir = Path(tmp)
        artifact, loaded = _bench_artifact(
            model, artifact_path, arch, calib_dir, recipe, options, workdir, track, trust_model, task
        )
        subjects = _bench_subjects(model, artifact, arch, loaded, options, trust_model, task)
        report = _measure(subjects, evaluation or _path(calib_dir), recipe, options, workdir)
        if evaluation is not None:
            report.accuracy = subjects.evaluate(eval_folder, options, track)
            report.warnings += report.accuracy.warnings
            mismatch = preprocess_warning(
                subjects.meta.get("config"), recipe, eval_folder, "the artifact's calibration"
            )
            report.warnings += [mismatch] if mismatch else []
    _apply_gates(report, options, previous)
    raise_for_gates(report)
    return report


def raise_for_gates(report: BenchReport) -> None:
    """GateFailed (exit 3) for a failed gate, or an undecided one counted as failed;
    GateInconclusive (exit 4) for an undecided one the user did not settle."""
    gates = report.gates
    if gates.verdict == "fail" or (gates.verdict == "inconclusive" and gates.on_inconclusive == "fail"):
        raise GateFailed("; ".join(gates.failures or gates.inconclusive), report=report)
    if gates.verdict == "inconclusive" and gates.on_inconclusive == "error":
        disturbed = any("the run was disturbed" in reason for reason in gates.inconclusive)
        advice = "measure again while nothing else runs" if disturbed else "measure longer with --time-budget"
        raise GateInconclusive(
            "; ".join(gates.inconclusive) + f" ({advice}, or settle it with --inconclusive)", report=report
        )


def _path(value: PathLike | None) -> Path | None:
    return Path(value) if value is not None else None


def _bench_artifact(
    model: Path,
    artifact_path: PathLike | None,
    arch: ArchSpec | None,
    calib_dir: PathLike | None,
    recipe: Recipe,
    options: BenchOptions,
    workdir: Path,
    track: Track,
    trust_model: bool,
    task: str | None = None,
) -> tuple[Path, LoadedModel | None]:
    """The artifact to measure: the one given, or the model quantized now from ``calib_dir``."""
    if artifact_path is not None:
        return Path(artifact_path), None
    if calib_dir is None:
        raise OptionError("pass an INT8 artifact to compare with, or {calib_dir} to quantize the model first")
    out = workdir / "int8.pt2"
    loaded = load_model(model, arch, trust_model, task)
    # a package runs one sequence length; the program any length seen in calibration
    form = "program" if infer_input_spec(loaded.module).sequence else "package"
    convert_options = ConvertOptions(form=form, package_batch_sizes=options.batch_sizes)
    convert_model_file(
        model, out, calib_dir=calib_dir, arch=arch, recipe=recipe, options=convert_options, trust_model=trust_model,
        track=track, task=task,
    )  # fmt: skip
    return out, loaded


@dataclass
class BenchSubjects:
    """What ``bench`` compares: the FP32 model and the INT8 artifact made from it."""

    model_path: Path
    artifact_path: Path
    meta: dict[str, Any]  # the artifact's metadata
    loaded: LoadedModel
    artifact: Any  # qcli.artifact.Artifact
    fp32_load: tuple[float, float] | None  # seconds, resident MiB added (None: loaded earlier)
    int8_load: tuple[float, float]

    def evaluate(self, folder: SampleFolder, options: BenchOptions, track: Track) -> Any:
        """FP32 against INT8 on an evaluation folder (``qcli.evaluate``)."""
        from qcli.evaluate import evaluate

        spec = infer_input_spec(self.loaded.module)
        return evaluate(
            self.loaded.module, self.artifact.run, folder, spec, judge=options.judge, limit=options.eval_limit,
            track=track,
        )  # fmt: skip


def preprocess_warning(recorded: Any, recipe: Recipe, folder: SampleFolder, where: str) -> str | None:
    """A warning when images or texts are read with other preprocessing than ``where`` recorded:
    almost always a forgotten or wrong ``--config`` (or ``--max-length``)."""
    from qcli.config import PreprocessConfig
    from qcli.data import IMAGE_EXTS
    from qcli.text import TEXT_EXTS, longest, padding_lengths

    before = recorded.get("preprocess") if isinstance(recorded, dict) else None
    suffixes = {p.suffix.lower() for p in folder.files}
    images, texts = bool(suffixes & set(IMAGE_EXTS)), bool(suffixes & set(TEXT_EXTS))
    if not isinstance(before, dict) or not (images or texts):
        return None
    before = {**PreprocessConfig().to_dict(), **before}  # keys added since: their defaults
    now = recipe.preprocess.to_dict()
    if texts:
        keys = {"max_length", "lengths"}
        for side in (before, now):  # unset text settings mean their defaults
            lengths = side.get("lengths")
            side["lengths"] = list(padding_lengths(side.get("max_length"), tuple(lengths) if lengths else None))
            side["max_length"] = longest(side.get("max_length"), tuple(side["lengths"]))
    else:
        keys = (set(before) | set(now)) - {"tokenizer", "max_length", "lengths"}
    changed = sorted(k for k in keys if before.get(k) != now.get(k))
    if "auto" in (before.get("channels"), now.get("channels")):  # auto follows the model: may match
        changed = [k for k in changed if k != "channels"]
    if not changed:
        return None
    shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
    what = "texts are tokenized" if texts else "images are preprocessed"
    return (
        f"the {what} differently from {where} ({shown}); pass the recipe used then "
        "with --config, or the figures judge other inputs than the model was calibrated on"
    )


def _bench_subjects(
    model: Path,
    artifact_path: Path,
    arch: ArchSpec | None,
    loaded: LoadedModel | None,
    options: BenchOptions,
    trust_model: bool,
    task: str | None = None,
) -> BenchSubjects:
    """The artifact and the FP32 model it was made from (checked by hash), both loaded."""
    from qcli import bench
    from qcli.artifact import load_artifact, read_metadata

    meta = read_metadata(artifact_path)
    source = meta.get("source") or {}
    if arch is None and source.get("arch") and loaded is None:
        if not trust_model:
            raise OptionError(
                f"artifact '{artifact_path}' was made with {{arch}} {source['arch']}; pass {{arch}} to build the FP32 "
                "model (qcli does not import code a file names), or {trust_model} if you trust the artifact"
            )
        arch = ArchSpec(source["arch"], source.get("arch_kwargs") or {})
    import torch  # noqa: F401  (imported first: its own import is not the model's loading time)

    fp32_loading = bench.Loading.start() if loaded is None else None
    if loaded is None:  # a folder's head as converted, unless --task says otherwise (a name, not code)
        loaded = load_model(model, arch, trust_model, task or source.get("task"))
    fp32_load = fp32_loading.done() if fp32_loading is not None else None
    if source.get("sha256") and source["sha256"] != loaded.sha256:
        raise OptionError(
            f"artifact '{artifact_path}' was made from another model (sha256 {source['sha256'][:12]}…); "
            "pass the FP32 model it was converted from"
        )
    bench.check_batch_sizes(meta, artifact_path, options.batch_sizes)
    int8_loading = bench.Loading.start()
    artifact = load_artifact(artifact_path, trust_model=trust_model)
    return BenchSubjects(model, artifact_path, meta, loaded, artifact, fp32_load, int8_loading.done())


def _measure(
    subjects: BenchSubjects, samples_dir: Path | None, recipe: Recipe, options: BenchOptions, workdir: Path
) -> BenchReport:
    """Latency of FP32 eager, FP32 compiled and INT8, interleaved; the report without accuracy."""
    import torch

    from qcli import bench

    meta, loaded, path = subjects.meta, subjects.loaded, subjects.artifact_path
    spec = infer_input_spec(loaded.module)
    from qcli.artifact import CompiledCache, PackageRunner, at_length

    example = bench.example_inputs(meta, spec, samples_dir, recipe.preprocess)
    runner = subjects.artifact.runner
    if isinstance(runner, PackageRunner) and runner.lengths:  # FP32 runs the length INT8 runs
        example = at_length(example, runner.specs, runner.length_for(example) or 0)
    sizes = list(options.batch_sizes)
    # compiled the way the artifact runs: a program compiles on first call unless a compile cache
    # turns it into packages (then FP32 is a package too)

    cached = isinstance(subjects.artifact.runner, CompiledCache)
    how = "program" if meta["form"] == "program" and not cached else "package"
    fp32_package, fp32_size, fp32_compiled_load = bench.compile_fp32(loaded.module, example, spec, sizes, workdir, how)
    runners = {bench.FP32_EAGER: loaded.module, bench.FP32_COMPILED: fp32_package, bench.INT8: subjects.artifact.run}
    first = bench.make_inputs(example, sizes[0])
    resources = Resources.of(
        subjects.fp32_load,
        fp32_compiled_load,
        subjects.int8_load,
        bench.first_call_ms(fp32_package, first),
        bench.first_call_ms(subjects.artifact.run, first),
    )
    from qcli import hardware

    warnings = [w for w in [bench.thread_warning(meta, torch.get_num_threads()), hardware.isa_limit_warning(meta)] if w]
    plan = bench.Plan(options.warmup, options.runs, options.precision, options.time_budget, options.min_speedup)
    timings = bench.benchmark(runners, example, sizes, plan)
    warnings += [t.noise.reason for t in timings if t.noise is not None and t.noise.reason][:1]
    badly_compiled = bench.compiled_slower_warning(timings)
    warnings += [badly_compiled] if badly_compiled else []
    inputs = {bs: bench.make_inputs(example, bs) for bs in sizes}
    slow = hardware.reference_kernel_warning(subjects.artifact.run, inputs)
    warnings += [slow] if slow else []
    return BenchReport(
        model=ModelInfo.of(subjects.model_path, loaded),
        artifact=ArtifactInfo(str(path), meta["form"], meta.get("mode"), path.stat().st_size),
        fp32_compiled_size_bytes=fp32_size,
        fp32_compiled_form=how,
        environment=bench.environment(),
        latency=timings,
        accuracy=None,
        gates=Gates(options.max_drop, options.min_speedup, on_inconclusive=options.inconclusive),
        per_layer=meta.get("per_layer"),
        suggested_exclude=meta.get("suggested_exclude") or [],
        warnings=warnings,
        resources=resources.with_peak(bench.peak_rss_mib()),
    )


def _check_common_ground(previous: BenchReport, options: BenchOptions, evaluating: bool) -> None:
    """A baseline must share a batch size or an accuracy figure with this run, or its gate would
    pass having compared nothing."""
    sizes = sorted({t.batch_size for t in previous.latency} & set(options.batch_sizes))
    if not sizes and not (evaluating and previous.accuracy is not None):
        then = ",".join(str(t.batch_size) for t in previous.latency) or "none"
        raise OptionError(
            f"baseline '{options.baseline}' has nothing in common with this run: its batch sizes are {then} "
            f"and it {'has no' if previous.accuracy is None else 'has an'} accuracy figure; bench {{batch_sizes}} "
            "it measured (and an evaluation folder if it has accuracy)"
        )


def _apply_gates(report: BenchReport, options: BenchOptions, previous: BenchReport | None) -> None:
    """Fill ``report.gates`` (and ``report.baseline``) from the options' thresholds."""
    from qcli import baseline as baselines
    from qcli import bench

    mismatch = next((w for w in report.warnings if w.startswith(bench.THREAD_MISMATCH)), None)
    failures, undecided = bench.gate_verdicts(
        report.accuracy, report.latency, options.max_drop, options.min_speedup, mismatch
    )
    report.gates.fail(failures, undecided)
    if previous is None or options.baseline is None:
        return
    rows = baselines.compare(report, previous, options.latency_tolerance, options.accuracy_tolerance)
    if not rows:
        raise OptionError(f"baseline '{options.baseline}' has no figure in common with this run to compare")
    report.warnings += baselines.environment_changes(report, previous)
    report.baseline = BaselineReport(str(options.baseline), options.latency_tolerance, options.accuracy_tolerance, rows)
    report.gates.fail(
        baselines.failures(rows, options.latency_tolerance, options.accuracy_tolerance),
        [f"baseline: {r.figure} cannot be told from the tolerance (the interval straddles it)" for r in rows
         if r.verdict == "inconclusive"],
    )  # fmt: skip


def inspect_path(
    path: PathLike, arch: ArchSpec | None = None, trust_model: bool = False, task: str | None = None
) -> InspectModelReport | InspectArtifactReport:
    """``qcli inspect``: a JSON-ready description of a model file or a qcli artifact.

    Example:
        >>> from qcli import demo
        >>> inspect_path(demo.WEIGHTS, ArchSpec.parse(demo.ARCH)).quantizable_layers
        10
    """
    from qcli.describe import describe

    path = Path(path)
    if not path.is_dir():  # a model folder is read by load_model
        require_file(path, "model")
    return describe(path, arch, trust_model, task)

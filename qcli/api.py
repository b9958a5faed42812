"""One function per command, usable from Python without the CLI; each returns a JSON-ready report.

``track`` arguments accept a callable ``(iterable, total) -> iterable`` that the CLI uses for a
progress bar; the default does nothing.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcli import __version__, engine, hardware
from qcli.calibrate import Stats, apply_stats, calibrate, check_stats, identity_track, load_stats, prepare, save_stats
from qcli.config import Recipe
from qcli.data import SampleFolder, infer_input_spec
from qcli.errors import DataError, GateFailed, QcliError
from qcli.files import atomic_output, check_output, require_file, sha256_file
from qcli.load import ArchSpec, LoadedModel, load_model

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CalibrationOptions:
    """Options shared by ``calibrate`` and ``convert --calib-dir``; checked on creation."""

    limit: int | None = None
    seed: int | None = None
    batch_size: int = 32
    mode: str = "static"

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise DataError(f"--limit must be a positive number of samples, not {self.limit}")
        if self.batch_size <= 0:
            raise DataError(f"--batch-size must be positive, not {self.batch_size}")
        if self.mode not in engine.MODES:
            raise QcliError(f"--mode must be one of {', '.join(engine.MODES)}, not '{self.mode}'")


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


def use_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count for the rest of the process (``None``: leave it)."""
    if threads is None:
        return
    if threads <= 0:
        raise QcliError(f"--threads must be positive, not {threads}")
    import torch

    torch.set_num_threads(threads)


def calibrate_model(
    model: Path,
    calib_dir: Path,
    out: Path,
    *,
    arch: ArchSpec | None = None,
    recipe: Recipe | None = None,
    options: CalibrationOptions | None = None,
    force: bool = False,
    track: Any = identity_track,
) -> dict[str, Any]:
    """``qcli calibrate``: observe the folder and write the statistics file."""
    recipe, options = recipe or Recipe(), options or CalibrationOptions()
    check_output(out, force)
    loaded = load_model(model, arch)
    folder = SampleFolder.open(calib_dir, recipe.preprocess, seed=options.seed)
    result = calibrate(
        loaded, folder, mode=options.mode, batch_size=options.batch_size, limit=options.limit, track=track
    )
    save_stats(
        out,
        result.prepared,
        {
            "model_sha256": loaded.sha256,
            "model_file": loaded.path.name,
            "calibration": result.manifest,
            "config": _effective_config(recipe, options),
        },
        result.samples,
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "calibrate",
        "model": {"path": str(model), "format": loaded.format, "sha256": loaded.sha256},
        "stats": {
            "path": str(out),
            "size_bytes": out.stat().st_size,
            "observers": len(engine.observers(result.prepared.graph)),
        },
        "samples": result.manifest["samples"],
        "mode": options.mode,
    }


def convert_model_file(
    model: Path,
    out: Path,
    *,
    stats: Path | None = None,
    calib_dir: Path | None = None,
    arch: ArchSpec | None = None,
    recipe: Recipe | None = None,
    options: CalibrationOptions | None = None,
    form: str = "package",
    package_batch_sizes: list[int] | None = None,
    force: bool = False,
    save_config: Path | None = None,
    method: str = "histogram",
    percentile: float = 99.99,
    exclude: tuple[str, ...] | list[str] = (),
    max_drop: float | None = None,
    eval_dir: Path | None = None,
    eval_limit: int | None = None,
    max_trials: int = 20,
    timeout: float | None = None,
    bias_correction: bool = False,
    weights: str = "per-channel",
    threads: int | None = None,
    track: Any = identity_track,
) -> dict[str, Any]:
    """``qcli convert``: quantize from saved statistics or a calibration folder; write the artifact.

    ``save_config`` also writes the effective configuration as a TOML recipe (the artifact's
    metadata carries the same configuration). With ``max_drop`` and ``eval_dir``, layers fall
    back to FP32 until the accuracy drop is within budget (``qcli.search``); the best artifact
    found is always written, and ``GateFailed`` (exit 3) is raised after it when the budget is
    not met.
    """
    from qcli.config import to_toml
    from qcli.convert import METHODS, convert_model, program_path, resolve_excludes

    if method not in METHODS:
        raise QcliError(f"--method must be one of {', '.join(METHODS)}, not '{method}'")
    if not 50 < percentile <= 100:
        raise QcliError(f"--percentile must be in (50, 100], not {percentile:g}")

    recipe, options = recipe or Recipe(), options or CalibrationOptions()
    package_batch_sizes = package_batch_sizes or [1, 16]
    if (stats is None) == (calib_dir is None):
        raise QcliError("pass exactly one of --stats STATS.safetensors or --calib-dir DIR")
    check_output(out, force)
    if form == "both":
        check_output(program_path(out), force)
    if save_config is not None:
        check_output(save_config, force)
    if (max_drop is None) != (eval_dir is None):
        raise QcliError("--max-drop and --eval-dir go together: the search measures accuracy on the evaluation folder")
    if max_drop is not None and max_drop < 0:
        raise QcliError(f"--max-drop must be at least 0 points, not {max_drop:g}")
    if max_trials < 1:
        raise QcliError(f"--max-trials must be at least 1, not {max_trials}")
    use_threads(threads)  # oneDNN packs weights for the thread count it compiles with
    loaded = load_model(model, arch)
    excluded = resolve_excludes(loaded.module, tuple(exclude))
    if stats is not None:
        require_file(stats, "statistics file")
        saved: Stats = load_stats(stats)
        spec = infer_input_spec(loaded.module)
        check_stats(saved, loaded.sha256, options.mode)
        prepared = prepare(loaded, saved.example(), spec, options.mode, excluded, weights)
        report_samples = saved.samples()
        apply_stats(prepared, saved, loaded.sha256, fill_from=report_samples)
        calibration = {
            **saved.meta.get("calibration", {}),
            "stats_file": stats.name,
            "stats_sha256": sha256_file(stats),
        }
        config = saved.meta.get("config", {})
    else:
        assert calib_dir is not None
        folder = SampleFolder.open(calib_dir, recipe.preprocess, seed=options.seed)
        result = calibrate(
            loaded,
            folder,
            mode=options.mode,
            batch_size=options.batch_size,
            limit=options.limit,
            exclude=excluded,
            weights=weights,
            track=track,
        )
        prepared, calibration, report_samples = result.prepared, result.manifest, result.samples
        config = _effective_config(recipe, options)
    searched = None
    if max_drop is not None and eval_dir is not None:
        searched = _search(
            loaded,
            prepared,
            excluded,
            report_samples,
            eval_dir,
            eval_limit,
            recipe,
            max_drop,
            max_trials,
            timeout,
            method,
            percentile,
        )
        if searched.best.excluded != excluded:
            best = prepare(loaded, prepared.example, prepared.spec, prepared.mode, searched.best.excluded, weights)
            from qcli.search import snapshot

            apply_stats(best, snapshot(prepared, loaded), loaded.sha256, fill_from=report_samples)
            prepared, excluded = best, searched.best.excluded
    config = {
        **config,
        "convert": {
            **(config.get("calibrate") or {}),
            "mode": prepared.mode,
            "method": method,
            "percentile": percentile if method == "percentile" else None,
            "exclude": list(excluded) or None,
            "bias_correction": bias_correction,
            "weights": weights,
            "form": form,
            "package_batch_sizes": package_batch_sizes,
            "threads": threads,
        },
    }
    conversion = convert_model(
        loaded,
        prepared,
        out,
        form=form,
        package_batch_sizes=package_batch_sizes,
        calibration=calibration,
        config=config,
        method=method,
        percentile=percentile,
        report_samples=report_samples,
        search=searched.to_dict(max_drop) if searched is not None and max_drop is not None else None,
        bias_correction=bias_correction,
    )
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "convert",
        "model": {"path": str(model), "format": loaded.format, "size_bytes": loaded.size_bytes},
        "outputs": {f: {"path": p, "size_bytes": Path(p).stat().st_size} for f, p in conversion.outputs.items()},
        "mode": prepared.mode,
        "quantized_layers": sum(1 for la in conversion.layers if la.quantized),
        "layers": [la.to_dict() for la in conversion.layers],
        "calibration_samples": calibration.get("samples"),
        "config": config,
        "saved_config": None,
        "per_layer": conversion.metadata.get("per_layer"),
        "suggested_exclude": conversion.metadata.get("suggested_exclude") or [],
        "search": conversion.metadata.get("search"),
        "bias_correction": conversion.metadata.get("bias_correction"),
    }
    if save_config is not None:
        header = f"Effective configuration of `qcli convert` for {loaded.path.name} (qcli {__version__}).\nUse it again with --config; flags on the command line win."
        with atomic_output(save_config) as tmp:
            tmp.write_text(to_toml(config, header), encoding="utf-8")
        report["saved_config"] = str(save_config)
    if searched is not None and not searched.met:
        raise GateFailed(
            f"--max-drop {max_drop:g} not met: the best trial dropped {searched.best.drop:.2f} points with "
            f"{len(searched.best.excluded)} layer(s) in FP32 ({searched.stopped_by}); it was written anyway",
            report=report,
        )
    return report


def _search(
    loaded: Any,
    prepared: Any,
    excluded: tuple[str, ...],
    samples: Any,
    eval_dir: Path,
    eval_limit: int | None,
    recipe: Recipe,
    max_drop: float,
    max_trials: int,
    timeout: float | None,
    method: str,
    percentile: float,
) -> Any:
    from qcli.evaluate import evaluate
    from qcli.search import search

    folder = SampleFolder.open(eval_dir, recipe.preprocess, what="evaluation folder")

    def evaluate_int8(converted: Any) -> Any:
        return evaluate(loaded.module, converted, folder, prepared.spec, limit=eval_limit)

    return search(
        loaded,
        prepared,
        user_excluded=excluded,
        samples=samples,
        evaluate_int8=evaluate_int8,
        max_drop=max_drop,
        max_trials=max_trials,
        timeout=timeout,
        method=method,
        percentile=percentile,
    )


def bench_model(
    model: Path,
    artifact_path: Path | None,
    *,
    arch: ArchSpec | None = None,
    eval_dir: Path | None = None,
    calib_dir: Path | None = None,
    recipe: Recipe | None = None,
    batch_sizes: list[int] | None = None,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 20,
    eval_limit: int | None = None,
    max_drop: float | None = None,
    min_speedup: float | None = None,
    baseline: Path | None = None,
    latency_tolerance: float = 0.10,
    accuracy_tolerance: float = 0.5,
    track: Any = identity_track,
) -> dict[str, Any]:
    """``qcli bench``: FP32 eager, FP32 compiled and INT8 side by side; accuracy; gates.

    With ``baseline`` (an earlier report), figures that regressed beyond the tolerances fail the
    gates too (see ``qcli.baseline``).

    Without an artifact, the model is quantized first from ``calib_dir`` into a temporary file.
    Raises ``GateFailed`` (exit 3) after the report is complete; the report is its ``report``.
    """
    import torch

    from qcli import baseline as baselines
    from qcli import bench
    from qcli.artifact import load_artifact, read_metadata
    from qcli.evaluate import evaluate

    recipe = recipe or Recipe()
    batch_sizes = batch_sizes or [1, 16]
    baselines.check_tolerances(latency_tolerance, accuracy_tolerance)
    previous = baselines.load_baseline(baseline) if baseline is not None else None
    if any(b <= 0 for b in batch_sizes):
        raise QcliError(f"--batch-sizes must be positive integers, not {batch_sizes}")
    use_threads(threads)
    if eval_dir is not None:  # a bad pairs.csv fails now, not after minutes of compiling
        from qcli.data import read_pairs

        read_pairs(SampleFolder.open(eval_dir, recipe.preprocess, what="evaluation folder"))
    loaded: LoadedModel | None = None
    with bench.temp_workdir() as tmp:
        workdir = Path(tmp)
        if artifact_path is None:
            if calib_dir is None:
                raise QcliError("pass an INT8 artifact to compare with, or --calib-dir to quantize the model first")
            artifact_path = workdir / "int8.pt2"
            loaded = load_model(model, arch)
            # a package runs one sequence length; the program any length seen in calibration
            sequence = infer_input_spec(loaded.module).sequence
            convert_model_file(
                model,
                artifact_path,
                calib_dir=calib_dir,
                arch=arch,
                recipe=recipe,
                package_batch_sizes=batch_sizes,
                form="program" if sequence else "package",
                track=track,
            )
        meta = read_metadata(artifact_path)
        source = meta.get("source") or {}
        if arch is None and source.get("arch"):
            arch = ArchSpec(source["arch"], source.get("arch_kwargs") or {})
            loaded = None  # built without the architecture the artifact names
        if loaded is None:
            loaded = load_model(model, arch)
        if source.get("sha256") and source["sha256"] != loaded.sha256:
            raise QcliError(
                f"artifact '{artifact_path}' was made from another model (sha256 {source['sha256'][:12]}…); "
                f"pass the FP32 model it was converted from"
            )
        spec = infer_input_spec(loaded.module)
        artifact = load_artifact(artifact_path)
        example = _bench_example(meta, spec, eval_dir or calib_dir, recipe)
        if meta["form"] == "package":
            compiled = sorted(int(b) for b in meta["package_models"])
            missing = [b for b in batch_sizes if b not in compiled]
            if missing:
                raise QcliError(
                    f"artifact '{artifact_path}' was compiled for batch sizes {', '.join(map(str, compiled))}; "
                    f"bench --batch-sizes within those, or convert with --package-batch-sizes {','.join(map(str, batch_sizes))}"
                )
        fp32_package, fp32_size = bench.compile_fp32_package(loaded.module, example[:2], spec, batch_sizes, workdir)

        def eager(*args: Any) -> Any:
            return loaded.module(*args)

        runners = {bench.FP32_EAGER: eager, bench.FP32_COMPILED: fp32_package, bench.INT8: artifact.run}
        warnings = [w for w in [bench.thread_warning(meta, torch.get_num_threads())] if w]
        timings = bench.benchmark(runners, example, batch_sizes, warmup=warmup, runs=runs)
        accuracy = None
        if eval_dir is not None:
            folder = SampleFolder.open(eval_dir, recipe.preprocess, what="evaluation folder")
            accuracy = evaluate(eager, artifact.run, folder, spec, limit=eval_limit, track=track)
        report = {
            "schema_version": SCHEMA_VERSION,
            "command": "bench",
            "model": {
                "path": str(model),
                "format": loaded.format,
                "size_bytes": loaded.size_bytes,
                "parameters": loaded.num_parameters,
            },
            "artifact": {
                "path": str(artifact_path),
                "form": meta["form"],
                "mode": meta.get("mode"),
                "size_bytes": artifact_path.stat().st_size,
            },
            "fp32_compiled_size_bytes": fp32_size,
            "environment": environment(),
            "latency": [t.to_dict() for t in timings],
            "accuracy": accuracy.to_dict() if accuracy else None,
            "per_layer": meta.get("per_layer"),
            "suggested_exclude": meta.get("suggested_exclude") or [],
            "warnings": warnings,
        }
    report["baseline"] = None
    report["gates"] = gates(report, accuracy, timings, max_drop, min_speedup)
    if previous is not None:
        assert baseline is not None
        rows = baselines.compare(report, previous, latency_tolerance, accuracy_tolerance)
        report["baseline"] = {
            "path": str(baseline),
            "latency_tolerance": latency_tolerance,
            "accuracy_tolerance": accuracy_tolerance,
            "comparisons": rows,
        }
        report["gates"]["failures"] += baselines.failures(rows, latency_tolerance, accuracy_tolerance)
        report["gates"]["passed"] = not report["gates"]["failures"]
    if not report["gates"]["passed"]:
        raise GateFailed("; ".join(report["gates"]["failures"]), report=report)
    return report


def _bench_example(meta: dict[str, Any], spec: Any, folder_path: Path | None, recipe: Recipe) -> tuple[Any, ...]:
    """Up to 16 real samples from the evaluation (or calibration) folder; else seeded random inputs."""
    import torch

    if folder_path is not None:
        folder = SampleFolder.open(folder_path, recipe.preprocess, seed=0, what="sample folder")
        batch = next(folder.batches(spec, batch_size=16, limit=16))
        from qcli.calibrate import args_for

        return args_for(batch.inputs, spec)
    gen = torch.Generator().manual_seed(0)
    out = []
    for item in meta.get("inputs", []):
        shape = [16, *item["shape"][1:]]
        dtype = getattr(torch, item["dtype"])
        out.append(
            torch.randn(shape, generator=gen).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
        )
    if not out:
        raise QcliError("the artifact records no input shapes; pass --eval-dir with samples")
    return tuple(out)


def environment() -> dict[str, Any]:
    import torch

    return {
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "torchao_version": engine.torchao_version(),
        "qcli_version": __version__,
        "python": platform.python_version(),
        "cpu_capability": hardware.capability(),
        "cpu_features": hardware.int8_features(),
        "machine": platform.machine(),
    }


def gates(
    report: dict[str, Any], accuracy: Any, timings: list[Any], max_drop: float | None, min_speedup: float | None
) -> dict[str, Any]:
    """Check ``--max-drop`` (points) and ``--min-speedup`` (INT8 vs FP32 compiled, every batch size)."""
    failures = []
    if max_drop is not None:
        if accuracy is None:
            failures.append("--max-drop needs --eval-dir to measure accuracy")
        elif accuracy.drop > max_drop:
            what = "top-1 accuracy" if accuracy.labeled else "top-1 agreement with FP32"
            failures.append(f"{what} dropped {accuracy.drop:.2f} points, more than --max-drop {max_drop:g}")
    if min_speedup is not None:
        for t in timings:
            ratio = t.speedup("fp32_compiled")
            if ratio is not None and ratio < min_speedup:
                failures.append(
                    f"INT8 is {ratio:.2f}x FP32 compiled at batch {t.batch_size}, under --min-speedup {min_speedup:g}"
                )
    return {"max_drop": max_drop, "min_speedup": min_speedup, "passed": not failures, "failures": failures}


def inspect_path(path: Path, arch: ArchSpec | None = None) -> dict[str, Any]:
    """``qcli inspect``."""
    from qcli.describe import describe

    require_file(path, "model")
    return describe(path, arch)

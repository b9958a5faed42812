"""Rendering of reports: Rich tables and Markdown on stdout, JSON as one document, progress on stderr."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

T = TypeVar("T")
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


def to_json(report: dict[str, Any]) -> str:
    """One JSON document; non-finite floats (SQNR of identical outputs) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(report), indent=2, sort_keys=False)


def tracker(quiet: bool, description: str) -> Any:
    """A ``track(iterable, total)`` callable for progress on stderr (stdout stays for results).

    On a terminal: a transient Rich progress bar. Otherwise (CI logs, pipes): plain lines that a
    script can parse, one per tenth of the work, ``qcli: calibrating: 64/256 samples (25%)``.
    ``quiet`` shows neither.
    """

    def track(items: Iterable[T], total: int | None) -> Iterator[T]:
        if quiet:
            yield from items
            return
        if not sys.stderr.isatty():
            yield from plain_progress(items, total, description)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        ) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task, _count(item))

    return track


def _count(item: Any) -> int:
    files = getattr(item, "files", None)
    return len(files) if files is not None else 1


def plain_progress(items: Iterable[T], total: int | None, description: str, step: int = 10) -> Iterator[T]:
    """Yield ``items``; print a line each time another ``step`` percent is done (every 10 items
    when the total is unknown), and a last line with the count."""
    done, shown, next_mark = 0, -1, step
    for calls, item in enumerate(items, start=1):
        yield item
        done += _count(item)
        if total and done > total:  # the total counted files, and some file held several samples
            total = None
        if total:
            percent = min(100, done * 100 // total)
            if percent >= next_mark and percent < 100:
                print(f"qcli: {description}: {done}/{total} samples ({percent}%)", file=sys.stderr, flush=True)
                shown = done
                next_mark = (percent // step + 1) * step
        elif calls % 10 == 0:
            print(f"qcli: {description}: {done} samples", file=sys.stderr, flush=True)
            shown = done
    if done and done != shown:
        suffix = f"/{total} samples (100%)" if total and done == total else " samples, done"
        print(f"qcli: {description}: {done}{suffix}", file=sys.stderr, flush=True)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    return table


def emit(
    tables: list[tuple[str, list[str], list[list[str]]]], lines: list[str], fmt_name: str, console: Console = stdout
) -> None:
    """Print titled tables and free lines as a Rich table or as Markdown."""
    if fmt_name == "markdown":
        parts = []
        for title, headers, rows in tables:
            parts.append(f"### {title}\n\n{markdown_table(headers, rows)}")
        parts += lines
        console.print("\n\n".join(parts), markup=False, highlight=False)
        return
    for title, headers, rows in tables:
        console.print(rich_table(title, headers, rows))
    for line in lines:
        console.print(line, markup=False, highlight=False)


# --- per-command views ---------------------------------------------------------------------------


def bench_tables(report: dict[str, Any]) -> tuple[list[tuple[str, list[str], list[list[str]]]], list[str]]:
    env = report["environment"]
    rows = []
    for entry in report["latency"]:
        v = entry["variants"]
        for name in ("fp32_eager", "fp32_compiled", "int8"):
            if name in v:
                lat = v[name]
                ratio = entry["speedup_vs_fp32_compiled"] if name == "int8" else None
                rows.append(
                    [
                        str(entry["batch_size"]),
                        name,
                        fmt(lat["p50_ms"], 3),
                        fmt(lat["p90_ms"], 3),
                        fmt(lat["throughput"], 1),
                        fmt(ratio, 2, "x"),
                    ]
                )
    tables = [
        (
            f"Latency ({env['threads']} threads, {env['cpu_capability']}, torch {env['torch_version']})",
            ["batch", "variant", "p50 ms", "p90 ms", "samples/s", "INT8 vs FP32 compiled"],
            rows,
        )
    ]
    acc = report.get("accuracy")
    if acc:
        arows = []
        if acc["labeled"]:
            arows.append(
                [
                    "top-1 %",
                    fmt(acc["fp32_top1"]),
                    fmt(acc["int8_top1"]),
                    fmt(_diff(acc["int8_top1"], acc["fp32_top1"]), 2),
                ]
            )
            arows.append(
                [
                    "top-5 %",
                    fmt(acc["fp32_top5"]),
                    fmt(acc["int8_top5"]),
                    fmt(_diff(acc["int8_top5"], acc["fp32_top5"]), 2),
                ]
            )
        arows.append(["top-1 agreement %", "100.00", fmt(acc["top1_agreement"]), "-"])
        arows.append(["SQNR dB", "-", fmt(acc["sqnr_db"], 1), "-"])
        arows.append(["cosine", "1.0000", fmt(acc["cosine"], 4), "-"])
        if acc.get("pairs"):
            arows.append(
                [
                    f"Spearman ({acc['pairs']} pairs)",
                    fmt(acc["fp32_spearman"], 4),
                    fmt(acc["int8_spearman"], 4),
                    fmt(_diff(acc["int8_spearman"], acc["fp32_spearman"]), 4),
                ]
            )
        tables.append((f"Accuracy on {acc['samples']} samples", ["metric", "FP32", "INT8", "change"], arows))
    sizes = [
        ["FP32 model file", fmt_bytes(report["model"]["size_bytes"])],
        ["FP32 compiled package", fmt_bytes(report.get("fp32_compiled_size_bytes"))],
        [f"INT8 artifact ({report['artifact']['form']})", fmt_bytes(report["artifact"]["size_bytes"])],
    ]
    tables.append(("Sizes", ["file", "size"], sizes))
    base = report.get("baseline")
    if base:
        brows = [
            [
                r["figure"],
                fmt(float(r["baseline"]), 3),
                fmt(float(r["current"]), 3),
                f"{r['change'] * 100:+.1f}%" if r.get("unit") == "%" else f"{r['change']:+.2f} points",
                "REGRESSED" if r["regressed"] else "ok",
            ]
            for r in base["comparisons"]
        ]
        tables.append((f"Against baseline {base['path']}", ["figure", "baseline", "now", "change", "verdict"], brows))
    lines = []
    if report.get("report_html"):
        lines.append(f"HTML report: {report['report_html']}")
    gates = report.get("gates") or {}
    if gates.get("failures"):
        lines += [f"GATE FAILED: {f}" for f in gates["failures"]]
    elif gates.get("max_drop") is not None or gates.get("min_speedup") is not None:
        lines.append("gates passed")
    return tables, lines


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def inspect_tables(report: dict[str, Any]) -> tuple[list[tuple[str, list[str], list[list[str]]]], list[str]]:
    if report["kind"] == "artifact":
        src = report.get("source") or {}
        wb = report["written_by"]
        summary = [
            ["format", f"{report['format']} v{report['format_version']} ({report['form']})"],
            ["size", fmt_bytes(report["size_bytes"])],
            ["mode / method", f"{report['mode']} / {report['method']}"],
            ["source", f"{src.get('file')} ({src.get('format')}, sha256 {str(src.get('sha256'))[:12]}…)"],
            ["inputs", ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in report.get("inputs") or [])],
            ["outputs", ", ".join(f"{o['shape']} {o['dtype']}" for o in report.get("outputs") or [])],
            [
                "calibration",
                f"{report['calibration'].get('samples')} samples from {report['calibration'].get('files')} files in '{report['calibration'].get('root')}'",
            ],
            ["written by", f"qcli {wb['qcli_version']}, torch {wb['torch_version']}, torchao {wb['torchao_version']}"],
        ]
        if report.get("compiled_for"):
            summary.append(
                ["compiled for", f"{report['compiled_for']['isa']} ({report['compiled_for']['cpu_capability']})"]
            )
        layers = [
            [
                la["name"],
                la["op"],
                la["weight_dtype"] or "-",
                fmt(la["weight_scale_min"], 6),
                fmt(la["weight_scale_max"], 6),
                fmt(la["input_scale"], 6),
                fmt(la["input_zero_point"]),
            ]
            for la in report["layers"]
        ]
        return (
            [
                ("INT8 artifact", ["field", "value"], summary),
                (
                    f"Layers ({report['quantized_layers']} quantized)",
                    ["layer", "type", "weights", "w scale min", "w scale max", "in scale", "in zp"],
                    layers,
                ),
                hardware_table(report["cpu"]),
            ],
            hardware_lines(report["cpu"]),
        )
    summary = [
        ["format", report["format"]],
        ["size", fmt_bytes(report["size_bytes"])],
        ["parameters", f"{report['parameters']:,}"],
        [
            "inputs",
            ", ".join(
                f"{i['name']} (rank {i['rank'] if i['rank'] is not None else '?'}"
                + (f", {i['channels']} channels)" if i.get("channels") else ")")
                for i in report["inputs"]
            ),
        ],
        ["quantizable layers", str(report["quantizable_layers"])],
    ]
    layers = [
        [
            la["name"] or "(root)",
            la["type"],
            str(la["weight_shape"] or "-"),
            f"{la['parameters']:,}",
            "INT8" if la["quantized_static"] else ("folded" if la.get("folded") else "FP32"),
        ]
        for la in report["layers"]
    ]
    return (
        [
            ("Model", ["field", "value"], summary),
            ("Layers", ["layer", "type", "weight shape", "params", "static mode"], layers),
            hardware_table(report["cpu"]),
        ],
        [f"note: {n}" for n in report["notes"]] + hardware_lines(report["cpu"]),
    )


def hardware_table(cpu: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """This machine's INT8 capabilities as a table."""

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = [
        ["vector ISA torch uses", cpu["capability"]],
        ["AVX2", yes(cpu["avx2"])],
        ["AVX-512", yes(cpu["avx512"])],
        ["VNNI (INT8 dot product)", yes(cpu["vnni"])],
        ["AMX (INT8 tiles)", yes(cpu["amx"])],
        ["INT8 dot-product units", ", ".join(cpu["int8_dot_product"]) or "none"],
        ["quantized engine", cpu["quantized_engine"]],
    ]
    return ("This CPU", ["capability", "value"], rows)


def hardware_lines(cpu: dict[str, Any]) -> list[str]:
    return [f"warning: {cpu['warning']}"] if cpu.get("warning") else []


def per_layer_table(
    rows: list[dict[str, Any]] | None, suggested: list[str]
) -> tuple[list[tuple[str, list[str], list[list[str]]]], list[str]]:
    """The per-layer error report, worst first, and the suggested exclusions."""
    if not rows:
        return [], ["per-layer report: not available (the artifact was made without calibration samples)"]
    table = [
        [
            r["name"],
            r["op"],
            fmt(r["output_sqnr_db"], 1),
            fmt(r["weight_sqnr_db"], 1),
            "-" if r["input_range"] is None else f"[{r['input_range'][0]:.3g}, {r['input_range'][1]:.3g}]",
        ]
        for r in rows
    ]
    lines = []
    if suggested:
        lines.append("suggested: " + " ".join(f"--exclude {name}" for name in suggested) + " (output SQNR under 20 dB)")
    else:
        lines.append("no layer is under 20 dB output SQNR; nothing to suggest excluding")
    title = "Per-layer error on calibration samples, worst first (output SQNR includes earlier layers' error)"
    return [(title, ["layer", "type", "output SQNR dB", "weight SQNR dB", "input range"], table)], lines

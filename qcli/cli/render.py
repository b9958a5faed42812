"""Rendering of reports: Rich tables and Markdown on stdout, JSON as one document, progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table as RichTable

from qcli.tables import Table, fmt, fmt_bytes

T = TypeVar("T")
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


def to_json(report: Any) -> str:
    """One JSON document of a report (a ``qcli.reports`` object or a dict); non-finite floats
    (SQNR of identical outputs) become null."""
    from qcli.reports import plain

    document = report.to_dict() if hasattr(report, "to_dict") else report
    return json.dumps(plain(document), indent=2, sort_keys=False)


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


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> RichTable:
    table = RichTable(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    return table


def emit(tables: list[Table], lines: list[str], fmt_name: str, console: Console = stdout) -> None:
    """Print titled tables and free lines as a Rich table or as Markdown."""
    if fmt_name == "markdown":
        parts = [f"### {t.title}\n\n{markdown_table(t.headers, t.rows)}" for t in tables]
        parts += lines
        console.print("\n\n".join(parts), markup=False, highlight=False)
        return
    for t in tables:
        console.print(rich_table(t.title, t.headers, t.rows))
    for line in lines:
        console.print(line, markup=False, highlight=False)


# --- per-command views ---------------------------------------------------------------------------


def inspect_tables(report: dict[str, Any]) -> tuple[list[Table], list[str]]:
    if report["kind"] == "artifact":
        return artifact_tables(report)
    return model_tables(report)


def artifact_tables(report: dict[str, Any]) -> tuple[list[Table], list[str]]:
    src = report.get("source") or {}
    wb = report["written_by"]
    summary = [
        ["format", f"{report['format']} v{report['format_version']} ({report['form']})"],
        ["size", fmt_bytes(report["size_bytes"])],
        ["mode / method", f"{report['mode']} / {report['method']}"],
        ["source", f"{src.get('file')} ({src.get('format')}, sha256 {str(src.get('sha256'))[:12]}…)"],
        ["inputs", ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in report.get("inputs") or [])],
        ["outputs", ", ".join(f"{o['shape']} {o['dtype']}" for o in report.get("outputs") or [])],
        ["calibration", _calibration_text(report.get("calibration") or {})],
        ["written by", f"qcli {wb['qcli_version']}, torch {wb['torch_version']}, torchao {wb['torchao_version']}"],
    ]
    if report.get("compiled_for"):
        summary.append(
            ["compiled for", f"{report['compiled_for']['isa']} ({report['compiled_for']['cpu_capability']})"]
        )
        shapes = report["compiled_for"].get("shapes") or []
        if shapes:
            what = "batch x length" if "x" in shapes[0] else "batch sizes"
            summary.append([f"compiled shapes ({what})", ", ".join(shapes)])
        shared = report["compiled_for"].get("shared_weights") or []
        if shared:
            summary.append(["weights shared", f"{', '.join(shared)} read the default model's (qcli's loader only)"])
        for shape, names in (report["compiled_for"].get("fp32_for_speed") or {}).items():
            summary.append([f"FP32 for speed at {shape}", ", ".join(names)])
        for shape, names in (report["compiled_for"].get("matmul_for_speed") or {}).items():
            summary.append([f"INT8 matrix products at {shape}", ", ".join(names)])
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
            Table("INT8 artifact", ["field", "value"], summary),
            Table(
                f"Layers ({report['quantized_layers']} quantized)",
                ["layer", "type", "weights", "w scale min", "w scale max", "in scale", "in zp"],
                layers,
            ),
            hardware_table(report["cpu"]),
        ],
        hardware_lines(report["cpu"]),
    )


def model_tables(report: dict[str, Any]) -> tuple[list[Table], list[str]]:
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
            Table("Model", ["field", "value"], summary),
            Table("Layers", ["layer", "type", "weight shape", "params", "static mode"], layers),
            hardware_table(report["cpu"]),
        ],
        [f"note: {n}" for n in report["notes"]] + hardware_lines(report["cpu"]),
    )


def hardware_table(cpu: dict[str, Any]) -> Table:
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
    return Table("This CPU", ["capability", "value"], rows)


def hardware_lines(cpu: dict[str, Any]) -> list[str]:
    return [f"warning: {cpu['warning']}"] if cpu.get("warning") else []


def per_layer_table(rows: list[dict[str, Any]] | None, suggested: list[str]) -> tuple[list[Table], list[str]]:
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
    return [Table(title, ["layer", "type", "output SQNR dB", "weight SQNR dB", "input range"], table)], lines


def speed_table(shapes: list[dict[str, Any]]) -> tuple[list[Table], list[str]]:
    """``--prefer speed``: each layer's kernel time per compiled shape (INT8 / FP32 µs, ``*`` where
    the shape keeps it FP32, ``mm`` where it computes it as an INT8 matrix product), and a line per
    shape with what was chosen and why."""
    from qcli import speed

    def label(shape: dict[str, Any]) -> str:
        return f"batch {shape['batch']}" + (f" x {shape['length']}" if shape.get("length") else "")

    names = list(dict.fromkeys(t["name"] for shape in shapes for t in shape["layers"]))
    rows = []
    for name in names:
        row = [name]
        for shape in shapes:
            t = next((t for t in shape["layers"] if t["name"] == name), None)
            cell = "" if t is None else f"{fmt(t['int8_us'], 0)} / {fmt(t['fp32_us'], 0)}"
            row.append(
                cell
                + (" *" if name in shape["fp32_layers"] else "")
                + (" mm" if name in shape.get("matmul_layers", []) else "")
            )
        rows.append(row)
    headers = ["layer", *(f"{label(s)}: INT8 / FP32 µs" for s in shapes)]
    lines = []
    for shape in shapes:
        tried = [
            f"{speed.describe(a['fp32_layers'], a.get('matmul_layers', []), shape.get('max_pools', []))}: "
            f"{a['speedup']['value']:.2f}x [{a['speedup']['low']:.2f}, "
            f"{a['speedup']['high']:.2f}] ({a['int8_ms']:.3f} -> {a['mixed_ms']:.3f} ms)"
            for a in shape["attempts"]
        ]
        lines.append(f"{label(shape)}: {shape['verdict']}" + (f" ({'; '.join(tried)})" if tried else ""))
        lines += [f"{label(shape)}: {error}" for error in shape.get("errors") or []]
    title = "--prefer speed: kernel time per call (* kept FP32, mm as an INT8 matrix product)"
    return [Table(title, headers, rows)], lines


def say(line: str) -> None:
    """One plain line of results on stdout (no Rich markup or highlighting)."""
    stdout.print(line, markup=False, highlight=False)


def _calibration_text(calibration: dict[str, Any]) -> str:
    """Where the artifact's inputs came from: samples of a folder, or shapes alone."""
    shapes = calibration.get("input_shapes")
    if shapes:
        given = ", ".join(f"{s['name']} {'x'.join(map(str, s['shape']))} {s['dtype']}" for s in shapes)
        return f"none (dynamic/weight-only from input shapes: {given})"
    return f"{calibration.get('samples')} samples from {calibration.get('files')} files in '{calibration.get('root')}'"

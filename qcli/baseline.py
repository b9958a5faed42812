"""``bench --baseline``: compare a bench report with a stored earlier one and name what regressed.

Compared figures (only those present in both reports):

- per batch size, INT8 median latency (``int8 p50 ms``): regressed when it rose by more than the
  latency tolerance (a fraction, 0.10 = 10%);
- per batch size, INT8 speed-up over FP32 compiled: regressed when it fell by more than the same
  fraction (machine noise moves both variants, so the ratio is the steadier figure);
- INT8 top-1 accuracy (labeled folders) or top-1 agreement with FP32 (unlabeled): regressed when it
  fell by more than the accuracy tolerance, in points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qcli.errors import ConfigError, QcliError

SCHEMA_VERSION = 1


def load_baseline(path: Path) -> dict[str, Any]:
    """Read a report written by ``qcli bench --format json`` (or ``-o``); clear errors otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QcliError(f"baseline '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QcliError(f"baseline '{path}' is not a JSON report ({exc})") from None
    if not isinstance(data, dict) or data.get("command") != "bench":
        raise QcliError(f"baseline '{path}' is not a `qcli bench` report; write one with `qcli bench -o FILE`")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise QcliError(
            f"baseline '{path}' has schema_version {data.get('schema_version')!r}; this qcli writes {SCHEMA_VERSION}"
        )
    return data


def check_tolerances(latency: float, accuracy: float) -> None:
    if not 0 <= latency < 10:
        raise ConfigError(f"--latency-tolerance is a fraction (0.1 = 10%), not {latency:g}")
    if not 0 <= accuracy <= 100:
        raise ConfigError(f"--accuracy-tolerance is in points (0-100), not {accuracy:g}")


def compare(
    current: dict[str, Any], baseline: dict[str, Any], latency_tolerance: float, accuracy_tolerance: float
) -> list[dict[str, Any]]:
    """One entry per compared figure: baseline and current values, the change, and the verdict."""
    rows: list[dict[str, Any]] = []
    old_by_batch = {e["batch_size"]: e for e in baseline.get("latency") or []}
    for entry in current.get("latency") or []:
        old = old_by_batch.get(entry["batch_size"])
        if old is None:
            continue
        b = entry["batch_size"]
        now_ms, then_ms = entry["variants"]["int8"]["p50_ms"], old["variants"]["int8"]["p50_ms"]
        rise = now_ms / then_ms - 1
        rows.append(_row(f"int8 p50 ms at batch {b}", then_ms, now_ms, rise, rise > latency_tolerance, "%"))
        now_x, then_x = entry.get("speedup_vs_fp32_compiled"), old.get("speedup_vs_fp32_compiled")
        if now_x and then_x:
            fall = now_x / then_x - 1
            rows.append(
                _row(f"speedup vs FP32 compiled at batch {b}", then_x, now_x, fall, -fall > latency_tolerance, "%")
            )
    acc_now, acc_then = current.get("accuracy"), baseline.get("accuracy")
    if acc_now and acc_then and acc_now.get("labeled") == acc_then.get("labeled"):
        key, label = ("int8_top1", "int8 top-1 %") if acc_now["labeled"] else ("top1_agreement", "top-1 agreement %")
        if acc_now.get(key) is not None and acc_then.get(key) is not None:
            change = acc_now[key] - acc_then[key]
            rows.append(_row(label, acc_then[key], acc_now[key], change, -change > accuracy_tolerance, "points"))
    return rows


def _row(figure: str, baseline: float, current: float, change: float, regressed: bool, unit: str) -> dict[str, Any]:
    return {
        "figure": figure,
        "baseline": baseline,
        "current": current,
        "change": change,
        "unit": unit,
        "regressed": regressed,
    }


def failures(rows: list[dict[str, Any]], latency_tolerance: float, accuracy_tolerance: float) -> list[str]:
    """One sentence per regressed figure, naming it, its values and the tolerance it broke."""
    out = []
    for r in rows:
        if not r["regressed"]:
            continue
        if r["unit"] == "%":
            direction = "rose" if r["change"] > 0 else "fell"
            out.append(
                f"baseline: {r['figure']} {direction} {abs(r['change']) * 100:.1f}% "
                f"({r['baseline']:.3g} -> {r['current']:.3g}; --latency-tolerance {latency_tolerance:g})"
            )
        else:
            out.append(
                f"baseline: {r['figure']} fell {-r['change']:.2f} points "
                f"({r['baseline']:.2f} -> {r['current']:.2f}; --accuracy-tolerance {accuracy_tolerance:g})"
            )
    return out

"""The bench document as Markdown: the machine, one table row per benchmark, the builds."""

from __future__ import annotations

from typing import Any

__all__ = ["fmt_value", "to_markdown"]

_MiB = 1024 * 1024


def fmt_value(value: float | None, unit: str) -> str:
    """0.0123 s -> '12.3 ms'; 5242880 bytes -> '5.00 MiB'; None -> '—'."""
    if value is None:
        return "—"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.3f} s"
    if unit == "bytes":
        return f"{value / _MiB:.2f} MiB"
    return f"{value:g} {unit}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _side(side: dict[str, Any], unit: str) -> str:
    if side.get("error"):
        return _cell(f"{side['label']}: error: {side['error'][:160]}")
    return f"{side['label']}: {fmt_value(side['median'], unit)} (n={side['n']})"


def _ratio(row: dict[str, Any]) -> str:
    ratio = row["ratio"]
    if ratio is None:
        return "—"
    text = f"{ratio:.3f} ({row['change_pct']:+.1f}%)"
    paired = row.get("paired_ratio_median")
    return text if paired is None else f"{text}; paired {paired:.3f}"


def _met(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return "info"
    budget = row.get("extra", {}).get("budget_s")  # an absolute budget: baseline = budget
    target = f"≤ {budget:g} s" if budget else f"≤ {row['target']['max_ratio']:g}"
    verdict = {True: "met", False: "**missed**", None: "not measured"}[row["met"]]
    return f"{target}: {verdict}"


def _machine(doc: dict[str, Any]) -> list[str]:
    m, s = doc["machine"], doc["settings"]
    ram = m.get("ram_bytes")
    v = m.get("versions", {})
    load = doc.get("load_average", {})
    return [
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m.get('usable_cores')} usable), "
        f"{(ram or 0) / 1024**3:.1f} GiB RAM, {m['os']}",
        f"- Python {m['python']}, torch {v.get('torch')}, diffusers {v.get('diffusers')}, "
        f"torchinfo {v.get('torchinfo')}, shapetrace {v.get('shapetrace')}",
        f"- Date {m['date']}; mode `{doc['mode']}`; torch threads {s['threads']}; "
        f"{'a fresh worker process per measurement' if s['isolated'] else 'one shared worker'}; "
        f"run took {doc['duration_s']:.0f} s",
        f"- Load average (1, 5, 15 min) at start {load.get('start')}, at end {load.get('end')}: "
        "other jobs shared the machine, so samples are interleaved (ABBA) and medians reported",
    ]


def to_markdown(doc: dict[str, Any]) -> str:
    """The whole report, ending in a newline."""
    lines = ["# shapetrace benchmarks", "", *_machine(doc), ""]
    summary = doc["summary"]
    lines.append(
        f"Targets met: {summary['met']} of {summary['targets']}"
        + (f"; missed: {', '.join(summary['missed'])}" if summary["missed"] else "")
        + (f"; not measured: {', '.join(summary['unmeasured'])}" if summary["unmeasured"] else "")
    )
    lines += [
        "",
        "Ratio = median(subject) / median(baseline); *paired* is the median of the per-pair "
        "ratios of interleaved samples. No absolute time is a pass/fail.",
        "",
        "| id | benchmark | subject (median) | baseline (median) | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    group = None
    for row in doc["benchmarks"]:
        if row["group"] != group:
            group = row["group"]
            lines.append(f"| | **{_cell(group)}** | | | | |")
        unit = row["unit"]
        lines.append(
            f"| `{row['id']}` | {_cell(row['title'])} | {_side(row['subject'], unit)} | "
            f"{_side(row['baseline'], unit)} | {_ratio(row)} | {_met(row)} |"
        )
    lines += ["", "## Builds (timed apart, excluded from the samples above)", ""]
    lines += ["| what | median | samples |", "|---|---|---|"]
    for b in doc["builds"]:
        samples = ", ".join(f"{x:.2f}" for x in b["samples"])
        lines.append(f"| {_cell(b['what'])} | {fmt_value(b['median'], 's')} | {samples} s |")
    by_note: dict[str, list[str]] = {}
    for r in doc["benchmarks"]:
        if r.get("note"):
            by_note.setdefault(r["note"], []).append(f"`{r['id']}`")
    notes = [f"- {', '.join(ids)}: {_cell(note)}" for note, ids in by_note.items()]
    if notes:
        lines += ["", "## Notes", "", *notes]
    if doc["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- {e['task']} {e['args']}: {_cell(e['error'][:300])}" for e in doc["errors"]]
    return "\n".join(lines) + "\n"

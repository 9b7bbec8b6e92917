"""Benchmark 6: what a check costs a user's CI, under the ``ci`` profile, one torch thread.

Timed: ``check_attention_module`` on a correct module (shapetrace's SDPA cross-attention),
``check_attn_processor`` on a correct processor of each kind (diffusers' ``AttnProcessor2_0``
on the nine standard ``Attention`` configurations, ``AttnAddedKVProcessor`` on the three
added-KV ones). A correct subject is the dear case: a wrong one stops at its first failing
invariant. Each is set against its budget (5 s a module, 15 s a processor, issue #9).
"""

from __future__ import annotations

from typing import Any

from benchmarks._probes import timed
from benchmarks._settings import Settings
from benchmarks._stats import Series, Target, compare

__all__ = ["BUDGETS", "rows", "specs", "time_task"]

GROUP = "6. Checking attention code (ci profile)"

BUDGETS: dict[str, tuple[str, float]] = {
    "module": ("check_attention_module(SDPACrossAttention)", 5.0),
    "processor": ("check_attn_processor(AttnProcessor2_0), 9 configurations", 15.0),
    "added_kv_processor": ("check_attn_processor(AttnAddedKVProcessor), 3 configurations", 15.0),
}
"""Each subject: what runs, and the seconds it may take."""


def _subject(which: str) -> Any:
    """The check to time, as a function of nothing."""
    from diffusers.models.attention_processor import AttnAddedKVProcessor, AttnProcessor2_0

    from shapetrace.testing import check_attention_module, check_attn_processor
    from shapetrace.testing.implementations import SDPACrossAttention

    return {
        "module": lambda: check_attention_module(SDPACrossAttention),
        "processor": lambda: check_attn_processor(AttnProcessor2_0),
        "added_kv_processor": lambda: check_attn_processor(AttnAddedKVProcessor),
    }[which]


def time_task(args: dict[str, Any]) -> dict[str, Any]:
    """Wall and CPU seconds of ``args["reps"]`` checks of ``args["subject"]`` under ``ci``,
    after ``args["warmup"]`` untimed ones (first-call caches)."""
    from shapetrace.testing import profiles

    profiles.load_profile("ci")
    run = _subject(args["subject"])
    warm = [timed(run)[0].wall for _ in range(args["warmup"])]
    samples: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(args["reps"]):
        t, _ = timed(run)
        samples["wall"].append(t.wall)
        samples["cpu"].append(t.cpu)
    return {"samples": samples, "facts": {"warm_up_s": warm}}


def specs(s: Settings) -> list[dict[str, Any]]:
    """One timing task per subject."""
    return [
        {
            "task": "checker_time",
            "args": {"subject": subject, "reps": s.checker_reps, "warmup": s.checker_warmup},
        }
        for subject in BUDGETS
    ]


def rows(s: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 4's rows: each check's wall time against its budget, and its CPU time."""
    out: list[dict[str, Any]] = []
    for result in results:
        subject = result.get("args", {}).get("subject", "?")
        label, budget = BUDGETS.get(subject, (subject, 0.0))
        error = result.get("error")
        samples = result.get("samples", {})
        for clock in ("wall", "cpu"):
            timed_side = Series(label, list(samples.get(clock, [])), error)
            budget_side = Series(f"budget {budget:g} s", [budget])
            out.append(
                compare(
                    f"checker_{subject}_{clock}",
                    f"{clock} time of {label}, a correct subject",
                    timed_side,
                    budget_side,
                    unit="s",
                    group=GROUP,
                    target=Target(1.0, f"under {budget:g} s") if clock == "wall" else None,
                    note=f"{s.checker_reps} run(s) after {s.checker_warmup} untimed, ci profile, "
                    "one torch thread; a wrong subject stops at its first failing invariant",
                    extra={"budget_s": budget, **result.get("facts", {})},
                )
            )
    return out

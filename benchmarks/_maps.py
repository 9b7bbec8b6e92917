"""Benchmark 3: per-token map capture over a denoising loop, as a researcher runs it
(``shapetrace.maps.pipeline.denoise`` with an ``AttentionStore``, classifier-free guidance).

Memory: peak RSS above the start of the loop, few steps against many, a fresh process per
sample (the store keeps running sums, so it should stay flat). Time: captured against
uncaptured loops of the same steps, interleaved.
"""

from __future__ import annotations

from typing import Any

from benchmarks._interleave import interleave
from benchmarks._probes import rss_peak, timed
from benchmarks._settings import Settings
from benchmarks._stats import Series, Target, compare

__all__ = ["memory_task", "rows", "specs", "time_task"]

GROUP = "3. Map capture over denoising steps"
FLAT = Target(1.10, "many steps cost at most 10% more peak memory than one")


def _loop(args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Build the chain; a function running the loop (with or without a store) and facts."""
    from shapetrace.maps import AttentionStore
    from shapetrace.maps.pipeline import build_chain, denoise

    t, chain = timed(lambda: build_chain(args["model"], seed=0))

    def run(steps: int, capture: bool) -> tuple[Any, Any]:
        store = AttentionStore.for_batch(1, guidance=args["guidance"] > 1) if capture else None
        result = denoise(
            chain, args["prompt"], steps=steps, height=args["height"], width=args["width"],
            guidance=args["guidance"], seed=0, store=store,
        )
        return result, store

    return run, {"build_s": t.wall}


def memory_task(args: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the start of one loop of ``args["steps"]`` steps, captured into a store
    or not (``args["capture"]``), after a 1-step warm-up of the same kind."""
    from shapetrace.maps import estimate_memory

    run, facts = _loop(args)
    capture = bool(args["capture"])
    run(1, capture)  # warm-up: lazy imports, tokenizer, first-call caches
    peak, (result, store) = rss_peak(lambda: run(args["steps"], capture))
    facts.update(forwards=len(result.timesteps), seconds=result.seconds)
    if store is not None:
        batch = 2 if args["guidance"] > 1 else 1
        estimate = estimate_memory(store, result.layers, batch=batch)
        facts.update(
            store_bytes=store.nbytes(), maps=len(store.entries),
            estimate_running=estimate.running, estimate_scratch=estimate.scratch,
        )
    return {"rss_delta": peak.delta, "hwm": peak.hwm, "facts": facts}


def time_task(args: dict[str, Any]) -> dict[str, Any]:
    """Interleaved captured/uncaptured loops of ``args["steps"]`` steps."""
    run, facts = _loop(args)
    steps = args["steps"]
    captured, plain = interleave(
        lambda: run(steps, True), lambda: run(steps, False), pairs=args["pairs"], warmup=1
    )
    return {"captured": captured, "uncaptured": plain, "facts": facts}


def specs(s: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Memory tasks (captured and, as a control, uncaptured; few and many steps, alternating)
    and one timing task."""
    h, w = s.maps_size
    base = {"model": s.maps_model, "height": h, "width": w, "prompt": s.prompt,
            "guidance": s.guidance}
    memory = [
        {"task": "maps_memory", "args": {**base, "steps": steps, "capture": capture},
         "env": dict(s.memory_env)}
        for _ in range(s.maps_memory_reps)
        for capture in (True, False)
        for steps in s.maps_steps
    ]
    timing = [{"task": "maps_time",
               "args": {**base, "steps": s.maps_time_steps, "pairs": s.maps_time_pairs}}]
    return memory, timing


def _side(results: list[dict[str, Any]], key: str, label: str) -> Series:
    error = next((r["error"] for r in results if r.get("error")), None)
    return Series(label, [float(r[key]) for r in results if r.get(key) is not None], error)


def _pick(memory: list[dict[str, Any]], steps: int, capture: bool) -> list[dict[str, Any]]:
    return [
        r for r in memory
        if r.get("args", {}).get("steps") == steps and r.get("args", {}).get("capture") is capture
    ]


def _steps(n: int) -> str:
    return f"{n} step" + ("s" if n != 1 else "")


def _memory_rows(s: Settings, memory: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Peak RSS: captured many/few steps (the target), the same uncaptured (the control),
    and captured/uncaptured at many steps (what capture itself costs)."""
    few, many = s.maps_steps
    facts = {n: [r.get("facts", {}) for r in _pick(memory, n, True)] for n in (few, many)}
    extra = {
        _steps(n): {
            "forwards": next((f.get("forwards") for f in fs if f), None),
            "store_bytes": [f.get("store_bytes") for f in fs],
            "estimate_running_bytes": next((f.get("estimate_running") for f in fs if f), None),
            "estimate_scratch_bytes": next((f.get("estimate_scratch") for f in fs if f), None),
            "hwm_bytes": [r.get("hwm") for r in _pick(memory, n, True)],
        }
        for n, fs in facts.items()
    }
    store = sorted({b for fs in facts.values() for f in fs if (b := f.get("store_bytes"))})
    scratch = next((f["estimate_scratch"] for fs in facts.values() for f in fs
                    if f.get("estimate_scratch")), None)
    how = "a fresh process per sample" if s.isolated else "one shared process"
    env = "".join(f", {k}={v}" for k, v in s.memory_env) if s.isolated else ""
    note = (
        f"after a 1-step warm-up, {how}{env}; PNDM runs steps+1 forwards; the store holds "
        f"{' or '.join(f'{b:,}' for b in store)} bytes after {few} and after {many} steps; "
        f"estimate_memory gives scratch per call up to {scratch or 0:,} bytes"
    )
    cases: tuple[tuple[str, str, tuple[int, bool], tuple[int, bool], Target | None], ...] = (
        ("maps_rss_delta", f"{many} vs {few} captured steps", (many, True), (few, True), FLAT),
        ("maps_rss_delta_uncaptured", f"{many} vs {few} steps without capture (control)",
         (many, False), (few, False), None),
        ("maps_rss_capture", f"{many} steps captured vs uncaptured", (many, True),
         (many, False), None),
    )
    label = {True: "captured", False: "uncaptured"}
    out = []
    for key, what, (sn, sc), (bn, bc), target in cases:
        out.append(
            compare(
                key, f"peak RSS above start, {what} ({where})",
                _side(_pick(memory, sn, sc), "rss_delta", f"{_steps(sn)} {label[sc]}"),
                _side(_pick(memory, bn, bc), "rss_delta", f"{_steps(bn)} {label[bc]}"),
                unit="bytes", group=GROUP, target=target, note=note,
                extra=extra if key == "maps_rss_delta" else None,
            )
        )
    return out


def rows(s: Settings, memory: list[dict[str, Any]], timing: dict[str, Any]) -> list[dict[str, Any]]:
    """Section 3's rows: peak RSS over steps (with controls), and captured/uncaptured time."""
    h, w = s.maps_size
    where = f"{s.maps_model} on cpu, {h}x{w}, guidance {s.guidance} (batch 2)"
    out = _memory_rows(s, memory, where)
    error = timing.get("error")
    steps = s.maps_time_steps
    for clock in ("wall", "cpu"):
        out.append(
            compare(
                f"maps_time_{clock}",
                f"{clock} time of {steps} steps, captured vs uncaptured ({where})",
                Series("captured", list(timing.get("captured", {}).get(clock, [])), error),
                Series("uncaptured", list(timing.get("uncaptured", {}).get(clock, [])), error),
                unit="s",
                group=GROUP,
                paired=True,
                note=f"{s.maps_time_pairs} ABBA pairs after a warm-up; capture computes "
                "softmax(q kᵀ) beside each cross-attention call",
                extra={"build_s": timing.get("facts", {}).get("build_s")},
            )
        )
    return out

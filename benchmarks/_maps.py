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
                "softmax(q kᵀ) of each cross-attention call's kept rows, summed when each "
                "forward ends",
                extra={"build_s": timing.get("facts", {}).get("build_s")},
            )
        )
    return out


# -- 4. what capture with gradients and per-head retention cost ---------------------------
POLICY_GROUP = "4. Map capture: gradients and per-head retention against plain capture"
POLICIES = {  # name: (autograd on in the forward, store grad, detail, steps)
    "plain_autograd": (True, False, "resolution", 1),
    "grad": (True, True, "resolution", 1),
    "plain": (False, False, "resolution", 3),
    "head": (False, False, "head", 3),
}


def policy_task(args: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above start of ``steps`` captured guided forwards under one policy (after a
    warm-up forward), the store's bytes, its estimate and the bytes autograd saved."""
    import torch

    import shapetrace
    from shapetrace.maps import AttentionStore, estimate_memory
    from shapetrace.models import build_model

    autograd, grad, detail, steps = POLICIES[args["policy"]]
    t, built = timed(lambda: build_model(args["model"], device="cpu", seed=0))
    h, w = args["height"], args["width"]
    layers = shapetrace.trace_model(args["model"], height=h, width=w, batch=2).layers
    (x, t_step), kwargs = built.inputs(h, w, 2)
    saved: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    def run() -> tuple[Any, Any]:
        store = AttentionStore.for_batch(1, guidance=True, grad=grad, detail=detail)
        outs = []
        latents = x.clone().requires_grad_(autograd)
        with torch.set_grad_enabled(autograd):
            for _ in range(steps):
                with store.capture(built.module):
                    outs.append(built.module(latents, t_step, **kwargs).sample)
                store.end_step()
        return store, outs  # the outputs keep the model's (and the maps') graph alive

    run()  # warm-up
    peak, (store, outs) = rss_peak(run)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    estimate = estimate_memory(store, layers, batch=2)
    facts = {
        "build_s": t.wall, "store_bytes": store.nbytes(), "saved_bytes": sum(saved.values()),
        "estimate_running": estimate.running, "estimate_graph": estimate.graph,
        "estimate_scratch": estimate.scratch, "outputs": len(outs),
    }
    return {"rss_delta": peak.delta, "hwm": peak.hwm, "facts": facts}


def policy_specs(s: Settings) -> list[dict[str, Any]]:
    """Memory tasks for each policy, alternating, one fresh process per sample when isolated."""
    h, w = s.maps_size
    base = {"model": s.maps_model, "height": h, "width": w}
    return [
        {"task": "maps_policy", "args": {**base, "policy": p}, "env": dict(s.memory_env)}
        for _ in range(s.maps_memory_reps)
        for p in POLICIES
    ]


def policy_rows(s: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak RSS and exact bytes: gradients vs plain (one forward with autograd on), per-head
    vs per-resolution sums (steps without autograd)."""
    h, w = s.maps_size
    where = f"{s.maps_model} on cpu, {h}x{w}, batch 2 (uncond, cond), cond row kept"

    def of(policy: str) -> list[dict[str, Any]]:
        return [r for r in results if r.get("args", {}).get("policy") == policy]

    def facts(policy: str, key: str) -> Series:
        rs = of(policy)
        error = next((r["error"] for r in rs if r.get("error")), None)
        values = [float(r["facts"][key]) for r in rs if r.get("facts", {}).get(key) is not None]
        return Series(policy, values[:1], error)  # deterministic: one value

    out = []
    for key, what, subject, baseline, exact in (
        ("maps_grad_rss", "one forward with autograd on, maps with gradients vs plain capture",
         "grad", "plain_autograd", "saved_bytes"),
        ("maps_head_rss", f"{POLICIES['head'][3]} forwards, per-head sums vs per-resolution sums",
         "head", "plain", "store_bytes"),
    ):
        extra = {p: {k: of(p)[0].get("facts", {}).get(k) for k in (
            "store_bytes", "saved_bytes", "estimate_running", "estimate_graph")} if of(p) else {}
            for p in (subject, baseline)}
        out.append(compare(
            key, f"peak RSS above start, {what} ({where})",
            _side(of(subject), "rss_delta", subject), _side(of(baseline), "rss_delta", baseline),
            unit="bytes", group=POLICY_GROUP, extra=extra,
            note="peak RSS after a warm-up forward, outputs kept alive (so is the graph); "
            "exact bytes in the next rows are not disturbed by other jobs",
        ))
        label = "bytes autograd saved" if exact == "saved_bytes" else "bytes the store holds"
        out.append(compare(
            f"{key.removesuffix('_rss')}_{'saved' if exact == 'saved_bytes' else 'store'}",
            f"{label}, {what} ({where})", facts(subject, exact), facts(baseline, exact),
            unit="bytes", group=POLICY_GROUP,
            note="counted exactly: saved_tensors_hooks (unique storages) and store.nbytes()",
        ))
    return out

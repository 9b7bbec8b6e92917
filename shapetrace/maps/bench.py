"""Measure capture: time overhead per UNet forward, and peak memory against the step count.

    python -m shapetrace.maps.bench overhead --model tiny --height 256 --width 256 --repeat 20
    python -m shapetrace.maps.bench memory --model tiny --steps 1 50

``overhead`` times one CFG forward (batch 2) plain, traced without probes, and captured with
the default policy (cross, every resolution) and with one resolution: medians of ``--repeat``
interleaved runs, wall clock and process CPU time (steadier on a shared machine).
``memory`` runs the denoising loop in a fresh process per step count and reports the peak
resident memory, the store's bytes and, for contrast, a prompt-to-prompt-style store that keeps
every map of every step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from shapetrace.maps.memory import format_bytes
from shapetrace.maps.store import AttentionStore

__all__ = ["ListStore", "main"]


class ListStore:
    """Prompt-to-prompt's way, for contrast: every cross map of every step kept in a list."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def wants(self, layer: Any) -> bool:
        return bool(layer.kind == "cross")

    def on_attention(self, call: Any) -> None:
        probs = call.probs if call.probs is not None else call.compute_probs(torch.float32)
        b = probs.shape[0]
        self.maps.append(probs[b // 2 :].detach().clone())  # the conditional half, all heads

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.maps)

    def end_step(self) -> None:
        """Nothing to do: the list only grows."""


def _overhead(args: argparse.Namespace) -> dict[str, Any]:
    from shapetrace.models import build_model
    from shapetrace.trace import trace

    unet = build_model(args.model, device=args.device, seed=0)
    sample, kwargs = unet.inputs(args.height, args.width, batch=2, seed=0)
    latent = unet.latent_size(args.height, args.width)
    res = (latent[0] // 4, latent[1] // 4)

    def plain() -> None:
        unet.module(*sample, **kwargs)

    def traced() -> None:
        with trace(unet.module, monitors=False):
            unet.module(*sample, **kwargs)

    def captured(resolutions: Any = None) -> None:
        store = AttentionStore.for_batch(1, guidance=True, resolutions=resolutions)
        with trace(unet.module, probes=[store], monitors=False):
            unet.module(*sample, **kwargs)

    cases = {
        "plain": plain,
        "traced, no probe": traced,
        "captured, cross, all resolutions": captured,
        f"captured, cross at {res[0]}x{res[1]}": lambda: captured([res]),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for fn in cases.values():  # warm up
            fn()
        for _ in range(args.repeat):
            for name, fn in cases.items():  # interleaved, so load changes hit all alike
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    base = statistics.median(times["plain"])
    base_cpu = statistics.median(cpu["plain"])
    return {
        name: {
            "median_s": statistics.median(ts),
            "vs_plain": statistics.median(ts) / base,
            "cpu_median_s": statistics.median(cpu[name]),
            "cpu_vs_plain": statistics.median(cpu[name]) / base_cpu,
        }
        for name, ts in times.items()
    }


def _memory_one(args: argparse.Namespace) -> dict[str, Any]:
    from shapetrace.maps.pipeline import build_chain, denoise

    chain = build_chain(args.model, device=args.device, seed=0)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    store: Any = ListStore() if args.kind == "list" else AttentionStore.for_batch(1, guidance=True)
    run = denoise(
        chain,
        "a cat sitting on a mat",
        steps=args.one,
        height=args.height,
        width=args.width,
        store=store,
    )
    out = {
        "steps": args.one,
        "unet_calls": len(run.timesteps),
        "store": args.kind,
        "store_bytes": store.nbytes(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": round(run.seconds, 2),
    }
    if args.device.startswith("cuda"):
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for kind in ("running", "list"):
        for steps in args.steps:
            cmd = [
                sys.executable,
                "-m",
                "shapetrace.maps.bench",
                "_memory_one",
                "--one",
                str(steps),
                "--kind",
                kind,
                "--model",
                args.model,
                "--height",
                str(args.height),
                "--width",
                str(args.width),
                "--device",
                args.device,
            ]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run a measurement and print JSON plus a readable line per case."""
    p = argparse.ArgumentParser(prog="python -m shapetrace.maps.bench")
    p.add_argument("what", choices=["overhead", "memory", "_memory_one"])
    p.add_argument("--model", default="tiny")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 50])
    p.add_argument("--one", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--kind", default="running", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "_memory_one":
        print(json.dumps(_memory_one(args)))
        return 0
    if args.what == "overhead":
        result = _overhead(args)
        for name, r in result.items():
            print(
                f"{name:36s} wall {r['median_s'] * 1000:8.1f} ms x{r['vs_plain']:.2f}   "
                f"cpu {r['cpu_median_s'] * 1000:8.1f} ms x{r['cpu_vs_plain']:.2f}"
            )
    else:
        rows = _memory(args)
        for r in rows:
            print(
                f"{r['store']:8s} steps {r['steps']:3d} ({r['unet_calls']} UNet calls): "
                f"store {format_bytes(r['store_bytes'])}, "
                f"peak RSS {format_bytes(r['peak_rss_bytes'])}"
                + (
                    f", CUDA peak {format_bytes(r['cuda_peak_bytes'])}"
                    if "cuda_peak_bytes" in r
                    else ""
                )
            )
        result = {"rows": rows}
    print(
        json.dumps(
            {
                "what": args.what,
                "model": args.model,
                "height": args.height,
                "width": args.width,
                "device": args.device,
                "result": result,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

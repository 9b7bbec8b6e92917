"""How much each benchmark runs: the full run (``nox -s bench``) and ``--quick`` (the test)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["FULL", "QUICK", "Settings"]


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one bench run.

    ``isolated``: one fresh worker process per measurement (peaks cannot bleed); without it
    every measurement shares one worker (quick mode: the numbers are for the schema, not for
    reading). ``threads``: torch intra-op threads in the workers (1: stable medians on a
    shared machine; the tracer's cost is per-op Python work that more threads do not shrink).
    """

    mode: str
    isolated: bool
    threads: int
    devices: tuple[str, ...] = ("cpu",)  # where section 2's forwards run (cuda: --device)
    # 1. the SD 1.5 journey on meta: shapetrace.trace against torchinfo.summary
    meta_model: str = "sd15"
    meta_size: tuple[int, int, int] = (512, 512, 1)  # height, width, batch
    meta_reps: int = 9
    meta_memory_reps: int = 3
    # 2. a real CPU forward, traced against untraced
    cpu_cases: tuple[tuple[str, int, int, int, int, int], ...] = (
        ("tiny", 64, 64, 2, 61, 2),  # model, height, width, batch, pairs, warm-up
        ("sd15", 256, 256, 1, 15, 1),  # with 7 pairs four runs gave x0.94 to x1.02
    )
    # 3. per-token map capture over a denoising loop (tiny UNet)
    maps_model: str = "tiny"
    maps_size: tuple[int, int] = (256, 256)
    maps_steps: tuple[int, int] = (1, 50)
    maps_memory_reps: int = 3
    maps_time_steps: int = 10
    maps_time_pairs: int = 3
    prompt: str = "a cat sitting on a mat"
    # 6. what a check costs: timed runs of each check after untimed ones (ci profile)
    checker_reps: int = 3
    checker_warmup: int = 1
    guidance: float = 7.5
    # 5. journeys on meta against a plain meta forward (native size)
    meta_forward_models: tuple[str, ...] = ("sd15", "sdxl", "flux")
    meta_forward_pairs: int = 15
    # 7. torch.compile: a compiled model traced vs untraced (inductor; --quick: eager backend)
    compile_model: str = "tiny"
    compile_size: tuple[int, int, int] = (64, 64, 2)
    compile_backend: str = "inductor"
    compile_pairs: int = 41
    timeout_s: int = 1500
    # memory workers: large blocks are mmapped and unmapped on free, so peak RSS follows live
    # memory instead of what glibc keeps cached (isolated runs only)
    memory_env: tuple[tuple[str, str], ...] = (("MALLOC_MMAP_THRESHOLD_", "65536"),)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON."""
        return asdict(self)

    def with_device(self, device: str | None) -> Settings:
        """A copy that also runs section 2's forwards on ``device`` (None: CPU only)."""
        return self if device in (None, "cpu") else replace(self, devices=("cpu", str(device)))

    def with_threads(self, threads: int | None) -> Settings:
        """A copy using ``threads`` torch threads (None keeps these settings' choice)."""
        return self if threads is None else replace(self, threads=threads)


FULL = Settings(mode="full", isolated=True, threads=1)

QUICK = Settings(
    mode="quick",
    isolated=False,
    threads=1,
    meta_reps=1,
    meta_memory_reps=1,
    cpu_cases=(("tiny", 64, 64, 2, 3, 1),),
    maps_size=(64, 64),
    maps_steps=(1, 3),
    maps_memory_reps=1,
    maps_time_steps=2,
    maps_time_pairs=1,
    meta_forward_models=("sd15",),
    meta_forward_pairs=1,
    checker_reps=1,
    checker_warmup=0,
    compile_backend="eager",
    compile_pairs=1,
    timeout_s=300,
)

"""The checks' arguments, refused up front when they cannot work: each error names the
argument, its value and the fix, before any example runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch

from shapetrace.testing._configurations import ADDED_KV, CONFIGURATIONS, STANDARD, Configuration
from shapetrace.testing._module_subject import factory_label
from shapetrace.testing._violation import CheckArgumentError, ModuleContractError
from shapetrace.testing.tolerance import DEFAULT_ATOL

__all__ = ["check_device", "check_dtype", "check_max_examples", "processor_configurations"]


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if the checks have a tolerance for it."""
    if dtype not in DEFAULT_ATOL:
        raise CheckArgumentError(
            f"dtype={dtype!r} is not checked: there is no tolerance for it; use one of "
            f"{', '.join(map(str, DEFAULT_ATOL))}"
        )
    return dtype


def check_device(device: Any) -> str:
    """``device`` as a string, if it exists here and holds values."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise CheckArgumentError(
            f"device={device!r} is not a torch device ({err}); use 'cpu' or 'cuda'"
        ) from None
    if parsed.type == "meta":
        raise CheckArgumentError(
            f"device={device!r} holds shapes but no values, and the invariants compare values; "
            "use 'cpu' (or 'cuda'), and shapetrace.trace for shapes on meta"
        )
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if not available.get(parsed.type, True):
        raise CheckArgumentError(
            f"device={device!r} asked for, but torch.{parsed.type} is not available here "
            f"(torch {torch.__version__}); use 'cpu', or skip this check where there is none"
        )
    if parsed.type == "cuda" and parsed.index is not None:
        count = torch.cuda.device_count()
        if parsed.index >= count:
            raise CheckArgumentError(
                f"device={device!r}: this machine has {count} CUDA device(s); use 'cuda:0'"
            )
    return str(device)


def check_max_examples(max_examples: Any) -> int | None:
    """``max_examples`` if it is None or a positive int."""
    if max_examples is None:
        return None
    if not isinstance(max_examples, int) or isinstance(max_examples, bool) or max_examples < 1:
        raise CheckArgumentError(
            f"max_examples={max_examples!r}: give a whole number of drawn examples per "
            "invariant, at least 1 (or None for the profile's count)"
        )
    return max_examples


def check_factory(factory: Any, argument: str) -> None:
    """``factory`` must be callable."""
    if not callable(factory):
        raise CheckArgumentError(
            f"{argument}={factory!r} is not callable; pass a class or a function that builds "
            "what is checked"
        )


def _is_added_kv(processor: Any) -> bool:
    from diffusers.models.attention_processor import ADDED_KV_ATTENTION_PROCESSORS

    return isinstance(processor, ADDED_KV_ATTENTION_PROCESSORS)


def processor_configurations(
    processor_factory: Callable[[], Any], names: Iterable[str] | None, dtype: torch.dtype
) -> tuple[Configuration, ...]:
    """The configurations to check ``processor_factory``'s processor on: those named, or by
    default the added-KV ones for diffusers' added-KV processors and the standard ones for
    every other (in float64 without ``upcast``, which casts down to float32). When only
    secondary configurations are named, each gets every invariant that applies to it, not
    only the agreement checks. Calls the factory once, to refuse one that returns nothing
    up front."""
    label = factory_label(processor_factory)
    check_factory(processor_factory, "processor_factory")
    try:
        processor = processor_factory()
    except TypeError as err:
        raise ModuleContractError(
            f"processor_factory {label}() raised TypeError: {err}; pass a factory that takes "
            "no argument, e.g. lambda: SlicedAttnProcessor(2)"
        ) from err
    if processor is None:
        raise ModuleContractError(
            f"processor_factory {label}() returned None: return a processor, e.g. "
            "lambda: MyProcessor() (with None, diffusers would silently use its own default "
            "and the check would test that instead)"
        )
    if not callable(processor):
        raise ModuleContractError(
            f"processor_factory {label}() returned {type(processor).__name__}, which is not "
            "callable: an attention processor is called as processor(attn, hidden_states, ...)"
        )
    if names is None:
        family = ADDED_KV if _is_added_kv(processor) else STANDARD
        # upcasting is for low precision: diffusers casts float64 down to float32 for it
        return tuple(c for c in family if not (c.upcast and dtype == torch.float64))
    wanted = [names] if isinstance(names, str) else list(names)
    known = {c.name: c for c in CONFIGURATIONS}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        what = f"unknown configuration(s) {unknown}" if unknown else "no configuration"
        raise CheckArgumentError(
            f"configurations={wanted!r}: {what}; choose from {', '.join(known)} "
            "(or None for every one the processor's kind supports)"
        )
    chosen = tuple(c for c in CONFIGURATIONS if c.name in wanted)
    if any(c.primary for c in chosen):
        return chosen
    # only secondary ones, named on purpose: each gets every invariant that applies to it
    return tuple(replace(c, primary=True) for c in chosen)

"""PyTorch's self-calibrating tolerance: how far a result may be from a float64 reference.

Pure reshapes are compared exactly (``atol = 0``). Everything else follows the rule PyTorch's
own attention tests use: compute the reference in float64 *and* in the dtype under test; the
low-precision reference's own error shows how much rounding that dtype costs here, so

    atol = fudge * max(max|ref64 - ref_lowp|, default_atol[dtype])

with ``default_atol`` 1e-5 for float32 and 1e-3 for float16 and bfloat16.

Example::

    >>> ref64 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> calibrated_atol(ref64, ref64.float())  # float32 rounding is below the floor
    4e-05
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_FUDGE",
    "assert_close",
    "calibrated_atol",
    "default_atol",
    "max_abs_diff",
]

DEFAULT_ATOL: dict[torch.dtype, float] = {
    torch.float64: 1e-7,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-3,
}
"""The floor of the tolerance per dtype (float16 and bfloat16 as in PyTorch's SDPA tests)."""

DEFAULT_FUDGE: dict[torch.dtype, float] = {
    torch.float64: 4.0,
    torch.float32: 4.0,
    torch.float16: 8.0,
    torch.bfloat16: 8.0,
}
"""How many times the calibrated error a result may be off: kernels accumulate in another
order than the reference, and low precision rounds each partial sum."""


def default_atol(dtype: torch.dtype) -> float:
    """The floor of the tolerance for ``dtype``: 1e-5 (float32), 1e-3 (float16, bfloat16).

    >>> default_atol(torch.float16)
    0.001
    """
    try:
        return DEFAULT_ATOL[dtype]
    except KeyError:
        known = ", ".join(str(d) for d in DEFAULT_ATOL)
        raise ValueError(f"no default tolerance for {dtype}; use one of {known}") from None


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest ``|actual - expected|`` in float64; ``inf`` when either holds a NaN or inf
    the other does not, or when the shapes differ.

    >>> max_abs_diff(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    inf
    """
    if actual.shape != expected.shape:
        return math.inf
    if actual.numel() == 0:
        return 0.0
    a = actual.detach().to(dtype=torch.float64)
    e = expected.detach().to(device=a.device, dtype=torch.float64)
    largest = float((a - e).abs().max())
    if math.isfinite(largest):
        return largest  # the common case: no NaN or inf on either side
    a, e = a.cpu(), e.cpu()
    both_finite = torch.isfinite(a) & torch.isfinite(e)
    same_special = (
        (~torch.isfinite(a)) & (~torch.isfinite(e)) & ((a == e) | (a.isnan() & e.isnan()))
    )
    if not bool((both_finite | same_special).all()):
        return math.inf
    diff = (a - e).abs()[both_finite]
    return float(diff.max()) if diff.numel() else 0.0


def calibrated_atol(
    reference: torch.Tensor,
    low_precision_reference: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    fudge: float | None = None,
) -> float:
    """``fudge * max(max|reference - low_precision_reference|, default_atol(dtype))``.

    ``reference`` is computed in float64, ``low_precision_reference`` by the same math in
    the dtype under test (its dtype is used when ``dtype`` is None). ``fudge`` defaults to
    :data:`DEFAULT_FUDGE` for that dtype.

    >>> ref = torch.tensor([1.0], dtype=torch.float64)
    >>> calibrated_atol(ref, torch.tensor([1.01], dtype=torch.float16), fudge=1.0) > 9e-3
    True
    """
    dtype = low_precision_reference.dtype if dtype is None else dtype
    fudge = DEFAULT_FUDGE.get(dtype, 4.0) if fudge is None else fudge
    if fudge <= 0:
        raise ValueError(f"fudge must be positive, got {fudge}")
    error = max_abs_diff(low_precision_reference, reference)
    return fudge * max(error, default_atol(dtype))


def assert_close(
    actual: torch.Tensor,
    reference: torch.Tensor,
    low_precision_reference: torch.Tensor,
    *,
    what: str = "result",
    fudge: float | None = None,
) -> None:
    """Raise AssertionError unless ``actual`` is within :func:`calibrated_atol` of
    ``reference`` (float64), the tolerance calibrated on ``low_precision_reference``; the
    tolerance's dtype is ``actual``'s.

    >>> ref = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> assert_close(torch.tensor([1.0, 2.0]), ref, ref.float())
    >>> assert_close(torch.tensor([1.0, 2.1]), ref, ref.float(), what="output")
    Traceback (most recent call last):
    ...
    AssertionError: output differs from the float64 reference by 0.1 (atol 4e-05, float32)
    """
    atol = calibrated_atol(reference, low_precision_reference, dtype=actual.dtype, fudge=fudge)
    diff = max_abs_diff(actual, reference)
    if not (math.isfinite(diff) and diff <= atol):
        raise AssertionError(
            f"{what} differs from the float64 reference by {diff:.3g} "
            f"(atol {atol:.2g}, {str(actual.dtype).removeprefix('torch.')})"
        )

"""``shapetrace._footprint``: what a forward needs, counted on meta against independent
arithmetic, and the numbers the run lines print."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shapetrace._footprint import (
    ACTIVATION_BASE,
    Estimate,
    activation_bytes,
    available_memory,
    count_forward,
    estimate_seconds,
    weight_bytes,
)
from shapetrace.models import build_model

MIB = 2**20


def test_the_peak_counts_live_tensors_once_and_frees_them() -> None:
    with count_forward() as cost:
        a = torch.empty(256, MIB // 4, device="meta")  # 256 MiB
        b = a.view(-1)  # a view: no new bytes
        del a, b
        c = torch.empty(64, MIB // 4, device="meta")  # after freeing: the peak stays 256
        del c
    assert cost.peak_bytes == 256 * MIB


def test_fused_attention_is_counted_as_the_fused_kernels_run_it() -> None:
    b, h, n, m, d = 2, 8, 4096, 4096, 40
    q = torch.empty(b, h, n, d, device="meta")
    with count_forward() as cost:
        out = F.scaled_dot_product_attention(q, q, q)
    assert out.shape == (b, h, n, d)
    assert cost.flops == 2 * b * h * n * m * (d + d)  # q kᵀ and probs v
    assert cost.peak_bytes == q.numel() * 4  # the output only: no (B, H, N, M) scores


def test_a_matmul_is_counted_by_its_flops() -> None:
    a = torch.empty(64, 128, device="meta")
    with count_forward() as cost:
        a @ a.T
    assert cost.flops == 2 * 64 * 128 * 64


def test_weights_are_counted_in_the_runs_dtype() -> None:
    module = build_model("tiny").module
    params = sum(p.numel() for p in module.parameters())
    assert weight_bytes(module, torch.float32) == 4 * params
    assert weight_bytes(module, torch.float16) == 2 * params


def test_sd15_on_meta_costs_what_its_parameters_and_convolutions_say() -> None:
    model = build_model("sd15")
    args, kwargs = model.inputs(512, 512, 1)
    with count_forward() as cost:
        model.module(*args, **kwargs)
    assert weight_bytes(model.module, torch.float32) >= 4 * 859_520_964
    assert 0.7e12 < cost.flops < 0.9e12  # SD 1.5: about 0.8 TFLOP per image at 512
    assert 64 * MIB < cost.peak_bytes < 512 * MIB  # no 4096x4096 scores held
    assert activation_bytes(cost) > cost.peak_bytes + ACTIVATION_BASE - 1


def test_memory_is_known_on_cpu_and_unlimited_on_meta() -> None:
    assert available_memory(torch.device("meta")) is None
    free = available_memory(torch.device("cpu"))
    assert free is not None and free > 0


def test_time_is_none_on_meta_and_grows_with_forwards_on_cpu() -> None:
    with count_forward() as cost:
        torch.empty(256, 256, device="meta") @ torch.empty(256, 256, device="meta")
    assert estimate_seconds(cost, torch.device("meta")) is None
    one = estimate_seconds(cost, torch.device("cpu"), forwards=1)
    ten = estimate_seconds(cost, torch.device("cpu"), forwards=10)
    assert one is not None and ten is not None and abs(ten - 10 * one) < 1e-9


def test_the_estimate_reads_as_one_line() -> None:
    est = Estimate(weights=3 * 2**30, activations=MIB, capture=4096, seconds=200)
    assert est.total == 3 * 2**30 + MIB + 4096
    assert est.memory_text() == (
        "about 3.0 GiB (weights 3.0 GiB, activations 1.0 MiB, capture 4.0 KiB)"
    )
    assert est.time_text() == "about 3 min"
    assert Estimate(1, 1, seconds=None).time_text() == ""
    assert Estimate(1, 1, seconds=0.2).time_text() == "under a second"

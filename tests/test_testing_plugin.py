"""The Hypothesis profiles and the pytest plugin, a guest in every project's test run: it
registers only namespaced profiles, loads one only when asked, imposes no marker, imports
neither torch nor Hypothesis at start-up, and leaves a project's own ``ci`` profile and
``cuda`` marker untouched."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import settings
from hypothesis.errors import InvalidArgument

from shapetrace.testing import profiles


def test_profiles_are_namespaced_ci_derandomized_and_nightly_longer() -> None:
    profiles.register_profiles()
    ci, nightly = settings.get_profile("shapetrace-ci"), settings.get_profile("shapetrace-nightly")
    assert ci.derandomize and ci.deadline is None and ci.database is None
    assert nightly.deadline is None and not nightly.derandomize
    assert nightly.max_examples >= 10 * ci.max_examples
    assert profiles.check_max_examples("nightly") > profiles.check_max_examples("ci")
    bigger = profiles.shape_bounds("nightly")
    assert all(bigger[k] >= v for k, v in profiles.shape_bounds("ci").items())


def _profile(name: str) -> str | None:
    """What Hypothesis holds under ``name`` (its repr), or None."""
    try:
        return repr(settings.get_profile(name))
    except InvalidArgument:
        return None


def test_registering_the_profiles_touches_no_bare_name_not_even_hypothesis_own_ci() -> None:
    before = {name: _profile(name) for name in ("ci", "dev", "nightly", "default")}
    profiles.register_profiles()
    assert {name: _profile(name) for name in before} == before
    assert _profile("shapetrace-ci") is not None


def test_loading_an_unknown_profile_names_the_known_ones(restore_profile: None) -> None:
    with pytest.raises(
        ValueError, match=r"unknown Hypothesis profile 'weekly'; choose one of ci, dev, nightly"
    ):
        profiles.load_profile("weekly")
    assert profiles.load_profile("shapetrace-dev") == "dev" == profiles.active_profile()


def test_importing_the_plugin_loads_neither_torch_nor_hypothesis() -> None:
    code = (
        "import sys, shapetrace.testing.pytest_plugin, shapetrace.testing\n"
        "print(sorted(m for m in ('torch', 'hypothesis', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


USER_TESTS = """
import pytest, torch
from torch import nn

class Mine(nn.Module):
    def __init__(self, query_dim, context_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(context_dim, query_dim)
        self.to_v = nn.Linear(context_dim, query_dim)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x, context):
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
                   for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

def test_mine_keeps_every_invariant(check_attention, shapetrace_profile):
    assert shapetrace_profile == "ci"
    check_attention(Mine, invariants=["output_shape", "reference_agreement"])

def test_mine_on_every_device(attention_devices, attention_device, check_attention):
    assert attention_device in attention_devices
    check_attention(Mine, device=attention_device, invariants=["output_shape"])
"""


def test_plugin_gives_fixtures_and_a_profile_on_request(
    pytester: pytest.Pytester, restore_profile: None
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess(
        "--shapetrace-profile=ci", "-rs", "-p", "no:cacheprovider"
    )
    result.stdout.fnmatch_lines(["shapetrace: Hypothesis profile 'shapetrace-ci'"])
    if torch.cuda.is_available():
        result.assert_outcomes(passed=3)
    else:  # the fixture skips its cuda case itself, with the reason
        result.assert_outcomes(passed=2, skipped=1)
        result.stdout.fnmatch_lines(["*needs a CUDA device: torch.cuda.is_available() is False*"])


def test_plugin_reads_the_profile_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, restore_profile: None
) -> None:
    pytester.makepyfile(
        test_env="def test_profile(shapetrace_profile):\n"
        "    assert shapetrace_profile == 'nightly'\n"
    )
    monkeypatch.setenv(profiles.ENV_VAR, "nightly")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    monkeypatch.setenv(profiles.ENV_VAR, "weekly")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown Hypothesis profile 'weekly'*"])


GUEST_CONFTEST = """
from hypothesis import settings
settings.register_profile("ci", max_examples=7)
settings.load_profile("ci")
"""

GUEST_TESTS = """
import pytest
from hypothesis import settings

def test_my_ci_profile_is_mine():
    assert settings.get_profile("ci").max_examples == 7

def test_my_ci_profile_is_the_one_loaded_unless_I_asked_for_shapetrace():
    assert settings.default.max_examples == (25 if {asked} else 7)

@pytest.mark.cuda
def test_my_cuda_marker_means_what_I_say_and_is_not_skipped():
    assert True
"""


@pytest.mark.parametrize("asked", [False, True], ids=["not_asked", "asked_for_a_profile"])
def test_a_project_with_its_own_ci_profile_and_cuda_marker_is_untouched(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, restore_profile: None, asked: bool
) -> None:
    monkeypatch.delenv(profiles.ENV_VAR, raising=False)  # nox sets it for our own run
    pytester.makeconftest(GUEST_CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    cuda: my project's own meaning\n")
    pytester.makepyfile(test_guest=GUEST_TESTS.format(asked=asked))
    args = ["--strict-markers", "-p", "no:cacheprovider"]
    result = pytester.runpytest_inprocess(*args, *(["--shapetrace-profile=ci"] if asked else []))
    result.assert_outcomes(passed=3)  # the cuda-marked test ran: nothing skipped it
    if not asked:
        assert not [ln for ln in result.outlines if ln.startswith("shapetrace")]  # no header


def test_a_project_can_opt_in_to_skipping_its_cuda_marker(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nmarkers =\n    gpu: needs a GPU\nshapetrace_cuda_markers =\n    gpu\n"
    )
    pytester.makepyfile(
        test_opt_in="import pytest\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    assert True\n"
    )
    result = pytester.runpytest_inprocess("--strict-markers", "-rs", "-p", "no:cacheprovider")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*needs a CUDA device*"])

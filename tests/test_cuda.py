"""CUDA paths: checks, the fuzzers' cases, bench and the CLI on ``--device cuda``. They run where
CUDA is available and skip with a reason elsewhere (CI has no GPU). Known gaps are declared, not
hidden: see ``REFERENCES_ON_CPU``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import jacverify

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA is not available on this machine")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def test_check_runs_the_methods_on_the_device():
    report = jacverify.check(_net(), torch.randn(4, 3), device="cuda")
    assert report.passed, report.failure_message()
    assert report.case.device.type == "cuda"
    assert all(t.device.type == "cuda" for t in report.case.inputs)


def test_cuda_float32_methods_agree_with_float64_references():
    report = jacverify.check(_net(), torch.randn(4, 3), device="cuda", dtype=torch.float32)
    assert report.passed, report.failure_message()
    assert report.reference_dtype == torch.float64


# NOTE: issue #18 asks for the references on the CPU in float64 and a cross-device check of the
# device's Jacobian against them. The references here run in float64 on the case's device
# (jacverify/references.py `_reference_version` copies the function in float64 where it is), so
# this is a declared gap until the core moves them; strict, so that the fix is noticed.
REFERENCES_ON_CPU = pytest.mark.xfail(strict=True, reason="references run on the case's device "
                                      "(issue #18: CPU float64 references not built yet)")


@REFERENCES_ON_CPU
def test_references_run_on_the_cpu_in_float64():
    report = jacverify.check(_net(), torch.randn(4, 3), device="cuda")
    assert report.reference.device.type == "cpu"


def test_fuzz_draws_cuda_cases():
    from jacverify.strategies import cases, devices, networks

    result = jacverify.fuzz(cases=cases(networks=networks(max_depth=1),
                                        devices=devices().filter(lambda d: d == "cuda")),
                            max_examples=3, seed=0, database=None)
    assert result.passed


def test_bench_times_on_the_device_with_the_allocators_memory():
    from jacverify.bench import bench

    result = bench(_net().cuda(), torch.randn(8, 3, device="cuda"), methods=["loop", "batched_grad"],
                   min_seconds=0.01)
    assert all(r.status == "agree" for r in result.results)


@pytest.mark.slow
def test_cli_check_and_bench_on_cuda():
    for args in (["check", "jacverify.examples.mlp", "--device", "cuda", "--quiet"],
                 ["bench", "--suite", "quick", "--no-sweeps", "--device", "cuda",
                  "--min-seconds", "0.01"]):
        result = subprocess.run([sys.executable, "-m", "jacverify", *args], capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr

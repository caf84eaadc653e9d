"""The fuzz campaigns as pytest-collected Hypothesis tests (jacverify/campaign_tests.py), run by
pytest-xdist and by HypoFuzz, with a shared example database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import strategies as st
from hypothesis.internal.reflection import function_digest

from jacverify import campaign_tests
from jacverify.campaign import Trial
from jacverify.judge import Verdict

pytest_plugins = ["pytester"]

RULE = "test_rule_RowScaled and not OutLast and not Generated"


def _tests():
    return {name: t for name, t in vars(campaign_tests).items() if name.startswith("test_")}


def test_every_fuzzer_is_a_collected_hypothesis_test_with_its_own_key():
    tests = _tests()
    assert {"test_networks_batch_jacobian", "test_rule_RowScaled", "test_operator_sin",
            "test_operator_nn_functional_relu"} <= set(tests)
    assert all(t.is_hypothesis_test for t in tests.values())
    # one body for all: each configuration keys its own failures (NOTE [campaign tests])
    digests = {function_digest(t.hypothesis.inner_test) for t in tests.values()}
    assert len(digests) == len(tests)


def test_campaign_test_fails_with_the_judges_message_and_skips_rejected():
    def judge(n):
        verdict = Verdict.REJECTED if n % 2 else Verdict.FAILED if n > 10 else Verdict.PASSED
        return Trial(verdict, outcome=n)

    test = campaign_tests.campaign_test(
        st.integers(0, 100), judge, key="t", describe=lambda t: f"{t.outcome} is too big")
    with pytest.raises(AssertionError, match="12 is too big"):  # shrunk to the least even failure
        test()
    assert test.__name__ == "test_campaign"


@pytest.mark.slow
def test_xdist_runs_the_campaigns_with_a_shared_database(pytester, tmp_path):
    database = tmp_path / "examples"
    args = ["--pyargs", "jacverify.campaign_tests", "-n", "2", "-p", "no:cacheprovider",
            "--jacverify-profile", "dev", f"--jacverify-database={database}",
            "-k", f"({RULE}) or test_operator_sin", "-W", "ignore::DeprecationWarning"]
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=2)


@pytest.mark.slow
def test_a_users_campaign_module_saves_its_failure_in_the_named_database(pytester, tmp_path):
    pytester.makepyfile(test_my_rules="""
        from jacverify.campaign_tests import rule_test
        from jacverify.examples.rules import MixesSamples, RowScaled

        test_mixes = rule_test(MixesSamples)
        test_row_scaled = rule_test(RowScaled)
    """)
    database = tmp_path / "examples"
    args = ["-n", "2", "-p", "no:cacheprovider", f"--jacverify-database={database}",
            "-W", "ignore::DeprecationWarning"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*: values differ*", "*Falsifying example: test_rule_MixesSamples(*"])
    assert any(database.iterdir())  # the failure is saved where --jacverify-database says
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1, failed=1)  # and replayed


@pytest.mark.slow
def test_hypofuzz_fuzzes_a_campaign(tmp_path):
    pytest.importorskip("hypofuzz", reason="HypoFuzz (pip install hypofuzz, or jacverify[fuzz])")
    examples = tmp_path / ".hypothesis" / "examples"
    # the README's command, as `hypothesis fuzz` runs it
    command = [sys.executable, "-c", "from hypothesis.extra.cli import main; main()", "fuzz",
               "-n", "1", "--no-dashboard", "--", "--pyargs", "jacverify.campaign_tests",
               "-k", RULE, "-p", "no:cacheprovider"]
    # not under CI's settings: Hypothesis derandomizes there (its own "ci" profile, and jacverify's),
    # and HypoFuzz refuses derandomized tests, as a user's long campaign would not run them
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["JACVERIFY_PROFILE"] = "dev"
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 600  # waits for HypoFuzz's first saved example, measures nothing
    try:
        # HypoFuzz keeps its corpus and reports in the example database, under keys of the
        # pytest node id: examples there means it ran the campaign's test
        while not (examples.is_dir() and any(examples.iterdir())):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"HypoFuzz saved nothing:\n{proc.communicate()[0]}")
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # HypoFuzz runs until stopped
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

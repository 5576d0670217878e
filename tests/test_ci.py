"""The suite's own rule for CI (tests/conftest.py): under CI=true a skip whose reason is not on the allow-list
fails the run, an allowed one stays a skip, and the summary counts both."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]


def test_under_ci_only_allowed_skips_stay_skips_and_the_summary_counts_them(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(
        test_skips="""
import pytest

def test_runs():
    pass

def test_lacks_a_tool():
    pytest.skip("some tool is not installed")

@pytest.mark.skipif(True, reason="this CPU has no native bf16")
def test_needs_bf16():
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*skipped under CI, and the reason is not in tests/conftest.py's ALLOWED_SKIPS: some tool is not*",
            "tests: 1 passed, 1 failed, 0 error, 1 skipped",
            "*test_needs_bf16: this CPU has no native bf16 (hosts of this kind differ*",
        ]
    )

"""CI cannot pass by skipping: under CI=true a missing prerequisite fails with its reason, and any skip
outside the `cuda` tier fails the session (tests/conftest.py `require`, `CiSkipGuard`); outside CI the
same tests skip with the reason."""
from __future__ import annotations

import pytest

from tests import conftest

MISSING = "/no/such/place/cxr"


def test_require_fails_under_ci_with_the_reason(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"data pack not found at {MISSING}"):
        conftest.require(False, f"data pack not found at {MISSING}")
    conftest.require(True, "never said")  # present: nothing happens


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_require_skips_outside_ci_with_the_reason(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=f"data pack not found at {MISSING}"):
        conftest.require(False, f"data pack not found at {MISSING}")


INNER_CONFTEST = """
from tests.conftest import bad_inputs, browser, cxr_root, external_root, pytest_configure  # noqa: F401
"""
INNER_TESTS = """
import pytest

def test_pack(cxr_root): pass
def test_bad(bad_inputs): pass
def test_external(external_root): pass
def test_browser(browser): pass
def test_fine(): pass

@pytest.mark.cuda
@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_gpu(): pass

@pytest.mark.xfail(reason="known")
def test_known(): assert False
"""


@pytest.fixture
def nothing_present(pytester, monkeypatch, tmp_path):
    """A small session whose data folders and browser are all missing."""
    for name in ("CXR_DATA", "BAD_INPUTS", "CXR_EXTERNAL"):
        monkeypatch.setattr(conftest, name, tmp_path / name.lower())
    monkeypatch.setattr(conftest, "CHROMIUM", str(tmp_path / "chromium"))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester


@pytest.mark.slow  # runs a pytest session of its own (a second or more)
def test_under_ci_every_missing_prerequisite_fails_and_names_its_path(nothing_present, monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    result = nothing_present.runpytest("-rs")
    result.assert_outcomes(passed=1, errors=4, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    for missing in ("cxr_data", "bad_inputs", "cxr_external", "chromium"):
        assert str(tmp_path / missing) in out, missing
    assert "CI=true: a missing prerequisite fails" in out
    assert "skipped outside the cuda tier" not in out  # the cuda test is the only skip


@pytest.mark.slow  # runs a pytest session of its own (a second or more)
def test_outside_ci_they_skip_with_the_reason(nothing_present, monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    result = nothing_present.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    for missing in ("cxr_data", "bad_inputs", "cxr_external", "chromium"):
        assert str(tmp_path / missing) in out, missing


# a passing test, a skip, a skipped cuda test and a test over no parameters (a skip too)
SKIPPING = """
import pytest

def test_passes(): pass
def test_skips_itself(): pytest.skip("renamed query")

@pytest.mark.cuda
def test_gpu(): pytest.skip("needs a CUDA device")

@pytest.mark.parametrize("name", [])
def test_over_nothing(name): pass
"""


@pytest.mark.slow  # runs a pytest session of its own (a second or more)
def test_under_ci_any_other_skip_fails_the_session(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=SKIPPING)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*CI=true: 2 skipped outside the cuda tier*",
                                 "SKIPPED test_inner.py::test_skips_itself: renamed query",
                                 "SKIPPED test_inner.py::test_over_nothing*"])
    assert "test_gpu" not in result.stdout.str().split("skipped outside the cuda tier")[1]


@pytest.mark.slow  # runs a pytest session of its own (a second or more)
def test_a_module_that_skips_itself_fails_under_ci(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner="import pytest\npytest.skip('no data', allow_module_level=True)\n")
    pytester.makepyfile(test_other="def test_passes(): pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED test_inner.py: no data"])


@pytest.mark.slow  # a pytest session with two worker processes of its own (seconds)
def test_under_ci_a_skip_on_an_xdist_worker_fails_the_session(pytester, monkeypatch):
    """README's test command runs on pytest-xdist workers: their skips reach the guard too."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PYTHONPATH", str(conftest.REPO))  # the workers import tests.conftest
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=SKIPPING,
                        test_module="import pytest\npytest.skip('no data', allow_module_level=True)\n")
    result = pytester.runpytest("-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*CI=true: 3 skipped outside the cuda tier*"])
    tail = result.stdout.str().split("skipped outside the cuda tier")[1]
    assert "test_skips_itself: renamed query" in tail and "test_over_nothing" in tail
    assert "test_module.py" in tail and "test_gpu" not in tail

    monkeypatch.setenv("CI", "false")  # the same session outside CI: skips are skips
    assert pytester.runpytest("-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider").ret == pytest.ExitCode.OK

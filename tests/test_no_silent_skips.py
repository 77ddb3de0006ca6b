"""The skip guard (tests/_skipguard.py): a skip that hides broken in-tree code fails the run.

Each case runs in a pytester sandbox with the guard loaded, so the outcome of the inner run is what a
real run would report.
"""

from __future__ import annotations

import pytest

import _skipguard

pytest_plugins = ["pytester"]

FAILS = {
    "importorskip-in-tree": """
        import pytest
        def test_it():
            pytest.importorskip("edgefleet.no_such_module")
    """,
    "skip-in-except-importerror": """
        import pytest
        def test_it():
            try:
                from edgefleet.no_such_module import Thing  # noqa: F401
            except ImportError as e:
                pytest.skip(f"not written yet: {e}")
    """,
    "moved-name": """
        import pytest
        def test_it():
            try:
                from edgefleet.errors import NoSuchErrorClass  # noqa: F401
            except ImportError:
                pytest.skip("the error class moved")
    """,
    "reason-says-edgefleet-import": """
        import pytest
        def test_it():
            pytest.skip("edgefleet.runtime engine not importable")
    """,
    "fixture-skip": """
        import pytest
        @pytest.fixture
        def lib():
            pytest.skip("could not import 'edgefleet.telemetry': boom")
        def test_it(lib):
            pass
    """,
    "module-level": """
        import pytest
        pytest.skip("could not import 'edgefleet.sim._demo': cannot import name 'x'", allow_module_level=True)
        def test_it():
            pass
    """,
    "module-level-importorskip": """
        import pytest
        pytest.importorskip("edgefleet.no_such_module")
        def test_it():
            pass
    """,
}

SKIPS = {
    "optional-extra": """
        import pytest
        def test_it():
            pytest.importorskip("no_such_optional_extra_xyz")
    """,
    "extra-missing-under-an-in-tree-module": """
        import pytest
        def test_it():
            pytest.skip("could not import 'edgefleet.optimize._torch': No module named 'torch'")
    """,
    "missing-service": """
        import pytest
        def test_it():
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    """,
    "module-level-extra": """
        import pytest
        pytest.importorskip("no_such_optional_extra_xyz", reason="the xyz extra is not installed")
        def test_it():
            pass
    """,
}


_QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")  # the guard is already imported here


def _run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_case=source)
    return pytester.runpytest_inprocess("-p", "_skipguard", "-p", "no:cacheprovider", "-rs", *_QUIET)


@pytest.mark.parametrize("case", sorted(FAILS))
def test_in_tree_import_skip_fails_the_run(pytester, case):
    result = _run(pytester, FAILS[case])
    assert result.ret != 0
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == 0
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) + outcomes.get("error", 0) == 1


@pytest.mark.parametrize("case", sorted(SKIPS))
def test_legitimate_skips_stay_skips(pytester, case):
    result = _run(pytester, SKIPS[case])
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)  # module-level: 5
    result.assert_outcomes(skipped=1)


def test_in_tree_importorskip_still_returns_the_module(pytester):
    pytester.makepyfile(
        test_case="""
        import pytest
        def test_it():
            mod = pytest.importorskip("edgefleet.errors")
            assert mod.EdgefleetError
        """
    )
    pytester.runpytest_inprocess("-p", "_skipguard", "-p", "no:cacheprovider", *_QUIET).assert_outcomes(
        passed=1
    )


@pytest.mark.parametrize(
    ("reason", "hides_a_bug"),
    [
        ("could not import 'edgefleet.bundle': x", True),
        ("No module named 'edgefleet.server._gates'", True),
        ("cannot import name 'Foo' from 'edgefleet.runtime'", True),
        ("edgefleet telemetry library not present", True),
        ("could not import 'onnx_tf': No module named 'onnx_tf'", False),
        ("could not import 'edgefleet.optimize._torch': No module named 'torch'", False),
        ("no MQTT broker on 127.0.0.1:1883", False),
        ("headless chromium is not installed", False),
    ],
)
def test_reason_classification(reason, hides_a_bug):
    assert (_skipguard.in_tree_reason(reason) is not None) == hides_a_bug


def test_the_guard_is_active_in_this_run(request):
    """tests/conftest.py loads the guard for the whole suite."""
    assert pytest.importorskip is _skipguard._guarded_importorskip
    with pytest.raises(ModuleNotFoundError):
        pytest.importorskip("edgefleet.no_such_module")

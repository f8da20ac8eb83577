"""The harness can fail: each kind of problem ``run`` promises to catch makes a test fail.

Without these, a ``run`` that silently swallowed exception-handler calls or unraisable
exceptions would let every bridge test pass vacuously.
"""

from __future__ import annotations

import asyncio
import gc
import pathlib
import subprocess
import sys
import textwrap

import pytest

from conftest import DEFAULT_TIMEOUT, LOOP_HAS_DEBUG_MODE, Runner, loop_class


def test_harness_run_returns_the_result_and_uses_the_loop_kind(run, loop_kind):
    async def main():
        return type(asyncio.get_running_loop()), asyncio.get_running_loop().get_debug()

    loop_type, debug = run(main)
    assert debug is LOOP_HAS_DEBUG_MODE[loop_kind]
    assert issubclass(loop_type, loop_class(loop_kind))


def test_harness_fails_on_future_exception_never_retrieved(run):
    async def main():
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(ValueError("never retrieved"))
        del fut

    with pytest.raises(pytest.fail.Exception, match="exception was never retrieved"):
        run(main)


def test_harness_fails_on_task_destroyed_pending(run):
    async def main():
        never = asyncio.get_running_loop().create_future()

        async def waiter():
            await never

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # let it start and block on `never`
        del task, never
        gc.collect()

    with pytest.raises(pytest.fail.Exception, match="Task was destroyed but it is pending"):
        run(main)


def test_harness_fails_on_error_in_callback(run):
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fut.set_result(1)
        done = asyncio.Event()

        def set_twice():
            try:
                fut.set_result(2)  # InvalidStateError, reported to the exception handler
            finally:
                done.set()

        loop.call_soon(set_twice)
        await done.wait()

    with pytest.raises(pytest.fail.Exception, match="InvalidStateError"):
        run(main)


def test_harness_fails_on_unraisable_exception(run):
    class Explodes:
        def __del__(self):
            raise RuntimeError("boom in __del__")

    async def main():
        Explodes()

    with pytest.raises(pytest.fail.Exception, match="boom in __del__"):
        run(main)


def test_harness_keeps_the_test_error_and_forwards_unraisables(loop_kind):
    """When the test itself fails, its error wins and unraisables go to the previous hook
    (pytest's), so they are reported too."""
    seen = []

    class Explodes:
        def __del__(self):
            raise RuntimeError("boom in __del__")

    async def main():
        Explodes()
        raise KeyError("the test's own error")

    prev = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with pytest.raises(KeyError, match="the test's own error"):
            Runner(loop_kind)(main)
    finally:
        sys.unraisablehook = prev
    assert [str(u.exc_value) for u in seen] == ["boom in __del__"]


def test_harness_fails_on_hang_instead_of_hanging(run):
    async def main():
        await asyncio.get_running_loop().create_future()

    with pytest.raises(asyncio.TimeoutError):
        run(main, timeout=0.05)
    assert DEFAULT_TIMEOUT < 60  # below pytest-timeout, so a hang fails only its own test


def test_harness_pytest_config_turns_unraisable_into_failure(tmp_path):
    """Outside ``run``, pytest itself must fail a test that leaves an unraisable exception:
    the suite's own ini (``filterwarnings = ["error"]``) turns
    ``PytestUnraisableExceptionWarning`` into an error. Checked with the real pyproject."""
    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            """
            class Explodes:
                def __del__(self):
                    raise RuntimeError("boom in __del__")

            def test_leaves_unraisable():
                Explodes()

            def test_clean():
                assert True
            """
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(pyproject),
            "--rootdir",
            str(tmp_path),
            "-q",
            str(test_file),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "PytestUnraisableExceptionWarning" in out, out
    assert "boom in __del__" in out, out

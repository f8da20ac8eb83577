"""Python cancels, Rust stops (``future_into_py``, Python awaiting Rust): rules C3 (default and
cooperative modes, the crossing's token, work spawned from a crossing, shield, eager tasks) and
C5 (a cancellation returned by Rust ends the awaiter's future cancelled, not failed).

The Rust side reports to a ``bridge_pytests.Probe``: it counts starts, finishes and drops of
the Rust futures, and each drop records, from inside the destructor and without touching
Python, the thread it ran on and what the crossing's scope showed there
(``cancellation_token()`` and ``cancellation_reason()``). Python waits for those counts with
``probe.wait(what, n)`` under a deadline; nothing here synchronises by sleeping.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import pytest

import bridge_pytests as b
from conftest import exception_handler

#: Upper bound for anything a test waits for; the Rust work that must be dropped would run
#: for ``LONG`` (or forever), so a drop within ``DEADLINE`` is prompt.
DEADLINE = 5.0
LONG = 30.0
RUNTIME_THREAD = "pyo3-async-bridge-worker"

#: ``Task.cancelling()`` and ``uncancel()`` exist from 3.11 on.
HAS_CANCELLING = sys.version_info >= (3, 11)
#: Before 3.11 asyncio drops a task's cancel message (`task.result()` raises a bare
#: `CancelledError`), so a message cannot cross a task there.
TASK_KEEPS_CANCEL_MESSAGE = sys.version_info >= (3, 11)

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="needs 3.11+")
needs_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="needs 3.12+")


async def wait(probe, what: str, n: int = 1) -> None:
    """Waits until ``probe``'s count ``what`` reaches ``n``; fails after ``DEADLINE``."""
    await asyncio.wait_for(probe.wait(what, n), DEADLINE)


async def wait_event(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), DEADLINE)


async def awaiting(fut):
    """A coroutine awaiting ``fut`` (``TaskGroup.create_task`` takes coroutines only)."""
    return await fut


async def turns(n: int = 10) -> None:
    """Lets the loop run ``n`` rounds of callbacks (never a timed sleep)."""
    for _ in range(n):
        await asyncio.sleep(0)


def cancelling() -> int | None:
    """The current task's ``cancelling()``, or ``None`` before 3.11."""
    return asyncio.current_task().cancelling() if HAS_CANCELLING else None


def assert_dropped_in_scope(probe, reason) -> None:
    """The probe's Rust future was dropped exactly once, unfinished, on a runtime thread, inside
    its crossing's scope, with the token fired and ``reason`` visible."""
    assert probe.finished == 0, "the Rust future must be dropped, not run to its end"
    assert probe.dropped == 1
    (drop,) = probe.drops()
    assert drop["thread"] == RUNTIME_THREAD
    assert drop["on_loop_thread"] is False
    assert drop["token"] is True, "the drop must run inside the crossing, after its token fired"
    assert drop["reason"] == reason


# --- C3, default mode: every way Python cancels fires the token and drops the Rust future ----


def test_c3_future_cancel_msg_drops_rust_future_in_scope(run):
    async def main():
        probe = b.Probe()
        fut = b.probe_work(probe)
        await wait(probe, "started")
        assert probe.token_fired() is False
        assert fut.cancel("stop-fut") is True
        with pytest.raises(asyncio.CancelledError) as caught:
            await fut
        assert caught.value.args == ("stop-fut",)
        assert fut.cancelled()
        await wait(probe, "dropped")
        assert probe.token_fired() is True
        return probe

    assert_dropped_in_scope(run(main), "stop-fut")


def test_c3_non_string_cancel_message_reaches_rust_as_its_str(run):
    # Both modes record str(msg): the reason is the same whichever way the crossing was made.
    async def main():
        probe = b.Probe()
        fut = b.probe_work(probe)
        await wait(probe, "started")
        assert fut.cancel(42) is True
        with pytest.raises(asyncio.CancelledError):
            await fut
        await wait(probe, "dropped")
        coop = b.cooperative_wait(events := [], 0, "v")
        await turns()
        assert coop.cancel(42) is True
        with pytest.raises(asyncio.CancelledError):
            await coop
        return probe, events

    probe, events = run(main)
    assert_dropped_in_scope(probe, "42")
    assert events == ["cancelled:42", "cleaned"]


def test_c3_task_cancel_msg_drops_rust_future_in_scope(run):
    async def main():
        probe = b.Probe()
        seen = {}

        async def awaiter():
            try:
                await b.probe_work(probe)
            except asyncio.CancelledError as e:
                seen["args"] = e.args
                seen["cancelling"] = cancelling()
                raise

        task = asyncio.create_task(awaiter())
        await wait(probe, "started")
        task.cancel("stop-task")
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        await wait(probe, "dropped")
        return probe, seen

    probe, seen = run(main)
    assert seen["args"] == ("stop-task",)
    assert seen["cancelling"] == (1 if HAS_CANCELLING else None)
    assert_dropped_in_scope(probe, "stop-task")


@needs_311
def test_c3_asyncio_timeout_gives_timeout_error_and_drops_rust_future(run):
    async def main():
        probe = b.Probe()
        fut = b.probe_work(probe, secs=LONG)
        await wait(probe, "started")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await fut
        # The timeout uncancelled the task it cancelled: the count is back to 0.
        after = asyncio.current_task().cancelling()
        assert fut.cancelled()
        await wait(probe, "dropped")
        return probe, after

    probe, after = run(main)
    assert after == 0
    assert_dropped_in_scope(probe, None)


def test_c3_wait_for_gives_timeout_error_and_drops_rust_future(run):
    async def main():
        probe = b.Probe()
        fut = b.probe_work(probe, secs=LONG)
        await wait(probe, "started")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fut, 0.01)
        after = cancelling()
        assert fut.cancelled()
        await wait(probe, "dropped")
        return probe, after

    probe, after = run(main)
    assert after == (0 if HAS_CANCELLING else None)
    assert_dropped_in_scope(probe, None)


@needs_311
def test_c3_taskgroup_abort_drops_rust_future(run):
    async def main():
        probe = b.Probe()
        member = None

        async def failing():
            await wait(probe, "started")
            raise ValueError("member failed")

        with pytest.raises(ExceptionGroup) as caught:  # noqa: F821 - builtin from 3.11
            async with asyncio.TaskGroup() as tg:
                member = tg.create_task(awaiting(b.probe_work(probe)))
                tg.create_task(failing())
                # The body waits, so the group's abort cancels it too. (A body already in
                # __aexit__ would leave cancelling() at 1 on 3.11: CPython gh-116720.)
                await asyncio.sleep(LONG)
        assert [type(e) for e in caught.value.exceptions] == [ValueError]
        assert member.cancelled()
        after = asyncio.current_task().cancelling()
        await wait(probe, "dropped")
        return probe, after

    probe, after = run(main)
    assert after == 0
    assert_dropped_in_scope(probe, None)


def test_c3_gather_cancellation_drops_every_rust_future(run):
    async def main():
        probes = [b.Probe() for _ in range(3)]
        seen = {}

        async def awaiter():
            try:
                await asyncio.gather(*(b.probe_work(p) for p in probes))
            except asyncio.CancelledError as e:
                seen["args"] = e.args
                raise

        task = asyncio.create_task(awaiter())
        for p in probes:
            await wait(p, "started")
        task.cancel("stop-gather")
        with pytest.raises(asyncio.CancelledError):
            await task
        for p in probes:
            await wait(p, "dropped")
        return probes, seen

    probes, seen = run(main)
    assert seen["args"] == ("stop-gather",)
    for p in probes:
        assert_dropped_in_scope(p, "stop-gather")


def test_c3_gather_cancel_msg_directly_drops_every_rust_future(run):
    async def main():
        probes = [b.Probe() for _ in range(2)]
        gathered = asyncio.gather(*(b.probe_work(p) for p in probes))
        for p in probes:
            await wait(p, "started")
        assert gathered.cancel("stop-gathered") is True
        with pytest.raises(asyncio.CancelledError):
            await gathered
        for p in probes:
            await wait(p, "dropped")
        return probes

    for p in run(main):
        assert_dropped_in_scope(p, "stop-gathered")


def test_c3_unreferenced_crossing_runs_to_its_end_like_a_task(run):
    # Dropping every reference to a running crossing's future neither cancels it nor loses it:
    # the bridge holds it until the outcome arrives, then lets go (as asyncio does for a task).
    async def main():
        probe = b.Probe()
        fut = b.probe_work(probe, "the value")
        ref = weakref.ref(fut)
        await wait(probe, "started")
        del fut
        gc.collect()
        assert ref() is not None, "the bridge must hold a running crossing's future"
        assert probe.token_fired() is False
        probe.release()
        await wait(probe, "finished")
        await wait(probe, "dropped")
        await turns()
        gc.collect()
        assert ref() is None, "the bridge must let go of the future once it is done"
        return probe

    probe = run(main)
    assert probe.finished == 1
    (drop,) = probe.drops()
    assert drop["token"] is False


# --- C3: the token does not fire on success; a cancelled crossing stops its children ---------


def test_c3_child_spawned_from_crossing_survives_its_success(run):
    async def main():
        child = b.Probe()
        fut = b.spawn_child(child)
        assert await fut == "spawned"
        await wait(child, "started")
        # The crossing has returned and its future is gone: still no token fired.
        del fut
        gc.collect()
        await turns()
        assert child.token_fired() is False
        assert child.dropped == 0
        # The child runs on: it does something Python can see only after this release.
        child.release()
        await wait(child, "finished")
        await wait(child, "notes", 2)
        await wait(child, "dropped")
        return child

    child = run(main)
    assert child.finished == 1
    assert child.notes == ["token_fired:false", "join:some"]
    (drop,) = child.drops()
    assert drop["token"] is False
    assert drop["reason"] is None
    assert drop["thread"] == RUNTIME_THREAD


def test_c3_cancelled_crossing_drops_its_spawned_child(run):
    async def main():
        child, parent = b.Probe(), b.Probe()
        fut = b.spawn_child(child, parent)
        await wait(parent, "started")
        await wait(child, "started")
        assert fut.cancel("stop-parent") is True
        with pytest.raises(asyncio.CancelledError):
            await fut
        await wait(parent, "dropped")
        await wait(child, "dropped")
        await wait(child, "notes")
        return child, parent

    child, parent = run(main)
    assert_dropped_in_scope(parent, "stop-parent")
    # The child's JoinHandle gave None: it was dropped, in scope, with the parent's reason.
    assert child.notes == ["join:none"]
    assert_dropped_in_scope(child, "stop-parent")


# --- C3, cooperative mode ----------------------------------------------------------------------


def test_c3_cooperative_cancel_keeps_future_pending_until_rust_finishes(run):
    async def main():
        probe = b.Probe()
        fut = b.cooperative_probe(probe, "the value")
        await wait(probe, "started")
        assert fut.cancel("coop-stop") is True
        assert not fut.done()
        # Rust saw the token fire with Python's message and is cleaning up: still pending.
        await wait(probe, "notes")
        assert probe.notes == ["cancelled:coop-stop"]
        await turns()
        assert not fut.done()
        assert fut.cancel("again") is True, "a pending cancellation still reports True"
        probe.release()
        with pytest.raises(asyncio.CancelledError) as caught:
            await fut
        # Rust returned a value, but the future ends cancelled, with the first message.
        assert caught.value.args == ("coop-stop",)
        assert fut.cancelled()
        return probe

    probe = run(main)
    assert probe.notes == ["cancelled:coop-stop", "cleaned"]
    assert probe.finished == 1
    assert probe.dropped == 1
    (drop,) = probe.drops()
    assert drop["thread"] == RUNTIME_THREAD and drop["on_loop_thread"] is False
    assert drop["token"] is True and drop["reason"] == "coop-stop"


@needs_311
def test_c3_cooperative_asyncio_timeout_raises_only_after_cleanup(run):
    async def main():
        events = []
        at_timeout = None
        try:
            async with asyncio.timeout(0.01):
                await b.cooperative_wait(events, 0.05, "the value")
        except TimeoutError:
            at_timeout = list(events)
        return at_timeout, asyncio.current_task().cancelling()

    at_timeout, after = run(main)
    # asyncio.timeout cancels without a message: the reason is empty.
    assert at_timeout == ["cancelled:", "cleaned"]
    assert after == 0


@needs_311
def test_c3_cooperative_asyncio_timeout_waits_for_gated_cleanup(run):
    async def main():
        probe = b.Probe()

        async def awaiter():
            async with asyncio.timeout(0.01):
                await b.cooperative_probe(probe, "the value")

        task = asyncio.create_task(awaiter())
        await wait(probe, "notes")
        await turns()
        assert not task.done(), "the timeout must wait for Rust's cleanup"
        probe.release()
        with pytest.raises(TimeoutError):
            await task
        return probe

    probe = run(main)
    assert probe.notes == ["cancelled:<none>", "cleaned"]


def test_c3_cooperative_task_cancel_raises_after_cleanup(run):
    async def main():
        probe = b.Probe()
        seen = {}

        async def awaiter():
            try:
                await b.cooperative_probe(probe, "the value")
            except asyncio.CancelledError as e:
                seen["args"] = e.args
                seen["notes"] = probe.notes
                seen["cancelling"] = cancelling()
                raise

        task = asyncio.create_task(awaiter())
        await wait(probe, "started")
        task.cancel("task-stop")
        await wait(probe, "notes")
        await turns()
        assert not task.done()
        probe.release()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    seen = run(main)
    assert seen["args"] == ("task-stop",)
    assert seen["notes"] == ["cancelled:task-stop", "cleaned"]
    assert seen["cancelling"] == (1 if HAS_CANCELLING else None)


def test_c3_cooperative_grace_drops_a_rust_future_that_never_finishes(run):
    async def main():
        loop = asyncio.get_running_loop()
        probe = b.Probe()
        fut = b.cooperative_probe(probe, "the value", grace=0.1, stuck=True)
        await wait(probe, "started")
        cancelled_at = loop.time()
        assert fut.cancel("grace-stop") is True
        await wait(probe, "notes")
        assert not fut.done()
        with pytest.raises(asyncio.CancelledError) as caught:
            await fut
        elapsed = loop.time() - cancelled_at
        assert caught.value.args == ("grace-stop",)
        assert fut.cancelled()
        # The future ends only once the Rust future is gone.
        assert probe.dropped == 1
        return probe, elapsed

    probe, elapsed = run(main)
    assert elapsed >= 0.09, f"dropped {elapsed:.3f} s after the cancel, before the grace period"
    assert probe.notes == ["cancelled:grace-stop"]
    assert_dropped_in_scope(probe, "grace-stop")


def test_c3_cooperative_completing_normally_delivers_its_value(run):
    async def main():
        probe = b.Probe()
        fut = b.cooperative_probe(probe, "the value", wait_token=False)
        value = await fut
        await wait(probe, "dropped")
        return probe, value, fut.cancelled()

    probe, value, cancelled = run(main)
    assert value == "the value"
    assert cancelled is False
    assert probe.finished == 1
    assert probe.token_fired() is False
    (drop,) = probe.drops()
    assert drop["token"] is False


def test_c3_cooperative_cancel_on_done_future_returns_false(run):
    async def main():
        probe = b.Probe()
        fut = b.cooperative_probe(probe, "the value", wait_token=False)
        assert await fut == "the value"
        refused = fut.cancel("too late")
        await turns()
        return probe, refused, fut.cancelled(), fut.result()

    probe, refused, cancelled, result = run(main)
    assert refused is False
    assert cancelled is False
    assert result == "the value"
    assert probe.token_fired() is False


def test_c3_cooperative_rust_error_after_cancel_still_ends_cancelled(run):
    async def main():
        probe = b.Probe()
        fut = b.cooperative_probe(probe, "the value", fail="cleanup failed")
        await wait(probe, "started")
        assert fut.cancel("coop-err") is True
        await wait(probe, "notes")
        probe.release()
        with pytest.raises(asyncio.CancelledError) as caught:
            await fut
        assert fut.cancelled()
        return probe, caught.value.args

    probe, args = run(main)
    assert probe.notes == ["cancelled:coop-err", "cleaned"]
    assert probe.finished == 1
    # The cancellation carries Python's message, not the text of the discarded Rust error.
    assert args == ("coop-err",)


# --- C5: a cancellation returned by Rust ends the awaiter's future cancelled --------------------


async def _forever(started: asyncio.Event) -> None:
    started.set()
    await asyncio.Event().wait()


def test_c5_cancelled_python_task_through_question_mark_ends_outer_cancelled(run):
    async def main():
        started = asyncio.Event()
        inner = asyncio.create_task(_forever(started))
        outer = b.await_with_question_mark(inner)
        await wait_event(started)
        inner.cancel("inner-stop")
        try:
            await outer
        except asyncio.CancelledError as e:
            args, after = e.args, cancelling()
        else:
            raise AssertionError("the outer future must end cancelled")
        return outer.cancelled(), args, after

    cancelled, args, after = run(main)
    assert cancelled is True
    assert args == (("inner-stop",) if TASK_KEEPS_CANCEL_MESSAGE else ())
    assert after == (0 if HAS_CANCELLING else None)


def test_c5_coroutine_raising_cancelled_error_ends_outer_cancelled(run):
    async def raises():
        await asyncio.sleep(0)
        raise asyncio.CancelledError("raised-inside")

    async def main():
        outer = b.await_with_question_mark(raises())
        try:
            await outer
        except asyncio.CancelledError as e:
            args, after = e.args, cancelling()
        else:
            raise AssertionError("the outer future must end cancelled")
        return outer.cancelled(), args, after

    cancelled, args, after = run(main)
    assert cancelled is True
    assert args == (("raised-inside",) if TASK_KEEPS_CANCEL_MESSAGE else ())
    assert after == (0 if HAS_CANCELLING else None)


def test_c5_rust_made_cancelled_error_ends_outer_cancelled(run):
    async def main():
        outer = b.return_cancelled("made-in-rust")
        seen = {}

        async def awaiter():
            try:
                await outer
            except asyncio.CancelledError as e:
                seen["args"], seen["cancelling"] = e.args, cancelling()
                raise

        task = asyncio.create_task(awaiter())
        with pytest.raises(asyncio.CancelledError):
            await task
        return outer.cancelled(), seen

    cancelled, seen = run(main)
    assert cancelled is True
    assert seen["args"] == ("made-in-rust",)
    assert seen["cancelling"] == (0 if HAS_CANCELLING else None)


def test_c5_ordinary_exception_stays_an_exception(run):
    async def raises():
        await asyncio.sleep(0)
        raise ValueError("plain failure")

    async def main():
        outer = b.await_with_question_mark(raises())
        with pytest.raises(ValueError, match="plain failure"):
            await outer
        return outer.cancelled(), type(outer.exception())

    assert run(main) == (False, ValueError)


async def _cancelled_task():
    started = asyncio.Event()
    task = asyncio.create_task(_forever(started))
    await wait_event(started)
    task.cancel("cancelled task")
    return task


async def _raising(exc):
    await asyncio.sleep(0)
    raise exc


def _coroutine_raising(exc):
    """An async builder of a coroutine that raises ``exc``."""

    async def build():
        return _raising(exc)

    return build


async def _coroutine_returning():
    async def returning():
        await asyncio.sleep(0)
        return "fine"

    return returning()


@pytest.mark.parametrize(
    "build, expected",
    [
        (_cancelled_task, True),
        (_coroutine_raising(asyncio.CancelledError("raised")), True),
        (_coroutine_raising(TimeoutError("timed out")), False),
        (_coroutine_raising(asyncio.TimeoutError("asyncio timed out")), False),
        (_coroutine_raising(ValueError("plain")), False),
        (_coroutine_returning, None),
    ],
    ids=["cancelled-task", "raised-cancelled", "timeout", "asyncio-timeout", "value", "ok"],
)
def test_c5_is_cancellation(run, build, expected):
    # `None`: the awaitable succeeded; else `is_cancellation` of the error Rust received.
    async def main():
        return await b.is_cancellation_of(await build())

    assert run(main) is expected


# --- C3: asyncio.shield keeps the Rust work running -------------------------------------------


def test_c3_shield_keeps_rust_work_running_when_outer_is_cancelled(run):
    async def main():
        probe = b.Probe()
        fut = b.probe_work(probe, "shielded value")

        async def awaiter():
            await asyncio.shield(fut)

        task = asyncio.create_task(awaiter())
        await wait(probe, "started")
        task.cancel("outer-stop")
        with pytest.raises(asyncio.CancelledError):
            await task
        await turns()
        assert probe.token_fired() is False
        assert not fut.done()
        probe.release()
        value = await fut
        await wait(probe, "dropped")
        return probe, value

    probe, value = run(main)
    assert value == "shielded value"
    assert probe.finished == 1
    (drop,) = probe.drops()
    assert drop["token"] is False, "shield must keep the token from firing"
    assert drop["reason"] is None


def test_c3_shield_unreferenced_crossing_keeps_running_when_outer_is_cancelled(run):
    # The usual idiom: nothing but the shield refers to the crossing's future.
    async def main():
        probe = b.Probe()

        async def awaiter():
            await asyncio.shield(b.probe_work(probe, "shielded value"))

        task = asyncio.create_task(awaiter())
        await wait(probe, "started")
        task.cancel("outer-stop")
        with pytest.raises(asyncio.CancelledError):
            await task
        gc.collect()
        await turns()
        assert probe.token_fired() is False, (
            "the shielded crossing was stopped when the outer task was cancelled "
            f"(dropped {probe.dropped}: {probe.drops()})"
        )
        probe.release()
        await wait(probe, "finished")
        await wait(probe, "dropped")
        return probe

    probe = run(main)
    assert probe.finished == 1
    (drop,) = probe.drops()
    assert drop["token"] is False


def test_c3_shield_failing_rust_work_is_reported_like_a_shielded_task(run):
    # After the outer is cancelled, shield stops listening to the inner future; an error the
    # Rust work ends with is nobody's to retrieve, and asyncio reports it exactly as it does
    # for a shielded task. The bridge adds nothing: one report, of the Rust error.
    async def main():
        loop = asyncio.get_running_loop()
        harness_handler = loop.get_exception_handler()
        reports = []
        loop.set_exception_handler(exception_handler(reports.append))
        try:
            probe = b.Probe()

            async def awaiter():
                await asyncio.shield(b.probe_work(probe, fail="shielded failure"))

            task = asyncio.create_task(awaiter())
            await wait(probe, "started")
            task.cancel("outer-stop")
            with pytest.raises(asyncio.CancelledError):
                await task
            assert probe.token_fired() is False
            probe.release()
            await wait(probe, "finished")
            await wait(probe, "dropped")
            await turns()
            gc.collect()
            await turns()
        finally:
            loop.set_exception_handler(harness_handler)
        return probe, reports

    probe, reports = run(main)
    assert probe.finished == 1
    assert len(reports) == 1, reports
    assert "exception was never retrieved" in reports[0]["message"]
    assert isinstance(reports[0]["exception"], ValueError)
    assert str(reports[0]["exception"]) == "shielded failure"


def test_c3_shield_held_failing_crossing_raises_to_whoever_awaits_it(run):
    async def main():
        probe = b.Probe()
        fut = b.probe_work(probe, fail="shielded failure")

        async def awaiter():
            await asyncio.shield(fut)

        task = asyncio.create_task(awaiter())
        await wait(probe, "started")
        task.cancel("outer-stop")
        with pytest.raises(asyncio.CancelledError):
            await task
        await turns()
        assert probe.token_fired() is False
        probe.release()
        with pytest.raises(ValueError, match="shielded failure"):
            await fut
        await wait(probe, "dropped")
        return probe

    probe = run(main)
    assert probe.finished == 1
    (drop,) = probe.drops()
    assert drop["token"] is False


# --- C3 with CPython 3.12's eager task factory --------------------------------------------------


@needs_312
def test_c3_eager_task_factory_crossings_and_cancellation(run, loop_kind):
    if loop_kind == "uvloop" and sys.version_info >= (3, 13):
        # uvloop's create_task passes `eager_start`, which 3.13's eager_task_factory rejects:
        # asyncio.create_task itself fails there, before any crossing.
        pytest.skip("uvloop cannot use eager_task_factory on 3.13+")

    async def main():
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)

        # Python awaits Rust, from an eager task.
        async def py_awaits_rust():
            return await b.sleep_then(0.001, "from rust")

        assert await asyncio.create_task(py_awaits_rust()) == "from rust"

        # Rust awaits Python: a coroutine that finishes eagerly, and one that suspends.
        async def done_at_once():
            return "eager"

        async def suspends():
            await asyncio.sleep(0)
            return "suspended"

        assert await b.await_py(done_at_once()) == "eager"
        assert await b.await_py(suspends()) == "suspended"

        # Python cancels Rust: an eager task awaiting a crossing.
        probe = b.Probe()
        seen = {}

        async def awaiter():
            try:
                await b.probe_work(probe)
            except asyncio.CancelledError as e:
                seen["args"] = e.args
                raise

        task = asyncio.create_task(awaiter())
        await wait(probe, "started")
        task.cancel("eager-stop")
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait(probe, "dropped")

        # Rust stops, Python stops: cancelling a crossing cancels the eager task it awaits.
        started, finished = asyncio.Event(), asyncio.Event()
        victim_args = []

        async def victim():
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError as e:
                victim_args.append(e.args)
                raise
            finally:
                finished.set()

        outer = b.await_py(victim())
        await wait_event(started)
        assert outer.cancel("outer-stop") is True
        await wait_event(finished)
        with pytest.raises(asyncio.CancelledError):
            await outer
        return probe, seen, victim_args

    probe, seen, victim_args = run(main)
    assert seen["args"] == ("eager-stop",)
    assert_dropped_in_scope(probe, "eager-stop")
    assert victim_args == [(b.DROP_CANCEL_MESSAGE,)]

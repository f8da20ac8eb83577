"""Python awaits Rust (``future_into_py``): rules C2 (values, errors and panics cross intact)
and C7 (a real asyncio future, settled exactly once)."""

from __future__ import annotations

import asyncio
import gc
import sys
import traceback
import weakref

import pytest

import bridge_pytests as b
from bridge_pytests import RustPanic

LONG = 30.0  # a sleep that never finishes within a test: such futures are always cancelled


async def assert_bridge_still_works():
    """A few crossings of every kind after a failure: the runtime and the loop are fine."""
    assert await b.ready("still") == "still"
    assert await b.add_one(41) == 42
    assert await b.unit() is None
    assert await b.sleep_then(0.001, "slept") == "slept"
    assert await asyncio.gather(*(b.add_one(i) for i in range(50))) == list(range(1, 51))


# --- C2: values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -(2**70), 1.5, "text", b"bytes", None, (1, "a"), [1, [2]], {"k": {1, 2}}],
    ids=repr,
)
def test_c2_value_arrives_converted(run, value):
    async def main():
        return await b.ready(value), await b.sleep_then(0.001, value)

    assert run(main) == (value, value)


def test_c2_value_is_the_same_object(run):
    sentinel = object()

    async def main():
        return await b.ready(sentinel), await b.sleep_then(0.001, sentinel)

    got_ready, got_sleep = run(main)
    assert got_ready is sentinel
    assert got_sleep is sentinel


def test_c2_rust_integer_arrives_as_python_int(run):
    async def main():
        return await b.add_one(41), await b.add_one(-(2**63))

    got, low = run(main)
    assert got == 42 and type(got) is int
    assert low == -(2**63) + 1


def test_c2_unit_arrives_as_none(run):
    async def main():
        fut = b.unit()
        return await fut, fut.result()

    awaited, result = run(main)
    assert awaited is None
    assert result is None


# --- C2: errors ---------------------------------------------------------------------------


def _make_chained_error():
    """A ValueError raised ``from`` a KeyError, caught: it has a cause and a traceback."""

    def deep_origin():
        raise ValueError("the original error")

    try:
        try:
            {}["missing"]
        except KeyError as cause:
            try:
                deep_origin()
            except ValueError as exc:
                raise exc from cause
    except ValueError as caught:
        return caught
    raise AssertionError("unreachable")


def _tb_chain(tb):
    out = []
    while tb is not None:
        out.append(tb)
        tb = tb.tb_next
    return out


def test_c2_error_is_the_same_object_with_cause_and_traceback(run):
    exc = _make_chained_error()
    cause = exc.__cause__
    original_tb = exc.__traceback__
    original_frames = [f.name for f in traceback.extract_tb(original_tb)]
    assert isinstance(cause, KeyError) and original_tb is not None
    assert "deep_origin" in original_frames

    async def main():
        with pytest.raises(ValueError) as info:
            await b.raise_(exc)
        return info.value

    got = run(main)
    assert got is exc
    assert got.__cause__ is cause
    assert got.__suppress_context__ is True
    # Re-raising prepends frames; the original traceback must still be the tail of the chain.
    assert original_tb in _tb_chain(got.__traceback__)
    frames = [f.name for f in traceback.extract_tb(got.__traceback__)]
    assert frames[-len(original_frames):] == original_frames


def test_c2_error_with_context_keeps_context(run):
    try:
        try:
            raise OSError("first")
        except OSError:
            raise LookupError("during handling")
    except LookupError as caught:
        exc = caught
    context = exc.__context__

    async def main():
        try:
            await b.raise_(exc)
        except LookupError as got:
            return got
        raise AssertionError("no error")

    got = run(main)
    assert got is exc
    assert got.__context__ is context and isinstance(context, OSError)
    assert got.__cause__ is None


def test_c2_error_subclass_and_base_exception_cross(run):
    class Custom(Exception):
        pass

    custom = Custom("custom")
    interrupt = KeyboardInterrupt("not really")

    async def main():
        out = []
        for exc in (custom, interrupt):
            fut = b.raise_(exc)
            try:
                await fut
            except BaseException as got:  # noqa: B902 - KeyboardInterrupt is the point
                out.append(got)
        return out

    got_custom, got_interrupt = run(main)
    assert got_custom is custom
    assert got_interrupt is interrupt


def test_c2_lazy_error_is_a_value_error_with_its_message(run):
    async def main():
        with pytest.raises(ValueError) as info:
            await b.raise_lazy("made on the runtime thread")
        await assert_bridge_still_works()
        return info.value

    exc = run(main)
    assert type(exc) is ValueError
    assert str(exc) == "made on the runtime thread"


# --- C2: panics ---------------------------------------------------------------------------


def test_c2_rust_panic_is_an_exception_subclass():
    assert issubclass(RustPanic, Exception)
    assert RustPanic is b.RustPanic and RustPanic.__name__ == "RustPanic"


def test_c2_panic_with_string_payload_raises_rust_panic_with_message(run):
    message = "formatted panic: 7 ≠ 8"

    async def main():
        with pytest.raises(RustPanic) as info:
            await b.panic_with(message, False)
        await assert_bridge_still_works()
        return info.value

    exc = run(main)
    assert type(exc) is RustPanic
    assert str(exc) == message


def test_c2_panic_with_static_str_payload_raises_rust_panic_with_message(run):
    async def main():
        with pytest.raises(RustPanic) as info:
            await b.panic_with("ignored", True)
        await assert_bridge_still_works()
        return info.value

    exc = run(main)
    assert str(exc) == "static panic message"


def test_c2_many_panics_do_not_poison_the_runtime(run):
    async def main():
        results = await asyncio.gather(
            *(b.panic_with(f"panic {i}", i % 2 == 0) for i in range(32)),
            return_exceptions=True,
        )
        await assert_bridge_still_works()
        return results

    results = run(main)
    assert all(type(r) is RustPanic for r in results)
    assert [str(r) for r in results] == [
        "static panic message" if i % 2 == 0 else f"panic {i}" for i in range(32)
    ]


# --- C2: conversions ----------------------------------------------------------------------


def test_c2_failing_conversion_fails_only_that_future(run):
    async def main():
        before = b.sleep_then(0.001, "before")
        bad = b.bad_conversion(False)
        after = b.sleep_then(0.001, "after")
        results = await asyncio.gather(before, bad, after, return_exceptions=True)
        await assert_bridge_still_works()
        return results

    before, bad, after = run(main)
    assert before == "before" and after == "after"
    assert type(bad) is ValueError
    assert str(bad) == "Unconvertible cannot become a Python object"


def test_c2_panicking_conversion_fails_only_that_future_with_rust_panic(run):
    async def main():
        neighbours = [b.add_one(i) for i in range(10)]
        bad = b.bad_conversion(True)
        results = await asyncio.gather(*neighbours, bad, return_exceptions=True)
        await assert_bridge_still_works()
        return results

    *neighbours, bad = run(main)
    assert neighbours == list(range(1, 11))
    assert type(bad) is RustPanic
    assert "conversion exploded" in str(bad)


# --- C7: a real asyncio future --------------------------------------------------------------


def test_c7_returns_a_real_asyncio_future_of_the_running_loop(run):
    async def main():
        loop = asyncio.get_running_loop()
        futs = [b.ready(1), b.sleep_then(0.001, 2), b.unit(), b.add_one(3), b.raise_lazy("x")]
        checks = [
            (asyncio.isfuture(f), isinstance(f, asyncio.Future), f.get_loop() is loop)
            for f in futs
        ]
        await asyncio.gather(*futs, return_exceptions=True)
        return checks

    assert run(main) == [(True, True, True)] * 5


def test_c7_gather(run):
    async def main():
        return await asyncio.gather(
            b.ready("a"), b.sleep_then(0.01, "b"), b.add_one(1), b.unit(), b.sleep_then(0, "c")
        )

    assert run(main) == ["a", "b", 2, None, "c"]


def test_c7_gather_propagates_the_first_error_and_others_still_settle(run):
    async def main():
        ok = b.sleep_then(0.01, "ok")
        with pytest.raises(ValueError, match="first"):
            await asyncio.gather(b.raise_lazy("first"), ok)
        # gather does not cancel its other children: it still settles, exactly once.
        return await ok

    assert run(main) == "ok"


def test_c7_shield(run):
    async def main():
        assert await asyncio.shield(b.sleep_then(0.001, "shielded")) == "shielded"

        inner = b.sleep_then(0.05, "inner survives")
        outer = asyncio.shield(inner)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert not inner.cancelled()
        return await inner

    assert run(main) == "inner survives"


def test_c7_wait(run):
    async def main():
        quick = b.ready("quick")
        slow = b.sleep_then(LONG, "slow")
        done, pending = await asyncio.wait({quick, slow}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {quick} and pending == {slow}
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

        a, c = b.add_one(1), b.sleep_then(0.01, "c")
        done, pending = await asyncio.wait({a, c})
        assert pending == set()
        return quick.result(), slow.cancelled(), sorted(map(str, (f.result() for f in done)))

    assert run(main) == ("quick", True, ["2", "c"])


def test_c7_wait_for(run):
    async def main():
        assert await asyncio.wait_for(b.sleep_then(0.001, "in time"), 5) == "in time"
        late = b.sleep_then(LONG, "late")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(late, 0.01)
        return late.cancelled()

    assert run(main) is True


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is 3.11+")
def test_c7_taskgroup(run):
    async def main():
        async def wrap(aw):
            return await aw

        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(wrap(b.ready("r"))),
                tg.create_task(wrap(b.sleep_then(0.001, "s"))),
                tg.create_task(wrap(b.add_one(9))),
            ]
        values = [t.result() for t in tasks]

        # A failing crossing cancels its pending siblings, bridge futures included.
        sibling = b.sleep_then(LONG, "never")
        with pytest.raises(BaseExceptionGroup) as info:  # noqa: F821 - 3.11+ builtin
            async with asyncio.TaskGroup() as tg:
                tg.create_task(wrap(sibling))
                tg.create_task(wrap(b.raise_lazy("group failure")))
        (err,) = info.value.exceptions
        assert type(err) is ValueError and str(err) == "group failure"
        return values, sibling.cancelled()

    assert run(main) == (["r", "s", 10], True)


# --- C7: cancellation and exactly once -------------------------------------------------------


def test_c7_cancel_pending_future_raises_cancelled_error(run):
    async def main():
        fut = b.sleep_then(LONG, "never")
        assert not fut.done()
        assert fut.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await fut
        assert fut.cancelled()
        # The Rust side finishing (as Cancelled) must not touch the done future.
        await assert_bridge_still_works()
        return fut.cancel()

    # A second cancel of a done future is refused; nothing reached the exception handler.
    assert run(main) is False


def test_c7_cancel_task_awaiting_the_future(run):
    async def main():
        fut = b.sleep_then(LONG, "never")
        awaiting = asyncio.Event()

        async def waiter():
            awaiting.set()
            return await fut

        task = asyncio.ensure_future(waiter())
        await awaiting.wait()  # `waiter` is now suspended on `fut`
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_bridge_still_works()
        return fut.cancelled(), task.cancelled()

    assert run(main) == (True, True)


def test_c7_cancel_many_pending_futures_and_complete_others(run):
    async def main():
        doomed = [b.sleep_then(LONG, i) for i in range(200)]
        quick = [b.sleep_then(0, i) for i in range(200)]
        for f in doomed:
            f.cancel()
        results = await asyncio.gather(*doomed, *quick, return_exceptions=True)
        return results

    results = run(main)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[:200])
    assert results[200:] == list(range(200))


def test_c7_cancel_racing_completion_settles_once(run):
    """Cancel futures whose Rust side is finishing at that very moment: either outcome is
    fine, but never both (an InvalidStateError would reach the handler or unraisablehook)."""

    async def main():
        outcomes = {"cancelled": 0, "value": 0}
        for _ in range(10):
            futs = [b.ready(i) for i in range(100)]
            # Give the runtime a head start on some of them without waiting for them.
            await asyncio.sleep(0)
            for f in futs[::2]:
                f.cancel()
            for i, r in enumerate(await asyncio.gather(*futs, return_exceptions=True)):
                if isinstance(r, asyncio.CancelledError):
                    outcomes["cancelled"] += 1
                else:
                    assert r == i
                    outcomes["value"] += 1
        return outcomes

    outcomes = run(main)
    assert outcomes["cancelled"] + outcomes["value"] == 1000
    assert outcomes["value"] >= 500  # the uncancelled half always delivers


def test_c7_many_crossings_each_deliver_exactly_one_result(run):
    n = 2000

    async def main():
        calls = [0] * n
        futs = []
        for i in range(n):
            kind = i % 4
            if kind == 0:
                f = b.add_one(i)
            elif kind == 1:
                f = b.ready(i)
            elif kind == 2:
                f = b.sleep_then(0.0005 * (i % 7), i)
            else:
                f = b.raise_lazy(str(i))

            def count(_f, i=i):
                calls[i] += 1

            f.add_done_callback(count)  # registered before gather's: runs first
            futs.append(f)
        results = await asyncio.gather(*futs, return_exceptions=True)
        return calls, results

    calls, results = run(main)
    assert calls == [1] * n
    for i, r in enumerate(results):
        kind = i % 4
        if kind == 0:
            assert r == i + 1
        elif kind in (1, 2):
            assert r == i
        else:
            assert type(r) is ValueError and str(r) == str(i)


def test_c7_future_done_callbacks_and_result_api(run):
    async def main():
        fut = b.sleep_then(0.001, "v")
        seen = []
        fut.add_done_callback(lambda f: seen.append(f.result()))
        assert await fut == "v"
        assert fut.done() and not fut.cancelled() and fut.exception() is None
        err = b.raise_lazy("boom")
        await asyncio.wait({err})
        return seen, type(err.exception()), str(err.exception())

    assert run(main) == (["v"], ValueError, "boom")


# --- C7: the Rust side of a cancelled or abandoned future is dropped --------------------------


async def wait_until(predicate, timeout=5.0):
    """Polls a condition that nothing on the Python side signals (a drop on a runtime thread),
    failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.001)


def test_c7_completed_future_drops_its_rust_future_once(run):
    async def main():
        before = b.rust_drops()
        assert await b.counted_sleep(0) is None
        # Dropped on the runtime thread before the outcome was queued.
        return b.rust_drops() - before

    assert run(main) == 1


def test_c7_cancelling_drops_the_rust_future(run):
    async def main():
        before = b.rust_drops()
        futs = [b.counted_sleep(LONG) for _ in range(10)]
        for f in futs:
            f.cancel()
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        await wait_until(lambda: b.rust_drops() - before >= 10)
        await assert_bridge_still_works()
        return b.rust_drops() - before

    assert run(main) == 10


def test_c7_unreferenced_crossing_runs_to_its_end_then_is_released(run):
    # Like an asyncio task, a crossing is kept alive while its Rust side runs, even when nobody
    # references its future (so `asyncio.shield(crossing)` protects the work), and released
    # once the outcome is delivered.
    async def main():
        before = b.rust_drops()
        fut = b.counted_sleep(0.2)
        ref = weakref.ref(fut)
        del fut
        gc.collect()
        assert ref() is not None, "the bridge must keep a running crossing's future alive"
        assert b.rust_drops() == before, "the Rust work must not be cancelled by a collection"
        await wait_until(lambda: b.rust_drops() - before >= 1)
        await wait_until(lambda: gc.collect() is not None and ref() is None)
        await assert_bridge_still_works()
        return b.rust_drops() - before

    assert run(main) == 1


def test_c7_outcome_asyncio_refuses_still_ends_the_future(run):
    # Before 3.12 `Future.set_exception(StopIteration())` raises TypeError; the bridge must
    # still end the future (with a RuntimeError), never leave the awaiter hanging.
    async def main():
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(b.raise_(StopIteration(1)), 10)
        return await b.add_one(1)

    assert run(main) == 2

"""Rust awaits Python (``into_future``): rule C8 (contextvars reach the awaited coroutine and
never flow back), C9 (misuse fails fast with a clear error, nothing hangs), and C2 for
values and errors travelling Python → Rust → Python."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading

import pytest

import bridge_pytests as b

VAR = contextvars.ContextVar("VAR", default="default")


# --- C2 through into_future ---------------------------------------------------------------------


def test_c2_coroutine_value_round_trips_through_rust(run):
    sentinel = object()

    async def coro():
        await asyncio.sleep(0)
        return sentinel

    async def main():
        return await b.await_py(coro())

    assert run(main) is sentinel


def test_c2_coroutine_error_round_trips_as_the_same_object(run):
    async def coro():
        await asyncio.sleep(0)
        try:
            raise KeyError("inner cause")
        except KeyError as cause:
            raise ValueError("raised by the coroutine") from cause

    async def main():
        with pytest.raises(ValueError, match="raised by the coroutine") as info:
            await b.await_py(coro())
        return info.value

    exc = run(main)
    assert isinstance(exc.__cause__, KeyError)
    # The coroutine's own frame is still in the traceback after the trip through Rust.
    names = []
    tb = exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "coro" in names


def test_c2_awaitables_of_every_kind(run):
    class CustomAwaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "custom"

    async def coro():
        return "coroutine"

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_soon(fut.set_result, "future")
        task = asyncio.ensure_future(coro())
        return await asyncio.gather(
            b.await_py(coro()),
            b.await_py(fut),
            b.await_py(task),
            b.await_py(CustomAwaitable()),
            b.await_py(b.sleep_then(0.01, "bridge future")),
            b.await_py(b.await_py(coro())),
        )

    assert run(main) == ["coroutine", "future", "coroutine", "custom", "bridge future", "coroutine"]


# asyncio holds tasks only weakly and a bridge future is only weakly held by its own crossing:
# what Rust awaits must be kept alive by the bridge itself until it is done (regression tests:
# both failed with "the Python awaitable was dropped ... (was its event loop closed?)" before
# into_future held its task strongly).


def test_c7_rust_awaits_an_unreferenced_bridge_future(run):
    async def main():
        # Nobody but the outer crossing references the inner bridge future.
        return await b.await_py(b.sleep_then(0.05, "inner"))

    assert run(main) == "inner"


def test_c7_rust_awaits_a_coroutine_that_awaits_a_bridge_future_across_gc(run):
    async def main():
        awaiting = asyncio.Event()

        async def inner():
            fut = b.sleep_then(0.05, "inner")
            awaiting.set()
            return await fut

        outer = b.await_py(inner())
        await awaiting.wait()
        # The task running `inner` and the bridge future it awaits form a cycle: only the
        # bridge's own strong reference to the task keeps it from being collected here.
        gc.collect()
        return await outer

    assert run(main) == "inner"


def test_c2_await_each_returns_results_in_order(run):
    async def coro(i):
        await asyncio.sleep(0)
        return i * i

    async def main():
        return await b.await_each([coro(i) for i in range(10)])

    assert run(main) == [i * i for i in range(10)]


def test_c2_await_each_stops_at_first_error(run):
    started = []

    async def coro(i):
        started.append(i)
        if i == 1:
            raise LookupError("second fails")
        return i

    async def main():
        coros = [coro(i) for i in range(3)]
        with pytest.raises(LookupError, match="second fails"):
            await b.await_each(coros)
        # The third was never handed to into_future; close it so it is not "never awaited".
        coros[2].close()
        return started

    assert run(main) == [0, 1]


# --- C8: contextvars through into_future ----------------------------------------------------------


def test_c8_coroutine_sees_var_set_before_the_call(run):
    async def reader():
        await asyncio.sleep(0)
        return VAR.get()

    async def main():
        VAR.set("set by caller")
        return await b.await_py(reader())

    assert run(main) == "set by caller"


def test_c8_coroutine_changes_do_not_flow_back_to_caller(run):
    async def writer():
        assert VAR.get() == "caller value"
        VAR.set("changed by coroutine")
        await asyncio.sleep(0)
        return VAR.get()

    async def main():
        VAR.set("caller value")
        inside = await b.await_py(writer())
        return inside, VAR.get()

    assert run(main) == ("changed by coroutine", "caller value")


def test_c8_await_each_coroutines_get_separate_copies(run):
    async def writer():
        seen = VAR.get()
        VAR.set("changed by first")
        return seen

    async def reader():
        return VAR.get()

    async def main():
        VAR.set("caller value")
        seen = await b.await_each([writer(), reader(), reader()])
        return seen, VAR.get()

    assert run(main) == (["caller value", "caller value", "caller value"], "caller value")


def test_c8_context_is_copied_at_the_call_not_at_the_await(run):
    async def reader():
        return VAR.get()

    async def main():
        VAR.set("at call")
        fut = b.await_py(reader())
        VAR.set("after call")
        return await fut, VAR.get()

    assert run(main) == ("at call", "after call")


def test_c8_into_future_now_coroutine_sees_callers_context(run):
    async def writer():
        seen = VAR.get()
        VAR.set("changed by coroutine")
        return seen

    async def main():
        VAR.set("at call")
        fut = b.into_future_now(writer())
        VAR.set("after call")
        return await fut, VAR.get()

    assert run(main) == ("at call", "after call")


def test_c8_concurrent_crossings_each_see_only_their_own_value(run):
    n = 2000

    async def reader(expected):
        for _ in range(3):
            assert VAR.get() == expected
            await asyncio.sleep(0)
        seen = VAR.get()
        VAR.set(("clobbered", expected))  # must stay inside this coroutine's copy
        return seen

    async def one(i):
        VAR.set(i)
        seen = await b.await_py(reader(i))
        return seen, VAR.get()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    results = run(main)
    assert results == [(i, i) for i in range(n)]


def test_c8_concurrent_nested_crossings_keep_their_values(run):
    """Python → Rust → Python → Rust: the inner crossing copies the coroutine's context."""

    async def innermost(expected):
        await asyncio.sleep(0)
        assert VAR.get() == expected
        return await b.read_var_inside(VAR)

    async def middle(i):
        VAR.set(("middle", i))
        return await b.await_py(innermost(("middle", i)))

    async def one(i):
        VAR.set(("outer", i))
        got = await b.await_py(middle(i))
        return got, VAR.get()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert run(main) == [(("middle", i), ("outer", i)) for i in range(200)]


# --- C9: misuse fails fast ------------------------------------------------------------------------

NOT_AWAITABLE = [42, None, "text", object(), [1], asyncio.sleep]


def test_c9_no_running_loop_raises_runtime_error_with_hint():
    with pytest.raises(RuntimeError) as info:
        b.ready(1)
    assert "asyncio.run(main())" in str(info.value)
    for call in (lambda: b.sleep_then(0, 1), lambda: b.unit(), lambda: b.locals_inside()):
        with pytest.raises(RuntimeError, match=r"asyncio\.run\(main\(\)\)"):
            call()


def test_c9_loop_that_exists_but_does_not_run_is_no_running_loop(loop_kind):
    from conftest import new_loop

    loop = new_loop(loop_kind)
    try:
        with pytest.raises(RuntimeError, match=r"asyncio\.run\(main\(\)\)"):
            b.ready(1)
    finally:
        loop.close()


def test_c9_no_running_loop_in_another_thread_while_a_loop_runs_here(run):
    async def main():
        errors = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def worker():
            try:
                b.ready(1)
            except RuntimeError as e:
                errors.append(str(e))
            finally:
                loop.call_soon_threadsafe(done.set)

        t = threading.Thread(target=worker)
        t.start()
        await done.wait()
        t.join()
        return errors

    (msg,) = run(main)
    assert "asyncio.run(main())" in msg


@pytest.mark.parametrize("obj", NOT_AWAITABLE, ids=lambda o: type(o).__name__)
def test_c9_await_py_non_awaitable_raises_type_error_at_await(run, obj):
    async def main():
        fut = b.await_py(obj)  # the call itself succeeds: into_future runs inside Rust
        assert asyncio.isfuture(fut)
        with pytest.raises(TypeError) as info:
            await fut
        return str(info.value)

    assert "is not awaitable" in run(main)


@pytest.mark.parametrize("obj", NOT_AWAITABLE, ids=lambda o: type(o).__name__)
def test_c9_into_future_now_non_awaitable_raises_type_error_at_call(run, obj):
    async def main():
        tasks_before = asyncio.all_tasks()
        with pytest.raises(TypeError) as info:
            b.into_future_now(obj)
        assert asyncio.all_tasks() == tasks_before
        return str(info.value)

    assert "is not awaitable" in run(main)


def test_c9_await_each_with_one_non_awaitable_fails_after_the_first(run):
    async def first():
        return "first ran"

    ran = []

    async def main():
        with pytest.raises(TypeError, match="is not awaitable"):
            await b.await_each([first(), 42])
        ran.append(True)
        # The bridge keeps working afterwards.
        return await b.await_py(first())

    assert run(main) == "first ran" and ran == [True]


def test_c9_misuse_leaves_the_bridge_working(run):
    async def coro():
        return "fine"

    async def main():
        for obj in NOT_AWAITABLE:
            with pytest.raises(TypeError):
                await b.await_py(obj)
            with pytest.raises(TypeError):
                b.into_future_now(obj)
        return await asyncio.gather(b.await_py(coro()), b.into_future_now(coro()), b.ready(1))

    assert run(main) == ["fine", "fine", 1]


def test_c8_into_future_on_the_loop_thread_creates_the_task_at_the_call(run):
    """On the loop thread the task is created at once, in a copy of the context of the call
    (regression: the running-loop check once compared the uncalled `_get_running_loop`, so the
    task was only created by the next drain)."""

    async def coro():
        return "ran"

    async def main():
        before = asyncio.all_tasks()
        fut = b.into_future_now(coro())
        created = asyncio.all_tasks() - before
        value = await fut
        assert len(created) == 1, "no task was created at the call"
        return value

    assert run(main) == "ran"


@pytest.mark.parametrize("not_a_loop", [object(), "loop", None], ids=lambda o: type(o).__name__)
def test_c9_object_that_is_not_a_loop_raises_type_error_at_first_crossing(run, not_a_loop):
    async def main():
        with pytest.raises(TypeError, match="not a usable asyncio event loop"):
            b.ready_on(not_a_loop, 1)
        # The real loop, through the same explicit-locals path, still works.
        return await b.ready_on(asyncio.get_running_loop(), "ok")

    assert run(main) == "ok"

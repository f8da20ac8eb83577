"""Rust awaits Python and stops awaiting: rules C4 (Rust drops, Python stops: a dropped
``PyFuture`` cancels its task with ``DROP_CANCEL_MESSAGE``, a never-started coroutine is
closed, ``detach()`` lets the task run), C5 (a cancelled task is a cancellation for Rust, an
ordinary exception is not) and C6 (chains Python -> Rust -> Python -> Rust of any depth,
TaskGroups nested through Rust).

Every Rust crossing here awaits Python from a runtime thread, so the awaited task is started
by a job queued to the loop thread. Waits are bounded by ``DEADLINE`` and wait on events, never
on sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys

import pytest

import bridge_pytests as b
from bridge_pytests import DROP_CANCEL_MESSAGE

#: Upper bound for every wait on an event in this file; reaching it fails the test.
DEADLINE = 10.0

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="needs 3.11+ (TaskGroup)")


async def within(aw):
    """``aw``, failing the test instead of hanging."""
    return await asyncio.wait_for(aw, DEADLINE)


async def forward(aw):
    """A coroutine around any awaitable (``TaskGroup.create_task`` wants a coroutine)."""
    return await aw


def cancelling() -> int | None:
    """``current_task().cancelling()`` where it exists (3.11+)."""
    task = asyncio.current_task()
    return task.cancelling() if hasattr(task, "cancelling") else None


class Watch:
    """A coroutine that waits forever and records what happens to it: whether it started,
    the args of every ``CancelledError`` it saw, how often its ``finally`` ran."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.cancel_args: list[tuple] = []
        self.finally_runs = 0

    async def forever(self):
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            self.cancel_args.append(exc.args)
            raise
        finally:
            self.finally_runs += 1
            self.ended.set()

    async def wait_ended(self):
        await within(self.ended.wait())

    def outcome(self):
        return self.cancel_args, self.finally_runs


DROPPED = ([(DROP_CANCEL_MESSAGE,)], 1)  # Watch.outcome() of a task cancelled by a drop


# --- C4: Rust drops, Python stops ---------------------------------------------------------------


def test_c4_drop_cancel_message_is_exposed():
    assert isinstance(DROP_CANCEL_MESSAGE, str) and "dropped" in DROP_CANCEL_MESSAGE


def test_c4_tokio_timeout_cancels_the_python_task(run):
    async def main():
        watch = Watch()
        timed_out, value = await within(
            b.await_with_timeout(watch.forever(), watch.started.wait(), 0.01)
        )
        await watch.wait_ended()
        return timed_out, value, watch.outcome()

    assert run(main) == (True, None, DROPPED)


def test_c4_tokio_timeout_not_reached_delivers_the_value(run):
    async def main():
        started = asyncio.Event()
        cancelled = []

        async def quick():
            started.set()
            try:
                await asyncio.sleep(0)
                return "in time"
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        result = await within(b.await_with_timeout(quick(), started.wait(), DEADLINE))
        return result, cancelled

    assert run(main) == ((False, "in time"), [])


def test_c4_select_loser_is_cancelled(run):
    async def main():
        watch = Watch()

        async def winner():
            await watch.started.wait()  # the loser surely runs when the winner wins
            return "won"

        index, value = await within(b.select_first(watch.forever(), winner()))
        await watch.wait_ended()
        return index, value, watch.outcome()

    assert run(main) == (1, "won", DROPPED)


def test_c4_cancelled_outer_crossing_cancels_the_python_task(run):
    async def main():
        watch = Watch()
        drops = b.RustDrops()
        fut = b.await_counted(watch.forever(), drops)
        await within(watch.started.wait())
        assert fut.cancel("outer cancelled")
        with pytest.raises(asyncio.CancelledError) as info:
            await fut
        await watch.wait_ended()
        await within(drops.wait_for(1))
        return info.value.args, drops.value, watch.outcome()

    assert run(main) == (("outer cancelled",), 1, DROPPED)


def test_c4_cancelled_task_awaiting_the_outer_crossing_cancels_the_python_task(run):
    async def main():
        watch = Watch()
        drops = b.RustDrops()
        outer = asyncio.ensure_future(forward(b.await_counted(watch.forever(), drops)))
        await within(watch.started.wait())
        outer.cancel("outer task cancelled")
        with pytest.raises(asyncio.CancelledError):
            await outer
        await watch.wait_ended()
        await within(drops.wait_for(1))
        return drops.value, watch.outcome()

    assert run(main) == (1, DROPPED)


def test_c4_never_polled_pyfuture_cancels_its_running_task(run):
    async def main():
        watch = Watch()
        await within(b.drop_unpolled(watch.forever(), watch.started.wait()))
        await watch.wait_ended()
        return watch.outcome()

    assert run(main) == DROPPED


def test_c4_dropped_before_start_closes_the_coroutine_unstarted(run):
    async def main():
        ran = []

        async def body():
            ran.append("started")
            try:
                await asyncio.sleep(0)
            finally:
                ran.append("finally")

        coro = body()
        await within(b.drop_before_start(coro))
        # The start job ran before this crossing's outcome (one FIFO queue per loop).
        state = inspect.getcoroutinestate(coro)
        del coro
        gc.collect()  # a "never awaited" RuntimeWarning would reach the unraisable hook here
        await asyncio.sleep(0)
        return state, ran

    assert run(main) == (inspect.CORO_CLOSED, [])


def test_c4_many_dropped_before_start_are_all_closed(run):
    async def main():
        ran = []

        async def body(i):
            ran.append(i)

        coros = [body(i) for i in range(200)]
        await within(asyncio.gather(*(b.drop_before_start(c) for c in coros)))
        states = {inspect.getcoroutinestate(c) for c in coros}
        del coros
        gc.collect()
        return states, ran

    assert run(main) == ({inspect.CORO_CLOSED}, [])


def test_c4_control_an_unclosed_coroutine_does_warn():
    """What the C4 'closed, never started' tests rely on: a coroutine dropped without being
    closed warns, and under ``filterwarnings=error`` that reaches the unraisable hook."""

    async def body():
        pass

    with pytest.warns(RuntimeWarning, match="was never awaited"):
        coro = body()
        del coro
        gc.collect()


def test_c4_future_dropped_before_start_is_cancelled_with_the_drop_message(run):
    async def main():
        fut = asyncio.get_running_loop().create_future()
        await within(b.drop_before_start(fut))
        assert fut.cancelled()
        with pytest.raises(asyncio.CancelledError) as info:
            fut.result()
        return info.value.args

    assert run(main) == (DROP_CANCEL_MESSAGE,)


def test_c4_dropping_pyfuture_of_a_python_task_cancels_that_task(run):
    async def main():
        watch = Watch()
        task = asyncio.ensure_future(watch.forever())
        timed_out, _ = await within(b.await_with_timeout(task, watch.started.wait(), 0.01))
        await watch.wait_ended()
        return timed_out, task.cancelled(), watch.outcome()

    assert run(main) == (True, True, DROPPED)


def _detach_case():
    """A coroutine that waits for ``release`` and then leaves a side effect."""
    started, release, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    side: list[str] = []

    async def work(fail: bool = False):
        started.set()
        try:
            await release.wait()
            side.append("effect")
            if fail:
                raise ValueError("failed after detach")
        except asyncio.CancelledError:
            side.append("cancelled")
            raise
        finally:
            done.set()

    return started, release, done, side, work


def test_c4_detach_lets_a_running_task_complete(run):
    async def main():
        started, release, done, side, work = _detach_case()
        await within(b.detach_py(work(), started.wait()))
        gc.collect()  # asyncio holds tasks weakly; the bridge holds a detached one
        release.set()
        await within(done.wait())
        return side

    assert run(main) == ["effect"]


def test_c4_detach_before_start_still_runs_the_task(run):
    async def main():
        started, release, done, side, work = _detach_case()
        await within(b.detach_py(work()))
        await within(started.wait())
        release.set()
        await within(done.wait())
        return side

    assert run(main) == ["effect"]


def test_c4_detached_task_failure_is_retrieved_quietly(run):
    # "Task exception was never retrieved" would reach the exception handler.
    async def main():
        started, release, done, side, work = _detach_case()
        await within(b.detach_py(work(fail=True), started.wait()))
        release.set()
        await within(done.wait())
        gc.collect()
        return side

    assert run(main) == ["effect"]


# --- C5: cancellation as an outcome seen from Rust ---------------------------------------------


#: Before 3.11 asyncio drops a task's cancel message: `task.result()` raises a bare
#: `CancelledError` (gh-90985 fixed it in 3.11), so no bridge can pass the message on.
TASK_KEEPS_CANCEL_MESSAGE = sys.version_info >= (3, 11)


def task_message(msg):
    """The message a task's outcome carries on this Python."""
    return msg if TASK_KEEPS_CANCEL_MESSAGE else None


def test_c5_task_cancelled_by_someone_else_is_a_cancellation(run):
    async def main():
        watch = Watch()
        task = asyncio.ensure_future(watch.forever())
        report = asyncio.ensure_future(b.await_classify(task))
        await within(watch.started.wait())
        task.cancel("someone else")
        return await within(report)

    assert run(main) == ("CancelledError", True, task_message("someone else"), None)


def test_c5_coroutine_raising_cancelled_error_is_a_cancellation(run):
    async def main():
        async def coro():
            await asyncio.sleep(0)
            raise asyncio.CancelledError("raised by the coroutine")

        return await within(b.await_classify(coro()))

    assert run(main) == ("CancelledError", True, task_message("raised by the coroutine"), None)


@pytest.mark.parametrize(
    "exc",
    [ValueError("plain"), TimeoutError("timed out"), RuntimeError("runtime")],
    ids=lambda e: type(e).__name__,
)
def test_c5_ordinary_exception_is_not_a_cancellation(run, exc):
    async def main():
        async def coro():
            await asyncio.sleep(0)
            raise exc

        return await within(b.await_classify(coro()))

    assert run(main) == (type(exc).__name__, False, str(exc), None)


def test_c5_value_is_not_a_cancellation(run):
    async def main():
        async def coro():
            return "value"

        return await within(b.await_classify(coro()))

    assert run(main) == ("ok", False, None, "value")


# --- C6: chains ----------------------------------------------------------------------------------


class Chain:
    """Python layer 0 (the outer task, A) -> Rust -> Python layer 1 -> Rust -> ... -> Python
    layer ``depth - 1`` -> ``innermost``. Each Rust layer between two Python layers is
    ``await_counted`` (its drop counted in ``drops``). Each Python layer records the
    ``CancelledError`` it saw (args and ``cancelling()``) and its ``finally``; layer
    ``catch_at`` catches the cancellation and returns a value. ``rust_futures`` are the
    asyncio futures of the Rust layers in between."""

    def __init__(self, depth: int, innermost, catch_at: int | None = None) -> None:
        self.depth = depth
        self.innermost = innermost
        self.catch_at = catch_at
        self.drops = b.RustDrops()
        self.reached = asyncio.Event()
        self.cancelled: dict[int, tuple] = {}
        self.finally_ran: list[int] = []
        self.all_finally = asyncio.Event()
        self.rust_futures: list[asyncio.Future] = []  # the await_counted futures, outer first

    async def layer(self, k: int):
        try:
            if k == self.depth - 1:
                self.reached.set()
                return await self.innermost(self)
            fut = b.await_counted(self.layer(k + 1), self.drops)
            self.rust_futures.append(fut)
            return await fut
        except asyncio.CancelledError as exc:
            self.cancelled[k] = (exc.args, cancelling())
            if k == self.catch_at:
                return f"caught at {k}"
            raise
        finally:
            self.finally_ran.append(k)
            if len(self.finally_ran) == self.depth:
                self.all_finally.set()


async def innermost_rust_pending(chain: Chain):
    return await b.pending_counted(chain.drops)


async def innermost_python_raises(chain: Chain):
    await asyncio.sleep(0)
    raise asyncio.CancelledError("raised innermost")


async def innermost_rust_returns_cancelled(chain: Chain):
    return await b.raise_cancelled("raised innermost")


@pytest.mark.parametrize("depth", [2, 8], ids=["A-B-C-D", "depth-8"])
def test_c6_cancelling_the_outer_task_stops_every_layer(run, depth):
    async def main():
        chain = Chain(depth, innermost_rust_pending)
        outer = asyncio.ensure_future(chain.layer(0))
        await within(chain.reached.wait())
        outer.cancel("cancel A")
        with pytest.raises(asyncio.CancelledError):
            await within(outer)
        # Every Rust layer is dropped (depth - 1 in between plus the innermost one) and every
        # Python layer's finally runs.
        await within(chain.drops.wait_for(depth))
        await within(chain.all_finally.wait())
        return chain

    chain = run(main)
    assert chain.drops.value == depth
    assert sorted(chain.finally_ran) == list(range(depth))
    assert chain.cancelled[0][0] == ("cancel A",)
    for k in range(1, depth):
        assert chain.cancelled[k][0] == (DROP_CANCEL_MESSAGE,), k


@pytest.mark.parametrize(
    "innermost", [innermost_python_raises, innermost_rust_returns_cancelled], ids=["py", "rust"]
)
@pytest.mark.parametrize("depth", [2, 8], ids=["A-B-C-D", "depth-8"])
def test_c6_cancellation_raised_innermost_surfaces_at_every_layer(run, depth, innermost):
    async def main():
        chain = Chain(depth, innermost)
        outer = asyncio.ensure_future(chain.layer(0))
        with pytest.raises(asyncio.CancelledError) as info:
            await within(outer)
        await within(chain.all_finally.wait())
        return chain, info.value.args, outer.cancelled()

    chain, args, outer_cancelled = run(main)
    assert outer_cancelled
    # Nobody called cancel() on any task: cancelling() stays 0 at every layer (C5).
    expected_cancelling = 0 if sys.version_info >= (3, 11) else None
    assert sorted(chain.cancelled) == list(range(depth))
    assert {c for _, c in chain.cancelled.values()} == {expected_cancelling}
    if TASK_KEEPS_CANCEL_MESSAGE:
        assert args == ("raised innermost",)
        assert {a for a, _ in chain.cancelled.values()} == {("raised innermost",)}
    assert sorted(chain.finally_ran) == list(range(depth))
    assert chain.drops.value == depth - 1  # every await_counted layer ended (and was dropped)
    # Each Rust layer returned the CancelledError: its future ends cancelled, not failed (C5).
    assert len(chain.rust_futures) == depth - 1
    assert all(f.cancelled() for f in chain.rust_futures)


@pytest.mark.parametrize(
    "innermost", [innermost_python_raises, innermost_rust_returns_cancelled], ids=["py", "rust"]
)
def test_c6_middle_layer_catching_the_cancellation_stops_it(run, innermost):
    depth, catch_at = 7, 3

    async def main():
        chain = Chain(depth, innermost, catch_at=catch_at)
        result = await within(chain.layer(0))
        await within(chain.all_finally.wait())
        return chain, result

    chain, result = run(main)
    assert result == f"caught at {catch_at}"
    futs = chain.rust_futures
    assert [f.cancelled() for f in futs] == [False] * catch_at + [True] * (depth - 1 - catch_at)
    assert [f.result() for f in futs[:catch_at]] == [result] * catch_at
    # Layers inside the catching one saw the cancellation; the catching one too; outer ones not.
    assert sorted(chain.cancelled) == list(range(catch_at, depth))
    assert sorted(chain.finally_ran) == list(range(depth))
    assert chain.drops.value == depth - 1


# --- C6: TaskGroup nested through Rust -----------------------------------------------------------


class Group:
    """Children that wait forever and record their cancellation and ``finally``;
    ``all_started`` / ``all_ended`` are set once ``expected`` of them have started / ended."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started = 0
        self.all_started = asyncio.Event()
        self.all_ended = asyncio.Event()
        self.cancelled: list[str] = []
        self.finally_ran: list[str] = []

    async def child(self, name: str):
        self.started += 1
        if self.started == self.expected:
            self.all_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.finally_ran.append(name)
            if len(self.finally_ran) == self.expected:
                self.all_ended.set()


@needs_311
def test_c6_taskgroup_inner_failure_through_rust_aborts_siblings_and_propagates(run):
    n_inner = 4

    async def main():
        group = Group(expected=n_inner + 1)  # the inner sleepers and one outer sibling
        drops = b.RustDrops()

        async def fails():
            await group.all_started.wait()
            raise ValueError("inner child failed")

        async def inner_group():
            async with asyncio.TaskGroup() as tg:
                for i in range(n_inner):
                    tg.create_task(group.child(f"inner{i}"))
                tg.create_task(fails())

        with pytest.raises(BaseExceptionGroup) as info:  # noqa: F821 - 3.11+ builtin
            async with asyncio.TaskGroup() as tg:
                tg.create_task(forward(b.await_counted(inner_group(), drops)))
                tg.create_task(group.child("outer sibling"))
        await within(drops.wait_for(1))
        await within(group.all_ended.wait())
        return group, drops.value, info.value

    group, drops, outer_eg = run(main)
    (inner_eg,) = outer_eg.exceptions
    assert isinstance(inner_eg, BaseExceptionGroup)  # noqa: F821 - 3.11+ builtin
    (err,) = inner_eg.exceptions
    assert type(err) is ValueError and str(err) == "inner child failed"
    names = {f"inner{i}" for i in range(n_inner)} | {"outer sibling"}
    assert set(group.cancelled) == names and len(group.cancelled) == len(names)
    assert set(group.finally_ran) == names and len(group.finally_ran) == len(names)
    assert drops == 1


@needs_311
def test_c6_cancelling_the_outer_taskgroup_through_rust_cancels_everything(run):
    n_crossings, n_inner_py, n_inner_rust = 2, 3, 2

    async def main():
        # Python sleepers: n_inner_py per inner group, plus one outer sibling.
        group = Group(expected=n_crossings * n_inner_py + 1)
        drops = b.RustDrops()

        async def inner_group(c):
            async with asyncio.TaskGroup() as tg:
                for i in range(n_inner_py):
                    tg.create_task(group.child(f"c{c}-py{i}"))
                for _ in range(n_inner_rust):
                    tg.create_task(forward(b.pending_counted(drops)))

        async def outer_group():
            async with asyncio.TaskGroup() as tg:
                for c in range(n_crossings):
                    tg.create_task(forward(b.await_counted(inner_group(c), drops)))
                tg.create_task(group.child("outer sibling"))

        outer = asyncio.ensure_future(outer_group())
        await within(group.all_started.wait())
        outer.cancel("cancel the outer group")
        with pytest.raises(asyncio.CancelledError):
            await within(outer)
        expected_drops = n_crossings * (1 + n_inner_rust)
        # The inner groups end on their own after the drops cancelled them: wait for them.
        await within(drops.wait_for(expected_drops))
        await within(group.all_ended.wait())
        return group, drops.value, expected_drops

    group, drops, expected_drops = run(main)
    assert drops == expected_drops
    assert len(group.cancelled) == len(group.finally_ran) == n_crossings * n_inner_py + 1
    assert set(group.cancelled) == set(group.finally_ran)

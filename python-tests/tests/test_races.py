"""Race regression for two-way cancellation: rules C7 (exactly once under races: one terminal
state, never a result on a cancelled future, no await hangs), C3 (Python cancels, Rust stops)
and C4 (Rust drops, Python stops; a never-started coroutine is closed).

Each test runs ``ITERATIONS`` iterations **per loop kind** (the ``run`` fixture runs it under
asyncio, uvloop and rloop, with ``loop.set_debug(True)`` and an exception handler and unraisable hook
that fail the test), cancelling at random moments, and records which window each cancellation
hit. Every window must be hit at least ``MIN_HITS`` times per loop kind.

* Python cancels Rust (``race_work``, a ``WorkProbe`` with atomics): the asyncio future is
  cancelled before the Rust future was first polled (right after the call; half of those
  while ``WorkerHold`` blocks every runtime worker, so that no poll can have happened), while
  it runs, or after it returned its value but before the outcome reached the asyncio future
  (Python busy-waits, without yielding to the loop, until ``probe.completed``, then cancels in
  the same loop tick).
* Rust drops Python (``drop_race``, a ``CoroProbe`` the coroutine marks): the ``PyFuture`` is
  dropped before the task started, while the coroutine runs, or after it finished but before
  Rust received the result (Rust busy-waits until ``probe.finished``; in half of those cases
  the coroutine then holds the loop until Rust dropped, so the result cannot have been handed
  over yet, in the other half it may have been).

The window is read from the probe right before the cancel / drop. Timing is spread with a
seeded ``random.Random`` (override with ``RACE_SEED``; the seed is in every failure message):
random Rust yields, sleeps and busy-waits of up to a few hundred microseconds, random numbers of
``asyncio.sleep(0)``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
from collections import Counter

import bridge_pytests as b
from bridge_pytests import DROP_CANCEL_MESSAGE

ITERATIONS = 1000
MIN_HITS = 50
SEED = int(os.environ.get("RACE_SEED", "4242"))
#: Bound for every await and busy-wait of one iteration; reaching it fails the test.
DEADLINE = 10.0
CANCEL_MESSAGE = "race: cancelled by Python"
#: How long a Rust future cancelled "while running" sleeps: cancelling must drop it first.
POLLED_SLEEP_US = 100_000


def spin_until(predicate, what: str, where: str) -> None:
    """Busy-waits on the loop thread (no await: the loop cannot deliver meanwhile)."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{where}: {what} never happened")


def spin_for(micros: int) -> None:
    end = time.perf_counter() + micros / 1e6
    while time.perf_counter() < end:
        pass


async def within(aw, where: str):
    try:
        return await asyncio.wait_for(aw, DEADLINE)
    except asyncio.TimeoutError:
        raise AssertionError(f"{where}: an await hung (C7)") from None


def report(windows: Counter, required: tuple[str, ...], where: str) -> None:
    print(f"\n{where}: windows {dict(sorted(windows.items()))}")
    missed = {w: windows[w] for w in required if windows[w] < MIN_HITS}
    assert not missed, f"{where}: windows hit fewer than {MIN_HITS} times: {missed}; all: {windows}"


# --- Python cancels Rust ------------------------------------------------------------------------


async def consume(fut):
    """The Python awaiter: sees exactly one of the value and CancelledError."""
    try:
        return ("value", await fut)
    except asyncio.CancelledError as exc:
        return ("cancelled", exc.args)


async def python_cancels_rust_once(rng: random.Random, i: int, where: str) -> str:
    probe = b.WorkProbe()
    strategy = rng.choice(("immediate", "polled", "completed", "yields"))
    if strategy == "polled":
        # Far longer than the cancel takes to reach it: dropped while running, never completed.
        rust_yields, rust_sleep_us = rng.randrange(0, 4), POLLED_SLEEP_US
    elif strategy == "yields":
        rust_yields = rng.randrange(0, 30)
        rust_sleep_us = rng.choice((0, rng.randrange(1, 1000)))
    else:
        rust_yields, rust_sleep_us = rng.randrange(0, 4), 0
    via_task = strategy != "immediate" and rng.random() < 0.5

    # Half of the immediate cancels happen while every runtime worker is held: the Rust
    # future surely has not been polled yet.
    hold = b.WorkerHold() if strategy == "immediate" and rng.random() < 0.5 else None
    if hold is not None:
        spin_until(hold.all_held, "holding the runtime's workers", where)
    fut = b.race_work(probe, rust_yields, rust_sleep_us, i)
    awaiter = None
    if via_task:
        awaiter = asyncio.ensure_future(consume(fut))
        await asyncio.sleep(0)  # the awaiter now waits on `fut`: its cancel cancels `fut`

    if strategy == "polled":
        spin_until(lambda: probe.polled, "first poll", where)
        spin_for(rng.randrange(0, 300))
    elif strategy == "completed":
        spin_until(lambda: probe.completed, "Rust completion", where)
    elif strategy == "yields":
        for _ in range(rng.randrange(0, 8)):
            await asyncio.sleep(0)
        spin_for(rng.randrange(0, 300))

    # Read the window, then cancel in the same tick.
    done, polled, completed = fut.done(), probe.polled, probe.completed
    if via_task:
        awaiter.cancel(CANCEL_MESSAGE)
    else:
        assert fut.cancel(CANCEL_MESSAGE) is not done, where
    if hold is not None:
        # Let the cancel's done callback fire the crossing's token first: a Rust future
        # cancelled before its first poll is then never polled at all (C3).
        await asyncio.sleep(0)
        hold.release()
    if done:
        window = "after_delivery"
    elif not polled:
        window = "before_poll"
    elif not completed:
        window = "running"
    else:
        window = "after_completion"
    where = f"{where} window={window} strategy={strategy} via_task={via_task} hold={bool(hold)}"

    if awaiter is None:
        awaiter = asyncio.ensure_future(consume(fut))
    seen = await within(awaiter, where)
    await within(probe.wait_dropped(), where)

    # Exactly one terminal state for the future; the awaiter saw it.
    assert fut.done(), where
    if window == "after_delivery":
        assert not fut.cancelled() and fut.result() == i, where
        # A task cancelled after its future was done may still see the cancel; never both.
        assert seen == ("value", i) or (via_task and seen == ("cancelled", (CANCEL_MESSAGE,))), (
            f"{where}: {seen}"
        )
    else:
        # Cancelled before delivery: a value the Rust future returned is never set (C7).
        assert fut.cancelled(), where
        assert seen == ("cancelled", (CANCEL_MESSAGE,)), f"{where}: {seen}"
    # The Rust future was dropped exactly once: after completing, or instead of completing.
    assert probe.drops == 1, f"{where}: drops={probe.drops}"
    if probe.completed:
        assert probe.dropped_incomplete == 0, where
    else:
        assert probe.dropped_incomplete == 1, where
    if window == "after_completion":
        assert probe.completed and probe.dropped_incomplete == 0, where
    if hold is not None:
        assert window == "before_poll", where
        assert not probe.polled and probe.dropped_incomplete == 1, f"{where}: polled after cancel"
    if strategy == "polled":
        assert window == "running", where
        assert probe.dropped_incomplete == 1, f"{where}: not dropped within {POLLED_SLEEP_US} us"
    return window


def test_c7_race_python_cancels_rust(run, loop_kind):
    where = f"python-cancels-rust seed={SEED} loop={loop_kind}"
    rng = random.Random(f"{SEED}-py-cancels-{loop_kind}")

    async def main():
        windows = Counter()
        for i in range(ITERATIONS):
            windows[await python_cancels_rust_once(rng, i, f"{where} iteration={i}")] += 1
        return windows

    report(run(main), ("before_poll", "running", "after_completion"), where)


# --- Rust drops Python --------------------------------------------------------------------------


async def rust_drops_python_once(rng: random.Random, i: int, where: str) -> str:
    probe = b.CoroProbe()
    cancel_args: list[tuple] = []
    finally_runs = 0
    ended = asyncio.Event()
    # How Rust picks its moment (see `drop_race`) and how the coroutine behaves:
    #   at_once        made and dropped in one attach: before the task started
    #   spin           Rust busy-waits 0-300 us, then drops (any window, or it received)
    #   started        Rust waits for the coroutine's start mark; the coroutine yields 0-9 times
    #   started_block  ... and the coroutine then waits forever: dropped while running
    #   finished       Rust waits for the finish mark, drops without polling
    #   finished_hold  ... and the coroutine holds the loop (no await) until Rust dropped, so
    #                  the task's done callback cannot have handed the result over yet
    case = rng.choice(("at_once", "spin", "started", "started_block", "finished", "finished_hold"))
    mode = case.split("_")[0] if case != "at_once" else case
    spin_us = {"spin": rng.randrange(0, 300), "started": rng.randrange(0, 50)}.get(mode, 0)
    yields = rng.randrange(0, 10)
    block = case == "started_block"
    hold = case == "finished_hold"

    async def coro():
        nonlocal finally_runs
        probe.mark_started()
        try:
            for _ in range(yields):
                await asyncio.sleep(0)
            if block:
                await asyncio.Event().wait()
            probe.mark_finished()  # no await after this: the return value is decided
            if hold:
                spin_until(lambda: probe.dropped, "the drop", where)
            return i
        except asyncio.CancelledError as exc:
            cancel_args.append(exc.args)
            raise
        finally:
            finally_runs += 1
            ended.set()

    c = coro()
    window, value = await within(b.drop_race(c, probe, mode, spin_us, mode != "finished"), where)
    where = f"{where} window={window} case={case} spin_us={spin_us} yields={yields}"
    assert window != "deadline", where

    # The start job and the drop's cancel job were queued before this crossing's outcome, so
    # the coroutine has either started (its body ran) or been closed by now.
    if probe.started:
        await within(ended.wait(), where)
        assert finally_runs == 1, f"{where}: finally ran {finally_runs} times"
        if probe.finished:
            assert cancel_args == [], f"{where}: finished and cancelled: {cancel_args}"
        else:
            assert cancel_args == [(DROP_CANCEL_MESSAGE,)], f"{where}: {cancel_args}"
        assert inspect.getcoroutinestate(c) == inspect.CORO_CLOSED, where
    else:
        assert window == "before_start", where
        assert inspect.getcoroutinestate(c) == inspect.CORO_CLOSED, f"{where}: not closed"
        assert finally_runs == 0 and cancel_args == [], where

    if window == "received":
        assert value == i and probe.finished and cancel_args == [], where
    else:
        assert value is None and probe.dropped, where
    if window == "after_finish":
        assert cancel_args == [], where  # it had finished: nothing left to cancel
    expected = {
        "at_once": "before_start",
        "started_block": "running",
        "finished": "after_finish",
        "finished_hold": "after_finish",
    }.get(case)
    assert expected is None or window == expected, where
    if case == "at_once":
        assert not probe.started, where
    return window


def test_c7_race_rust_drops_python(run, loop_kind):
    where = f"rust-drops-python seed={SEED} loop={loop_kind}"
    rng = random.Random(f"{SEED}-rust-drops-{loop_kind}")

    async def main():
        windows = Counter()
        for i in range(ITERATIONS):
            windows[await rust_drops_python_once(rng, i, f"{where} iteration={i}")] += 1
        return windows

    report(run(main), ("before_start", "running", "after_finish"), where)

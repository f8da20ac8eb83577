"""A loop that closes with crossings pending on it (rule L1), in subprocesses.

Each scenario runs a small script in a fresh interpreter, several times and on both loop kinds,
with garbage collection disabled (nothing may depend on it), and asserts its exit code, an empty
stderr (no traceback, no "Task was destroyed but it is pending", no "exception was never
retrieved", no "coroutine was never awaited") and what the script measured. A deadline (the
subprocess timeout, and the probes' own bounded waits), not a sleep, bounds each run.

* Python awaits Rust: closing the loop fires every pending crossing's token and drops its Rust
  future, within about a second, while the user still holds the futures.
* Results that reach the loop after it closed are dropped quietly, and the Python objects they
  hold are released (their finalizers run).
* Rust awaits Python: every ``PyFuture`` awaiting a task on the closed loop, started or not yet
  started, fails with the bridge's ``RuntimeError`` within about a second; a coroutine that
  never started is closed; a new crossing on the closed loop is refused at once.
* The closed loop itself is released (no reference cycle through its delivery queue).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import LOOP_PARAMS, SCRIPT_LOOPS, rloop_limitation

#: Runs per scenario, size and loop kind (`BRIDGE_EXIT_RUNS_SCALE` lowers it for the repeat
#: passes of `make test`).
RUNS = max(1, int(3 * float(os.environ.get("BRIDGE_EXIT_RUNS_SCALE", "1"))))
#: Deadline of one subprocess run.
DEADLINE = 60
#: "Promptly, within about a second": the watchdog notices a closed loop within 0.85 s of its
#: last sign of life (STALE + PING_WAIT + 2 x PERIOD); the margin absorbs a loaded machine.
PROMPT = 2.0

CLOSED_MESSAGE = "RuntimeError: the asyncio event loop was closed"

PRELUDE = textwrap.dedent(
    """
    import asyncio, gc, sys, threading, time, weakref
    import bridge_pytests as b

    gc.disable()
    """
) + SCRIPT_LOOPS + textwrap.dedent(
    """

    N = int(sys.argv[2])

    async def forever():
        await asyncio.sleep(3600)
    """
)


def run_script(body: str, loop_kind: str, n: int, *args: str) -> subprocess.CompletedProcess:
    script = PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONWARNINGS="default")
    return subprocess.run(
        [sys.executable, "-c", script, loop_kind, str(n), *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
    )


def results(proc: subprocess.CompletedProcess) -> dict:
    """Asserts a clean run and returns the script's ``key=value`` lines."""
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    lines = proc.stdout.split()
    assert lines and lines[-1] == "done", proc.stdout
    return dict(line.split("=", 1) for line in lines[:-1])


SIZES = (1, 100, 10_000)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l1_closing_the_loop_stops_pending_rust_work(loop_kind, n):
    body = """
    probe = b.LifeProbe()
    loop = new_loop()

    async def main():
        futs = [probe.forever() for _ in range(N)]
        # Rust awaiting Python inside a crossing, too: the task it awaits is left pending.
        futs += [b.await_py_eager(forever()) for _ in range(N)]
        assert probe.wait_started(N, 20)
        return futs

    futs = loop.run_until_complete(main())  # the user still holds every future
    loop.close()
    closed_at = time.monotonic()
    assert probe.wait_dropped(N, 20), probe.counts()
    dropped_after = time.monotonic() - closed_at
    assert probe.wait_tokens(N, 20), probe.counts()
    assert not any(f.done() for f in futs)  # nothing is set on a closed loop's futures
    print(f"dropped_after={dropped_after:.3f}")
    print("done")
    """
    for _ in range(RUNS):
        r = results(run_script(body, loop_kind, n))
        assert float(r["dropped_after"]) < PROMPT, r


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l1_results_arriving_after_the_close_are_released(loop_kind):
    # Rust futures finish 0-0.25 s after the close, before the bridge can notice it (0.45 s at
    # the earliest): each outcome, a Python object, waits in the closed loop's queue and must be
    # released when the bridge finds the loop closed, on a thread that may do so, without a
    # traceback. (A Rust future dropped by its token releases what it holds through PyO3's
    # reference pool instead.)
    body = """
    class Tracked:
        pass

    released = threading.Semaphore(0)
    probe = b.LifeProbe()
    loop = new_loop()

    async def main():
        futs = []
        for i in range(N):
            obj = Tracked()
            weakref.finalize(obj, released.release)
            futs.append(probe.late(0.25 * i / N, obj))
        return futs

    futs = loop.run_until_complete(main())
    loop.close()
    # The first ones may have been delivered while the loop still ran: their futures, which
    # the user holds, hold them.
    delivered = sum(f.done() for f in futs)
    assert delivered < N // 2, delivered
    deadline = time.monotonic() + 20
    for _ in range(N - delivered):
        assert released.acquire(timeout=max(0.0, deadline - time.monotonic())), probe.counts()
    assert probe.wait_dropped(N, 20), probe.counts()
    assert sum(f.done() for f in futs) == delivered  # nothing set after the close
    print("done")
    """
    for _ in range(RUNS):
        results(run_script(body, loop_kind, 1000))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l1_rust_awaiting_a_closed_loop_fails_promptly(loop_kind, n):
    # The loop runs in a thread; tokio tasks (outside any crossing) await N Python tasks that
    # never finish, plus 10 coroutines queued after the loop stopped (never started). The loop
    # is stopped and closed without cancelling anything.
    body = """
    loop = new_loop()
    started = threading.Semaphore(0)
    keep = []  # the user still holds the tasks' event

    async def hold():
        event = asyncio.Event()
        keep.append(event)
        started.release()
        await event.wait()

    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    probe = b.LifeProbe()
    probe.await_on(loop, [hold() for _ in range(N)])
    for _ in range(N):
        assert started.acquire(timeout=20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(20)
    probe.await_on(loop, [hold() for _ in range(10)])  # queued, never started
    loop.close()
    closed_at = time.monotonic()
    outcomes = probe.wait_outcomes(N + 10, 20)
    failed_after = time.monotonic() - closed_at
    assert len(outcomes) == N + 10, len(outcomes)
    wrong = [o for o in outcomes if not o.startswith("!" + sys.argv[3])]
    assert not wrong, wrong[:3]

    # The closed loop is known now: a new crossing is refused at once, its coroutine closed.
    coro = hold()
    try:
        probe.await_on(loop, [coro])
    except RuntimeError as e:
        assert "event loop was closed" in str(e), e
    else:
        raise AssertionError("a crossing on a closed loop was accepted")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning

    print(f"failed_after={failed_after:.3f}")
    print("done")
    """
    for _ in range(RUNS):
        r = results(run_script(body, loop_kind, n, CLOSED_MESSAGE))
        assert float(r["failed_after"]) < PROMPT, r


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l1_a_closed_loop_is_released(loop_kind):
    rloop_limitation(
        loop_kind,
        "an RLoop is never freed, even unused by the bridge: it and its _PidfdChildWatcher "
        "reference each other and its Rust base class takes no part in cyclic GC",
    )
    # Before L1, a job left in a closed loop's queue held the loop's TaskLocals, which held the
    # queue: the loop, its registry entry and its socket were never released.
    body = """
    probe = b.LifeProbe()
    loop = new_loop()

    async def main():
        return [probe.late(0.05, None) for _ in range(N)] + [probe.forever() for _ in range(N)]

    futs = loop.run_until_complete(main())
    loop.close()
    assert probe.wait_dropped(2 * N, 20), probe.counts()
    released = threading.Event()
    weakref.finalize(loop, released.set)
    del futs, loop, main
    deadline = time.monotonic() + 20
    # The watchdog drops the late outcomes on its own schedule; collect the loop's own cycles
    # meanwhile (the bridge's queue must not be what holds it).
    while not released.wait(0.05) and time.monotonic() < deadline:
        gc.collect()
    assert released.is_set(), "the closed loop was never released"
    print("done")
    """
    for _ in range(RUNS):
        results(run_script(body, loop_kind, 100))


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l1_nothing_stays_pending_after_normal_runs(loop_kind):
    # Every crossing leaves its loop's pending set when it settles, in both directions,
    # including cancelled ones; the watchdog then has nothing to watch.
    body = """
    loop = new_loop()

    async def short():
        await asyncio.sleep(0)
        return 1

    async def main():
        values = await asyncio.gather(*[b.sleep_then(0.001, i) for i in range(N)])
        values += await asyncio.gather(*[b.await_py(short()) for _ in range(N)])
        cancelled = [b.sleep_then(10, 0) for _ in range(N)]
        await asyncio.sleep(0)
        for f in cancelled:
            f.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        # A cancelled crossing settles when its dropped Rust future reports back, a moment
        # after Python saw it cancelled: poll for that, bounded.
        for _ in range(2000):
            if b.lifecycle_stats()[0] == 0:
                break
            await asyncio.sleep(0.005)
        return len(values)

    assert loop.run_until_complete(main()) == 2 * N
    live, closed, watchdog = b.lifecycle_stats()
    loop.close()
    print(f"live={live}")
    print(f"watchdog={watchdog}")
    print("done")
    """
    r = results(run_script(body, loop_kind, 1000))
    assert r["live"] == "0", r
    # A healthy loop costs the watchdog nothing: it never even took the GIL to look.
    assert r["watchdog"] == "0", r


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l1_a_stopped_loop_is_not_taken_for_closed(loop_kind):
    # A loop stopped between two runs, with crossings pending, stays silent for several ping
    # cycles (the watchdog looks, and finds it open); run again, its crossings complete.
    body = """
    loop = new_loop()
    probe = b.LifeProbe()

    async def value(i):
        return i

    async def start():
        return [b.sleep_then(0.2, i) for i in range(N)] + [b.await_py_eager(value(i)) for i in range(N)]

    futs = loop.run_until_complete(start())
    time.sleep(1.5)  # the scenario itself: the loop stays stopped this long
    _, closed, watchdog = b.lifecycle_stats()
    values = loop.run_until_complete(asyncio.gather(*futs))
    assert values == list(range(N)) * 2, values[:5]
    loop.close()
    print(f"closed={closed}")
    print(f"watchdog={watchdog}")
    print("done")
    """
    r = results(run_script(body, loop_kind, 100))
    assert r["closed"] == "0", r
    assert int(r["watchdog"]) >= 1, r  # it did look: the test exercised the check


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l1_asyncio_run_returning_with_work_pending(loop_kind):
    # The common way a loop gets closed: `asyncio.run` (or its like for uvloop and rloop) returns while
    # crossings that no task awaits are still pending.
    body = """
    probe = b.LifeProbe()
    keep = []

    async def main():
        keep.extend(probe.forever() for _ in range(N))
        assert probe.wait_started(N, 20)

    if sys.argv[1] != "asyncio":
        loop = new_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    else:
        asyncio.run(main())
    closed_at = time.monotonic()
    assert probe.wait_dropped(N, 20), probe.counts()
    print(f"dropped_after={time.monotonic() - closed_at:.3f}")
    print("done")
    """
    for _ in range(RUNS):
        r = results(run_script(body, loop_kind, 1000))
        assert float(r["dropped_after"]) < PROMPT, r

"""Interpreter exit with crossings in flight (rules L2, L3), in subprocesses.

Each scenario runs a small script in a fresh interpreter, several times and on both loop kinds,
and asserts its exit code and its stderr. A deadline (the subprocess timeout), not a sleep,
bounds every run.

* L2 (part): exiting right after ``asyncio.run`` returns, or with the loop in a worker thread
  that is joined, with 10,000 crossings pending in both directions: exit code 0, empty stderr.
* L3: with the loop in a *daemon* thread still making crossings while the interpreter exits,
  the bridge's ``atexit`` hook stops every entry and waits until no thread is inside a bridge
  frame, so finalization never kills a thread there (on 3.9-3.13 that forced unwind aborts or
  crashes the process). The daemon's next crossing raises the bridge's ``RuntimeError``.
* L3: a crossing started from an ``atexit`` handler that runs after the bridge's hook gets
  that ``RuntimeError``, and a coroutine handed to ``into_future`` there is closed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

import bridge_pytests as b
from conftest import LOOP_PARAMS, SCRIPT_LOOPS, THREADSAFE_WAKEUP

#: Runs per scenario and loop kind: the daemon-thread crash it guards against showed up in
#: 20-50 % of runs before the fix. `BRIDGE_EXIT_RUNS_SCALE` (a fraction) lowers the counts for
#: the repeat passes of `make test` (other wakeup, oldest CPython).
SCALE = float(os.environ.get("BRIDGE_EXIT_RUNS_SCALE", "1"))
RUNS = max(2, int(8 * SCALE))
#: Runs of the daemon-thread scenario: without the fix the asyncio loop crashed in about
#: 10-30 % of runs (uvloop, all C, never did); the test caught it in 4 of 5 tries at 8 runs.
DAEMON_RUNS = max(4, int(16 * SCALE))
#: Deadline of one subprocess run.
DEADLINE = 60

EXITING_MESSAGE = "the Python interpreter is exiting"

PRELUDE = textwrap.dedent(
    """
    import asyncio, sys, threading, time
    import bridge_pytests as b
    """
) + SCRIPT_LOOPS + textwrap.dedent(
    """

    def run(coro_fn):
        loop = new_loop()
        try:
            return loop.run_until_complete(coro_fn())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def forever():
        await asyncio.sleep(3600)

    async def short():
        await asyncio.sleep(0.001)
        return 1
    """
)


def run_script(body: str, loop_kind: str) -> subprocess.CompletedProcess:
    script = PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    return subprocess.run(
        [sys.executable, "-c", script, loop_kind],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
    )


#: Runs of one scenario go this many at a time: they are independent processes, and on two
#: cores this halves the time the scenarios take (the extra load only varies the races).
PARALLEL_RUNS = 2


def run_scripts(body: str, loop_kind: str, runs: int) -> list:
    """``runs`` runs of ``run_script``, ``PARALLEL_RUNS`` at a time; a run past its deadline
    raises (after the runs already started have ended)."""
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        return list(pool.map(lambda _: run_script(body, loop_kind), range(runs)))


def assert_clean(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.strip().endswith("done"), proc.stdout


# Rust awaits Python through `await_py_eager`, which hands the coroutine to the bridge at
# once: the exit stops these Rust futures (L2), and one stopped before its first poll would
# otherwise drop a coroutine it never handed over ("never awaited", as asyncio warns for a
# task cancelled before it started).
PENDING_BOTH_WAYS = """
async def main():
    keep = [b.sleep_then(3600, i) for i in range(10_000)]
    keep += [b.await_py_eager(forever()) for _ in range(10_000)]
    keep += [b.sleep_then(0.001 * (i % 5), i) for i in range(10_000)]
    await asyncio.sleep(0.002)
    return len(keep)
"""


@pytest.mark.parametrize("delay", (0, 0.001))
@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l2_exit_right_after_the_loop_with_crossings_pending(loop_kind, delay):
    # 0 ms and 1 ms after the loop returned: the exit meets outcomes still arriving.
    body = PENDING_BOTH_WAYS + """
n = run(main)
if %r:
    time.sleep(%r)
print(n, "done")
""" % (delay, delay)
    for proc in run_scripts(body, loop_kind, RUNS // 2):
        assert_clean(proc)
        assert proc.stdout.split()[0] == "30000"


@pytest.mark.parametrize("where", ("main", "worker"))
@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l2_exit_with_a_user_supplied_runtime(loop_kind, where):
    # The same exits with the runtime handed over by the user (`init_with_runtime`): its
    # threads are not the bridge's, and still nothing may attach or crash at exit.
    body = PENDING_BOTH_WAYS + """
assert b.use_own_runtime()
if %r == "main":
    run(main)
else:
    t = threading.Thread(target=run, args=(main,))
    t.start()
    t.join()
print("done")
""" % where
    for proc in run_scripts(body, loop_kind, RUNS // 2):
        assert_clean(proc)


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l2_exit_with_the_loop_in_a_joined_worker_thread(loop_kind):
    body = PENDING_BOTH_WAYS + """
t = threading.Thread(target=run, args=(main,))
t.start()
t.join()
print("done")
"""
    for proc in run_scripts(body, loop_kind, RUNS):
        assert_clean(proc)


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l3_exit_while_a_daemon_loop_thread_keeps_crossing(loop_kind):
    # The daemon's loop gathers crossings without pause; the main thread exits under it. Before the fix, 3.9-3.13 aborted ("FATAL: exception not rethrown") or
    # crashed in a good share of runs.
    body = """
started = threading.Event()

async def spin():
    started.set()
    while True:
        await asyncio.gather(*[b.ready(i) for i in range(1000)])

def daemon():
    try:
        run(spin)
    except RuntimeError as e:
        # The bridge refused a crossing after its atexit hook: the message says why.
        assert "%s" in str(e), e
        print("refused", flush=True)

threading.Thread(target=daemon, daemon=True).start()
started.wait()
time.sleep(0.05)
print("done", flush=True)
""" % EXITING_MESSAGE
    for proc in run_scripts(body, loop_kind, DAEMON_RUNS):
        assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr}"
        assert proc.stderr == "", proc.stderr
        assert "done" in proc.stdout.split(), proc.stdout


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l3_crossing_from_an_atexit_handler_gets_a_clear_error(loop_kind):
    # Registered before the bridge's hook, so it runs after it (atexit is last in, first out).
    body = """
import atexit, warnings
warnings.simplefilter("error")

def late():
    async def attempt():
        outcome = []
        try:
            await b.ready(1)
        except RuntimeError as e:
            outcome.append(str(e))
        coro = short()
        try:
            b.into_future_now(coro)
        except RuntimeError as e:
            outcome.append(str(e))
        outcome.append(coro.cr_frame is None)  # closed, not left un-awaited
        return outcome

    outcome = run(attempt)
    assert len(outcome) == 3, outcome
    assert all("%s" in m for m in outcome[:2]), outcome
    assert outcome[2] is True, outcome
    print("done", flush=True)

atexit.register(late)

async def main():
    return await b.ready(41) + 1

assert run(main) == 42
""" % EXITING_MESSAGE
    for _ in range(2):
        assert_clean(run_script(body, loop_kind))


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l3_atexit_handler_gets_a_crossing_begun_before_the_hook(loop_kind):
    # A graceful shutdown: a handler registered at import time (so it runs after the bridge's
    # hook) waits for work begun on a loop in another thread. Crossings in flight still settle
    # after the hook; only new ones are refused. A deadline, not a hang, bounds the wait.
    # With the threadsafe wakeup (a fallback) the waker thread must stop at the hook, since it
    # cannot tell when finalization starts: the crossing cannot settle, and the documented
    # outcome is that the handler's own deadline expires, with no crash.
    wait = 2 if THREADSAFE_WAKEUP else 20
    body = """
import atexit, concurrent.futures

loop_ready = threading.Event()
state = {}

def serve():
    loop = new_loop()
    state["loop"] = loop
    loop.call_soon(loop_ready.set)
    loop.run_forever()

async def flush():
    return await state["pending"]

def graceful_shutdown():
    fut = asyncio.run_coroutine_threadsafe(flush(), state["loop"])
    try:
        print("flushed", fut.result(timeout=%d), flush=True)
    except concurrent.futures.TimeoutError:
        print("HUNG: the crossing never settled", flush=True)
    print("done", flush=True)

atexit.register(graceful_shutdown)

threading.Thread(target=serve, daemon=True).start()
loop_ready.wait()

async def begin():
    state["pending"] = b.sleep_then(0.3, "the last batch")

asyncio.run_coroutine_threadsafe(begin(), state["loop"]).result(timeout=20)
""" % wait
    for _ in range(2):
        proc = run_script(body, loop_kind)
        assert_clean(proc)
        expected = "HUNG" if THREADSAFE_WAKEUP else "flushed the last batch"
        assert expected in proc.stdout, proc.stdout


@pytest.mark.parametrize("loop_kind", LOOP_PARAMS)
def test_l2_exit_stops_only_unfinished_work_on_loops_that_no_longer_run(loop_kind):
    # The loop is not running when the bridge's hook runs; a handler that runs after the hook
    # runs it again. A crossing whose Rust future had already finished still delivers its value
    # (nothing to stop); one whose Rust future still ran was stopped by the hook and ends
    # cancelled with the exit message (L2).
    body = """
import atexit

def outcome(fut):
    if not fut.done():
        return "HUNG"
    try:
        return fut.result()
    except asyncio.CancelledError as e:
        return e.args[0] if e.args else None

def finish_later():
    # Bounded: with the threadsafe wakeup an outcome may never be delivered after the hook
    # (the waker thread stops there, L3), and the handler must not hang.
    loop.run_until_complete(asyncio.wait({finished, unfinished, answered}, timeout=2))
    done = outcome(finished)
    print("unfinished:", outcome(unfinished), flush=True)
    print("answered:", outcome(answered), flush=True)
    loop.close()
    print("finished:", done, flush=True)
    print("done", flush=True)

atexit.register(finish_later)  # before the bridge's own hook: so it runs after it

loop = new_loop()
probe = b.LifeProbe()

async def begin():
    return probe.late(0, 42), probe.forever(), probe.answers_stop("made up after the stop")

finished, unfinished, answered = loop.run_until_complete(begin())
assert probe.wait_started(3, 20)
# The first one's Rust future has returned (its guard dropped in the poll that finished it;
# only the exit can drop the other). A plain ready crossing could still be unpolled at exit,
# and then it is unfinished work (seen once under load on 3.11).
assert probe.wait_dropped(1, 20)
"""
    for _ in range(4):
        proc = run_script(body, loop_kind)
        assert_clean(proc)
        delivered = "finished: 42" in proc.stdout
        stopped = "unfinished: %s" % b.EXIT_CANCEL_MESSAGE in proc.stdout
        # A value the Rust future makes in response to the stop is not its outcome.
        answered = "answered: %s" % b.EXIT_CANCEL_MESSAGE in proc.stdout
        assert "made up after the stop" not in proc.stdout, proc.stdout
        if THREADSAFE_WAKEUP:
            # Delivered only if a drain was already scheduled with the loop before the hook
            # (the waker thread stops there, L3); never a hang.
            assert delivered or "finished: HUNG" in proc.stdout, proc.stdout
            assert stopped or "unfinished: HUNG" in proc.stdout, proc.stdout
            assert answered or "answered: HUNG" in proc.stdout, proc.stdout
        else:
            assert delivered and stopped and answered, proc.stdout

"""Entry points (rules R2-R5): ``tokio::run`` called from Python, Ctrl-C sent to a Python
script blocked in it, several loops of both kinds at once, and ``block_on_python``.

Subprocesses are bounded by a deadline (the ``communicate`` timeout), never by a sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import bridge_pytests
from conftest import AVAILABLE_LOOP_KINDS, LOOP_PARAMS, new_loop

#: Deadline for one subprocess or one thread.
DEADLINE = 60

INTERRUPTED_SCRIPT = textwrap.dedent(
    """
    import asyncio, signal, sys
    import bridge_pytests

    # As when started from a terminal (a background job of a non-interactive shell inherits
    # SIG_IGN, which `run` rightly leaves alone).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    async def announce():
        print("ready", flush=True)
        try:
            await asyncio.sleep(3600)
        finally:
            print("python finally", flush=True)

    try:
        bridge_pytests.run_forever(announce)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    dropped, token_fired = bridge_pytests.run_forever_probe()
    print(f"dropped={dropped} token_fired={token_fired}", flush=True)
    restored = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    print(f"restored={restored}", flush=True)
    """
)


def test_r3_ctrl_c_in_a_python_script_blocked_in_run():
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # an event: the coroutine runs inside `run`
        assert first.strip() == "ready", (first, proc.stderr.read())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = out.splitlines()
    assert proc.returncode == 0, (out, err)
    assert lines == [
        "python finally",
        "KeyboardInterrupt",
        "dropped=True token_fired=True",
        "restored=True",
    ], (out, err)
    assert err == ""


def test_r2_run_from_python_without_a_loop():
    async def coro():
        await asyncio.sleep(0)
        return asyncio.get_running_loop(), threading.current_thread().name

    got = bridge_pytests.run_coro(coro())
    loop, name = got
    assert loop.is_closed()
    assert name == threading.current_thread().name
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_r2_run_inside_a_running_loop_raises(run):
    async def main():
        async def coro():
            return 1

        c = coro()
        with pytest.raises(RuntimeError, match="running in this thread"):
            bridge_pytests.run_coro(c)
        c.close()

    run(main)


def _loop_in_thread(kind: str):
    loop = new_loop(kind)
    started = threading.Event()
    loop.call_soon(started.set)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    assert started.wait(DEADLINE)
    return loop, thread


def _stop(loop, thread):
    loop.call_soon_threadsafe(loop.stop)
    thread.join(DEADLINE)
    loop.close()


@pytest.mark.parametrize("kind", LOOP_PARAMS)
def test_r5_block_on_python_waits_for_a_loop_in_another_thread(kind):
    loop, thread = _loop_in_thread(kind)
    try:

        async def add(a, b):
            await asyncio.sleep(0)
            return a + b, asyncio.get_running_loop()

        total, ran_on = bridge_pytests.block_on(loop, add(20, 22))
        assert total == 42 and ran_on is loop

        async def fails():
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            bridge_pytests.block_on(loop, fails())
    finally:
        _stop(loop, thread)


def test_r5_block_on_python_on_its_own_loop_raises(run):
    async def main():
        async def coro():
            return 1

        c = coro()
        with pytest.raises(RuntimeError, match="deadlock"):
            bridge_pytests.block_on(asyncio.get_running_loop(), c)
        assert c.cr_frame is None  # closed: no "never awaited" warning

    run(main)


def test_r4_loops_of_both_kinds_at_once_each_get_their_own_results():
    """Two loops of each kind (asyncio, uvloop, and rloop where it has a wheel), each in its own
    thread, run at the same time with crossings in flight in both directions; every result comes
    back to its own loop."""
    kinds = [kind for kind in AVAILABLE_LOOP_KINDS for _ in range(2)]
    barrier = threading.Barrier(len(kinds))
    errors: list[BaseException] = []
    per_loop = 200

    def worker(k: int, kind: str) -> None:
        loop = new_loop(kind)

        async def py_leg(i):
            await asyncio.sleep(0)
            return k, i, asyncio.get_running_loop()

        async def main():
            here = asyncio.get_running_loop()
            # Wait (off the loop) until every loop runs, so their crossings overlap.
            await here.run_in_executor(None, barrier.wait, DEADLINE)
            # Python -> Rust -> Python, and Python -> Rust, interleaved.
            results = await asyncio.gather(
                *(bridge_pytests.await_py(py_leg(i)) for i in range(per_loop)),
                *(bridge_pytests.sleep_then(0.001, (k, i)) for i in range(per_loop)),
            )
            for i, (k2, i2, seen) in enumerate(results[:per_loop]):
                assert (k2, i2) == (k, i)
                assert seen is here
            assert results[per_loop:] == [(k, i) for i in range(per_loop)]

        try:
            loop.run_until_complete(asyncio.wait_for(main(), DEADLINE))
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            loop.close()

    threads = [
        threading.Thread(target=worker, args=(k, kind)) for k, kind in enumerate(kinds)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()
    assert errors == []

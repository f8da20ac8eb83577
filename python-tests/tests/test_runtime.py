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
from conftest import AVAILABLE_LOOP_KINDS, LOOP_PARAMS, SCRIPT_LOOPS, loop_class, new_loop

#: Deadline for one subprocess or one thread.
DEADLINE = 60

#: The loop kind is ``sys.argv[1]``; `run` makes its loop with ``asyncio.new_event_loop()``, so
#: the script installs a policy that makes that kind.
SCRIPT_PREAMBLE = (
    textwrap.dedent(
        """
        import asyncio, signal, sys, threading
        import bridge_pytests
        """
    )
    + SCRIPT_LOOPS
    + textwrap.dedent(
        """
        class Policy(asyncio.DefaultEventLoopPolicy):
            def new_event_loop(self):
                loop = new_loop()
                if "--no-add-signal-handler" in sys.argv:
                    # As on Windows: `run` falls back to `signal.signal` (R3).
                    def refuse(*args):
                        raise NotImplementedError

                    loop.add_signal_handler = refuse
                return loop

        asyncio.set_event_loop_policy(Policy())

        # As when started from a terminal (a background job of a non-interactive shell
        # inherits SIG_IGN, which the bridge rightly leaves alone); with --sig-dfl, as in an
        # interpreter that installed no handler.
        if "--sig-dfl" in sys.argv:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        else:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        BEFORE = signal.getsignal(signal.SIGINT)
        """
    )
)

INTERRUPTED_SCRIPT = SCRIPT_PREAMBLE + textwrap.dedent(
    """
    async def announce():
        assert type(asyncio.get_running_loop()) is loop_class()
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
    restored = signal.getsignal(signal.SIGINT) is BEFORE
    print(f"restored={restored}", flush=True)
    """
)

#: R5: the main thread blocks in ``block_on_python`` on a loop running in another thread.
BLOCKED_SCRIPT = SCRIPT_PREAMBLE + textwrap.dedent(
    """
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ended = threading.Event()
    how = []

    async def announce():
        print("ready", flush=True)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            how.append("cancelled")
            raise
        finally:
            ended.set()

    try:
        bridge_pytests.block_on(loop, announce())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    print(f"task ended={ended.wait(30)} {how}", flush=True)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()
    print("closed", flush=True)
    """
)


def interrupt_script(script: str, kind: str, *args: str) -> list[str]:
    """Runs ``script`` with ``kind``, sends SIGINT once it printed "ready" (an event), and
    returns the lines it printed after that; it must exit 0 with nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, kind, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.strip() == "ready", (first, proc.stderr.read())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err)
    assert err == ""
    return out.splitlines()


@pytest.mark.parametrize("kind", LOOP_PARAMS)
def test_r3_ctrl_c_in_a_python_script_blocked_in_run(kind):
    assert interrupt_script(INTERRUPTED_SCRIPT, kind) == [
        "python finally",
        "KeyboardInterrupt",
        "dropped=True token_fired=True",
        "restored=True",
    ]


@pytest.mark.parametrize("kind", LOOP_PARAMS)
def test_r3_ctrl_c_over_sig_dfl_puts_sig_dfl_back(kind):
    """asyncio's and uvloop's ``remove_signal_handler`` set ``default_int_handler``: the bridge
    must put back what was there before, here ``SIG_DFL``."""
    assert interrupt_script(INTERRUPTED_SCRIPT, kind, "--sig-dfl") == [
        "python finally",
        "KeyboardInterrupt",
        "dropped=True token_fired=True",
        "restored=True",
    ]


def test_r3_ctrl_c_on_a_loop_without_add_signal_handler():
    """The handler goes in with ``signal.signal`` and comes off the same way."""
    assert interrupt_script(INTERRUPTED_SCRIPT, "asyncio", "--no-add-signal-handler") == [
        "python finally",
        "KeyboardInterrupt",
        "dropped=True token_fired=True",
        "restored=True",
    ]


@pytest.mark.parametrize("kind", LOOP_PARAMS)
def test_r5_ctrl_c_while_the_main_thread_blocks_on_python_cancels_the_task(kind):
    assert interrupt_script(BLOCKED_SCRIPT, kind) == [
        "KeyboardInterrupt",
        "task ended=True ['cancelled']",
        "closed",
    ]


@pytest.mark.parametrize("kind", LOOP_PARAMS)
def test_r2_run_from_python_without_a_loop(kind):
    """On the main thread, under a policy that makes ``kind``: the value comes back, the loop is
    closed, and the SIGINT handler `run` installed (R3) is taken off again."""

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self):
            return new_loop(kind)

    async def coro():
        await asyncio.sleep(0)
        return asyncio.get_running_loop(), threading.current_thread().name

    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    old_policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        loop, name = bridge_pytests.run_coro(coro())
    finally:
        asyncio.set_event_loop_policy(old_policy)
    assert isinstance(loop, loop_class(kind))
    assert loop.is_closed()
    assert name == threading.current_thread().name
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_r3_a_ctrl_c_inside_remove_signal_handler_is_not_lost():
    """A loop's error while `run` takes its handler off is dropped (rloop 0.5's always raises),
    but not a `KeyboardInterrupt`: that is a Ctrl-C, raised once the previous handler is back."""
    loops = []

    class Loop(asyncio.SelectorEventLoop):
        def remove_signal_handler(self, sig):
            super().remove_signal_handler(sig)
            raise KeyboardInterrupt

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self):
            loops.append(Loop())
            return loops[-1]

    async def coro():
        return 42

    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # not what remove_signal_handler puts back
    old_policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        with pytest.raises(KeyboardInterrupt):
            bridge_pytests.run_coro(coro())
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    finally:
        asyncio.set_event_loop_policy(old_policy)
        signal.signal(signal.SIGINT, before)
    assert loops[0].is_closed()


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

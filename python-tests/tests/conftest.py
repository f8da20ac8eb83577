"""Shared harness for the bridge's pytest suite.

Every async test takes the ``run`` fixture and is run once per loop kind (``loop_kind``): the
default asyncio loop, uvloop, and rloop (an asyncio loop written in Rust; it ships wheels for
CPython 3.10+ only, so its runs are skipped on 3.9 with that reason). ``run(coro_fn)`` gives each test a fresh loop in debug mode
and fails the test when anything goes wrong *around* it, not only inside it:

* every call of the loop's exception handler ("Task was destroyed but it is pending",
  "Future exception was never retrieved", an ``InvalidStateError`` raised in a callback, ...);
* every unraisable exception (``sys.unraisablehook``: errors in ``__del__``, warnings turned
  into errors inside finalizers, the bridge's own ``write_unraisable`` reports);
* a coroutine that neither finishes nor fails within ``timeout`` (the suite never hangs).

Works on CPython 3.9+: loops are made with their constructors and driven with
``run_until_complete`` (no ``asyncio.run(loop_factory=...)``, which is 3.12+).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import re
import traceback

import pytest

# Required, not optional: a missing uvloop must fail the run, not skip half of it.
import uvloop

import bridge_pytests  # noqa: F401 - a missing extension fails the run at collection

#: rloop ships wheels for CPython 3.10+ only (its 3.9 wheels stop at 0.2): there it is required
#: like uvloop (a missing one fails the run); on 3.9 its runs are skipped, with this reason.
RLOOP_SUPPORTED = sys.version_info >= (3, 10)
RLOOP_SKIP_REASON = "rloop ships no wheel for CPython 3.9 (rloop 0.3+ needs 3.10+)"
if RLOOP_SUPPORTED:
    import rloop
else:
    rloop = None

#: rloop 0.5's ``RLoop._ssock_stop`` (the end of every ``run_forever``) closes its self-pipe
#: socketpair twice: once in its Rust part (``_ssock_del``), then again when the Python socket
#: objects it drops are collected. By the second close the descriptor number may belong to
#: another thread (the bridge's wakeup socket among them, seen as a debug build's "IO Safety
#: violation" abort with loops in several threads). Seen without the bridge: ``strace -e close``
#: shows ``close(fd) = -1 EBADF`` after each run. The suite detaches the socket objects before
#: ``_ssock_del``, so only rloop's Rust part closes them; any other rloop release runs unpatched.
#: Executed here and in every subprocess script (``SCRIPT_LOOPS``).
RLOOP_SELF_PIPE_FIX = """
def _fix_rloop_self_pipe(rloop):
    if rloop.__version__ != "0.5.0":
        return

    def _ssock_stop(self):
        if not self._ssock_w:
            raise RuntimeError("self-socket has not been setup")
        fd = self._ssock_r.fileno()
        self._ssock_r.detach()
        self._ssock_w.detach()
        self._ssock_del(fd)
        self._ssock_w = None
        self._ssock_r = None

    rloop.RLoop._ssock_stop = _ssock_stop
"""
if rloop is not None:
    _fix_namespace: dict = {}
    exec(RLOOP_SELF_PIPE_FIX, _fix_namespace)
    _fix_namespace["_fix_rloop_self_pipe"](rloop)

LOOP_KINDS = ("asyncio", "uvloop", "rloop")

#: rloop 0.5 has no debug mode: ``set_debug`` does nothing and ``get_debug`` is always False, so
#: asyncio's debug checks (a non-threadsafe call from another thread raises, ...) are absent there.
LOOP_HAS_DEBUG_MODE = {"asyncio": True, "uvloop": True, "rloop": False}


def rloop_limitation(loop_kind: str, behaviour: str) -> None:
    """Skips the current test on rloop 0.5, whose ``behaviour`` makes it meaningless there.

    Only for what rloop itself lacks or does wrong, shown without the bridge. The skip names
    the rloop release, and a later rloop runs the test again."""
    if loop_kind == "rloop" and rloop is not None and rloop.__version__.startswith("0.5."):
        pytest.skip(f"rloop {rloop.__version__}: {behaviour}")


def exception_handler(report):
    """A loop exception handler calling ``report(context)``.

    asyncio calls a handler as ``handler(loop, context)``; rloop 0.5 calls it as
    ``handler(context)`` (and only logs the ``TypeError`` a two-argument handler raises), so the
    handler takes both."""

    def handler(*args):
        report(args[-1])

    return handler


#: ``LOOP_KINDS`` for ``pytest.mark.parametrize``: the rloop runs skip where rloop has no wheel.
LOOP_PARAMS = tuple(
    pytest.param(
        kind,
        marks=pytest.mark.skipif(
            kind == "rloop" and not RLOOP_SUPPORTED, reason=RLOOP_SKIP_REASON
        ),
    )
    for kind in LOOP_KINDS
)

#: The loop kinds this interpreter can run (for tests that spread work over every kind).
AVAILABLE_LOOP_KINDS = tuple(k for k in LOOP_KINDS if k != "rloop" or RLOOP_SUPPORTED)

#: The whole suite also runs with ``PYO3_ASYNC_BRIDGE_WAKEUP=threadsafe`` (see the Makefile).
THREADSAFE_WAKEUP = os.environ.get("PYO3_ASYNC_BRIDGE_WAKEUP") == "threadsafe"

#: Upper bound for one test coroutine; far above what any test needs.
DEFAULT_TIMEOUT = 30.0


def loop_class(kind: str) -> type:
    """The event loop class of ``kind`` (to subclass, or to check a loop against)."""
    if kind == "asyncio":
        # The default loop on Unix, named explicitly so that no installed policy changes it.
        return asyncio.SelectorEventLoop
    if kind == "uvloop":
        return uvloop.Loop
    if kind == "rloop":
        if rloop is None:
            pytest.skip(RLOOP_SKIP_REASON)
        return rloop.RLoop
    raise ValueError(f"unknown loop kind {kind!r}")


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh, not yet running event loop of ``kind``."""
    return loop_class(kind)()


#: ``loop_class()`` and ``new_loop()`` for the suite's subprocess scripts, which take the loop
#: kind as ``sys.argv[1]`` (the script imports ``asyncio`` and ``sys`` first).
SCRIPT_LOOPS = (
    RLOOP_SELF_PIPE_FIX
    + """
def loop_class():
    kind = sys.argv[1]
    if kind == "uvloop":
        import uvloop
        return uvloop.Loop
    if kind == "rloop":
        import rloop
        _fix_rloop_self_pipe(rloop)
        return rloop.RLoop
    assert kind == "asyncio", kind
    return asyncio.SelectorEventLoop

def new_loop():
    return loop_class()()
"""
)


def _describe_handler_call(context: dict) -> str:
    parts = [str(context.get("message", "<no message>"))]
    for key, value in context.items():
        if key in ("message", "exception", "source_traceback", "handle_traceback"):
            continue
        parts.append(f"  {key}: {value!r}")
    exc = context.get("exception")
    if exc is not None:
        parts.append(
            "  exception: "
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        )
    return "\n".join(parts)


def _describe_unraisable(u) -> str:
    head = f"{u.err_msg or 'Exception ignored in'}: {u.object!r}"
    body = "".join(traceback.format_exception(u.exc_type, u.exc_value, u.exc_traceback))
    return f"{head}\n{body}".rstrip()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Cancels the tasks a test left behind and lets them finish; returns the non-cancel
    errors they ended with."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return []
    outcomes = loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    return [
        f"leftover task {task!r} ended with {outcome!r}"
        for task, outcome in zip(pending, outcomes)
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError)
    ]


class Runner:
    """``run(coro_fn, *args)``: runs ``coro_fn(*args)`` to completion on a fresh loop of
    ``kind`` and returns its result (see the module docs for what fails the test)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return new_loop(self.kind)

    def __call__(self, coro_fn, *args, loop=None, timeout: float = DEFAULT_TIMEOUT):
        if loop is None:
            loop = self.new_loop()
        handler_calls: list[str] = []
        unraisable: list = []
        prev_hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        failed = True
        try:
            try:
                loop.set_debug(True)
                loop.set_exception_handler(
                    exception_handler(
                        lambda context: handler_calls.append(_describe_handler_call(context))
                    )
                )
                result = loop.run_until_complete(asyncio.wait_for(coro_fn(*args), timeout))
                failed = False
            finally:
                try:
                    handler_calls.extend(_cancel_leftovers(loop))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()
                    del loop
                    # Futures and tasks the test dropped report from their finalizers.
                    gc.collect()
        finally:
            sys.unraisablehook = prev_hook
            problems = handler_calls + [_describe_unraisable(u) for u in unraisable]
            if problems and failed:
                # Keep the test's own error; let pytest report the unraisables as well.
                for u in unraisable:
                    prev_hook(u)
        if problems:
            pytest.fail(
                f"{len(problems)} problem(s) reported outside the test's own control flow "
                f"({self.kind} loop):\n\n" + "\n\n".join(problems),
                pytrace=False,
            )
        return result


@pytest.fixture(params=LOOP_PARAMS)
def loop_kind(request) -> str:
    """Every async test runs on the default asyncio loop, uvloop and rloop."""
    return request.param


@pytest.fixture
def run(loop_kind: str) -> Runner:
    """``run(coro_fn, *args)``: see :class:`Runner`."""
    return Runner(loop_kind)


#: ``BRIDGE_TEST_RLOOP`` trims the rloop runs of a repeat pass, to keep ``make test`` short:
#: ``subset`` runs everything but the interpreter-exit and closed-loop subprocess scenarios (most
#: of the time rloop adds to a run), ``none`` no rloop run at all (the Makefile's threadsafe
#: pass: its wakeup, ``call_soon_threadsafe``, is what every loop has). The first pass and
#: ``make test-all-pythons`` run rloop in full. Deselected runs are counted as such in pytest's
#: summary and named in its header.
RLOOP_MODE = os.environ.get("BRIDGE_TEST_RLOOP", "all")
RLOOP_SUBSET = RLOOP_MODE == "subset"
_RLOOP_SUBSET_LEAVES_OUT = ("test_exit.py", "test_lifecycle.py")


def _rloop_left_out(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("loop_kind") != "rloop":
        return False
    return RLOOP_MODE == "none" or (RLOOP_SUBSET and item.path.name in _RLOOP_SUBSET_LEAVES_OUT)


def pytest_report_header(config) -> str:
    if not RLOOP_SUPPORTED:
        rloop_runs = RLOOP_SKIP_REASON
    elif RLOOP_MODE == "none":
        rloop_runs = f"rloop {rloop.__version__} deselected (BRIDGE_TEST_RLOOP=none)"
    else:
        rloop_runs = f"rloop {rloop.__version__}" + (
            f", without {' and '.join(_RLOOP_SUBSET_LEAVES_OUT)}" if RLOOP_SUBSET else ""
        )
    return f"loop kinds: asyncio, uvloop {uvloop.__version__}, {rloop_runs}"


def pytest_collection_modifyitems(config, items) -> None:
    if RLOOP_MODE not in ("all", "subset", "none"):
        raise pytest.UsageError(f"BRIDGE_TEST_RLOOP={RLOOP_MODE!r}: expected all, subset or none")
    if RLOOP_MODE == "all":
        return
    keep, left_out = [], []
    for item in items:
        (left_out if _rloop_left_out(item) else keep).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = keep


# A skip must be tied to a Python version (its reason names one, e.g. "3.11+") or to an rloop
# release (``rloop_limitation``: "rloop 0.5.0: ..."): any other skip would pass a suite off as
# green without running it, so it fails the session.
_VERSION_IN_REASON = re.compile(r"\b3\.\d+|^(Skipped: )?rloop \d+\.\d+\.\d+: ")
_untied_skips: list[str] = []


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not _VERSION_IN_REASON.search(str(reason)):
            _untied_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus) -> None:
    if _untied_skips:
        print("\nskips not tied to a Python version or an rloop release (they fail the run):")
        for line in _untied_skips:
            print(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

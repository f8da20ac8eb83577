"""TaskLocals inside a crossing: rule C1 (``get_current_locals`` gives the running loop and
the crossing's context) and C8 (that context is a copy of the caller's, taken at the call)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

import bridge_pytests as b

VAR = contextvars.ContextVar("VAR", default="default")
OTHER = contextvars.ContextVar("OTHER")  # no default


# --- C1 ---------------------------------------------------------------------------------------


def test_c1_locals_give_the_running_loop(run, loop_kind):
    async def main():
        loop, _ctx = await b.locals_inside()
        return loop is asyncio.get_running_loop(), type(loop).__module__

    same, module = run(main)
    assert same is True
    assert module.split(".")[0] == loop_kind  # asyncio, uvloop or rloop


def test_c1_locals_give_a_context_with_the_callers_values(run):
    async def main():
        VAR.set("caller value")
        OTHER.set(7)
        _loop, ctx = await b.locals_inside()
        return ctx

    ctx = run(main)
    assert isinstance(ctx, contextvars.Context)
    assert ctx[VAR] == "caller value"
    assert ctx[OTHER] == 7


def test_c1_context_is_a_copy_not_the_callers_own_context(run):
    async def main():
        caller_ctx = contextvars.copy_context()

        def call_in_caller_ctx():
            VAR.set("set inside caller_ctx")
            return b.locals_inside()

        # The crossing is created while `caller_ctx` is the current context.
        fut = caller_ctx.run(call_in_caller_ctx)
        _loop, ctx = await fut
        return caller_ctx, ctx

    caller_ctx, ctx = run(main)
    assert ctx is not caller_ctx
    assert caller_ctx[VAR] == "set inside caller_ctx"
    assert ctx[VAR] == "set inside caller_ctx"
    assert dict(ctx.items()) == dict(caller_ctx.items())


def test_c1_context_is_not_the_awaiting_tasks_context(run):
    async def main():
        VAR.set("task value")
        _loop, ctx = await b.locals_inside()
        # Running something in the crossing's context must not be possible if it were the
        # task's own (entered) context, and must not affect the task.
        ctx.run(VAR.set, "changed in crossing ctx")
        return ctx[VAR], VAR.get()

    assert run(main) == ("changed in crossing ctx", "task value")


def test_c1_each_crossing_carries_its_own_context(run):
    async def main():
        VAR.set("same caller")
        results = await asyncio.gather(*(b.locals_inside() for _ in range(20)))
        return results

    results = run(main)
    loops = {id(loop) for loop, _ in results}
    contexts = [ctx for _, ctx in results]
    assert len(loops) == 1
    assert len({id(c) for c in contexts}) == len(contexts)
    assert all(c[VAR] == "same caller" for c in contexts)


def test_c1_locals_in_concurrent_tasks_carry_each_tasks_values(run):
    async def one(i):
        VAR.set(i)
        loop, ctx = await b.locals_inside()
        return loop is asyncio.get_running_loop(), ctx[VAR]

    async def main():
        return await asyncio.gather(*(one(i) for i in range(300)))

    assert run(main) == [(True, i) for i in range(300)]


def test_c1_locals_inside_a_coroutine_awaited_by_rust(run):
    """Python → Rust → Python → Rust: the inner crossing sees the same loop and a copy of the
    awaited coroutine's context."""

    async def coro():
        VAR.set("set in coroutine")
        loop, ctx = await b.locals_inside()
        return loop is asyncio.get_running_loop(), ctx[VAR]

    async def main():
        VAR.set("caller")
        result = await b.await_py(coro())
        return result, VAR.get()

    assert run(main) == ((True, "set in coroutine"), "caller")


# --- C8 ---------------------------------------------------------------------------------------


def test_c8_rust_reads_the_callers_value(run):
    async def main():
        VAR.set("caller value")
        return await b.read_var_inside(VAR)

    assert run(main) == "caller value"


def test_c8_rust_reads_none_for_an_unset_var(run):
    async def main():
        return await b.read_var_inside(OTHER)

    assert run(main) is None


def test_c8_context_is_copied_at_the_call(run):
    async def main():
        VAR.set("before the call")
        fut = b.read_var_inside(VAR)
        VAR.set("after the call, before the await")
        seen = await fut
        return seen, VAR.get()

    assert run(main) == ("before the call", "after the call, before the await")


def test_c8_context_copied_at_the_call_even_when_rust_runs_later(run):
    """The crossing's coroutine reads the var only after the caller changed it several times;
    it still sees the value at the call."""

    async def main():
        VAR.set("at call")
        gate = b.sleep_then(0.01, None)
        fut = b.await_py(_read_after(gate))
        for i in range(5):
            VAR.set(f"changed {i}")
            await asyncio.sleep(0)
        return await fut

    assert run(main) == "at call"


async def _read_after(gate):
    await gate
    return VAR.get()


def test_c8_var_set_in_another_context_is_not_seen(run):
    async def main():
        VAR.set("task value")
        other = contextvars.copy_context()
        other.run(VAR.set, "other context value")
        return await b.read_var_inside(VAR)

    assert run(main) == "task value"


def test_c8_each_caller_context_is_independent(run):
    async def main():
        futs = []
        for i in range(50):
            ctx = contextvars.copy_context()

            def call(i=i):
                VAR.set(f"ctx {i}")
                return b.read_var_inside(VAR)

            futs.append(ctx.run(call))
        VAR.set("main after")
        return await asyncio.gather(*futs), VAR.get()

    values, after = run(main)
    assert values == [f"ctx {i}" for i in range(50)]
    assert after == "main after"


def test_c8_var_reset_before_the_call_is_seen_reset(run):
    async def main():
        token = VAR.set("temporary")
        VAR.reset(token)
        return await b.read_var_inside(VAR)

    # `read_var_inside` uses Context.get without a default: an unset var reads as None.
    assert run(main) is None


@pytest.mark.parametrize("n", [2000])
def test_c8_thousands_of_concurrent_reads_see_their_own_values(run, n):
    async def one(i):
        VAR.set(("task", i))
        await asyncio.sleep(0)
        fut = b.read_var_inside(VAR)
        VAR.set(("changed", i))
        return await fut

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    assert run(main) == [("task", i) for i in range(n)]


# --- C1: TaskLocals::new carries no context ------------------------------------------------------


def test_c1_locals_without_context_from_runtime_thread_run_in_a_fresh_empty_context(run):
    """A coroutine started with ``TaskLocals::new`` from a runtime thread sees none of the
    caller's values, and none of whoever made the loop's first crossing either (the bridge's
    reader is registered from an empty context)."""

    async def coro():
        seen = VAR.get(), OTHER.get("unset")
        VAR.set("changed by coroutine")
        return seen

    async def main():
        VAR.set("first user of the loop")
        OTHER.set(1)
        assert await b.ready("x") == "x"  # the loop's first crossing registers the queue
        VAR.set("caller")
        seen = await b.await_py_no_context(coro())
        again = await b.await_py_no_context(coro())
        return seen, again, VAR.get()

    seen, again, after = run(main)
    assert seen == ("default", "unset")
    assert again == ("default", "unset")  # the first coroutine's change did not stick either
    assert after == "caller"


def test_c1_locals_without_context_on_the_loop_thread_run_in_a_copy_of_callers_context(run):
    """Regression: when the running-loop check was broken, such a coroutine was started later by
    the queue's drain, in the drain's empty context instead of a copy of the caller's."""

    async def coro():
        seen = VAR.get()
        VAR.set("changed by coroutine")
        return seen

    async def main():
        VAR.set("caller")
        seen = await b.into_future_no_context_now(coro())
        return seen, VAR.get()

    assert run(main) == ("caller", "caller")

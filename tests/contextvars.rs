//! Rule C8: the `contextvars.Context` a crossing carries reaches the Python coroutines Rust
//! awaits inside it (`into_future`), each in its own copy: they see the crossing's values,
//! their changes flow neither back to the crossing nor to the next coroutine, and thousands of
//! concurrent crossings each see only their own values.

mod common;

use common::{gather, load_module, run, with_loop};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::tokio::{
    future_into_py, future_into_py_with_locals, get_current_locals, into_future,
};
use pyo3_async_bridge::TaskLocals;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio, contextvars

var = contextvars.ContextVar("var")

async def read_var():
    await asyncio.sleep(0)
    return var.get("<unset>")

async def set_var(value):
    before = var.get("<unset>")
    var.set(value)
    await asyncio.sleep(0)
    return before, var.get()

async def read_set_read(tag):
    """Reads, yields, overwrites, yields, and reports what it saw."""
    first = var.get("<unset>")
    await asyncio.sleep(0)
    second = var.get("<unset>")
    var.set(("mutated", tag))
    await asyncio.sleep(0)
    return first, second, var.get() == ("mutated", tag)

def context_with(value):
    """A fresh Context in which `var` is `value`."""
    ctx = contextvars.Context()
    ctx.run(var.set, value)
    return ctx

def in_entered_context(await_in, value):
    """Calls `await_in(ctx, coro)` while `ctx` itself is the entered context."""
    ctx = contextvars.copy_context()
    ctx.run(var.set, value)
    fut = ctx.run(await_in, ctx, set_var("set by the coroutine"))
    return ctx, fut

async def drive_in_entered_context(await_in):
    ctx, fut = in_entered_context(await_in, "entered")
    return ctx, await fut

async def copies_at_call(start_crossing):
    """C8: the context is copied at the call to future_into_py, not at the await."""
    var.set("at the call")
    fut = start_crossing()
    var.set("after the call")
    return await fut
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_contextvars")
}

/// Runtime thread, inside a crossing: awaits `helpers.<name>(*args)` through `into_future`.
async fn await_helper<A>(name: &'static str, args: A) -> PyResult<Py<PyAny>>
where
    A: for<'py> pyo3::call::PyCallArgs<'py> + Send,
{
    let fut = Python::attach(|py| into_future(helpers(py).getattr(name)?.call1(args)?))?;
    fut.await
}

/// Runtime thread, inside a crossing: the value of `var` in the crossing's own Context.
fn var_in_crossing_context() -> PyResult<Py<PyAny>> {
    Python::attach(|py| {
        let var = helpers(py).getattr("var")?;
        let ctx = get_current_locals(py)?.context(py);
        Ok(ctx.call_method1("get", (var, "<unset>"))?.unbind())
    })
}

#[test]
fn c8_coroutine_sees_the_crossing_context() {
    with_loop(|py, event_loop| {
        let ctx = helpers(py).call_method1("context_with", ("crossing value",))?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx);
        let fut =
            future_into_py_with_locals(py, locals, async { await_helper("read_var", ()).await })?;
        let seen: String = run(event_loop, &fut)?.extract()?;
        assert_eq!(seen, "crossing value");
        Ok(())
    });
}

#[test]
fn c8_copied_context_carries_the_callers_values() {
    with_loop(|py, event_loop| {
        let var = helpers(py).getattr("var")?;
        let ctx = helpers(py).call_method1("context_with", ("caller value",))?;
        // copy_context inside `ctx`: the crossing carries a copy of the caller's context.
        let locals = ctx.call_method1(
            "run",
            (pyo3::wrap_pyfunction!(copy_locals, py)?, event_loop),
        )?;
        let locals: TaskLocals = locals.extract::<Bound<'_, LocalsBox>>()?.get().0.clone();
        assert!(!locals.context(py).is(&ctx), "copy_context must copy");
        // Changing the caller's context afterwards changes nothing the crossing sees.
        ctx.call_method1("run", (var.getattr("set")?, "changed later"))?;
        let fut =
            future_into_py_with_locals(py, locals, async { await_helper("read_var", ()).await })?;
        let seen: String = run(event_loop, &fut)?.extract()?;
        assert_eq!(seen, "caller value");
        Ok(())
    });
}

/// Carries `TaskLocals` out of `Context.run`.
#[pyclass(frozen)]
struct LocalsBox(TaskLocals);

/// `TaskLocals::new(loop).copy_context()` in whatever context is current.
#[pyfunction]
fn copy_locals(event_loop: Bound<'_, PyAny>) -> PyResult<LocalsBox> {
    let py = event_loop.py();
    Ok(LocalsBox(TaskLocals::new(event_loop).copy_context(py)?))
}

/// Python awaits Rust through `future_into_py`, which then awaits `read_var()`.
#[pyfunction]
fn read_var_in_crossing(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async { await_helper("read_var", ()).await })
}

#[test]
fn c8_future_into_py_copies_the_context_at_the_call() {
    with_loop(|py, event_loop| {
        let start = pyo3::wrap_pyfunction!(read_var_in_crossing, py)?;
        let coro = helpers(py).call_method1("copies_at_call", (start,))?;
        let seen: String = run(event_loop, &coro)?.extract()?;
        assert_eq!(seen, "at the call");
        Ok(())
    });
}

#[test]
fn c8_coroutine_changes_do_not_flow_back() {
    with_loop(|py, event_loop| {
        let ctx = helpers(py).call_method1("context_with", ("original",))?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let fut = future_into_py_with_locals(py, locals, async {
            let first = await_helper("set_var", ("first change",)).await?;
            let crossing_after_first = var_in_crossing_context()?;
            let second = await_helper("set_var", ("second change",)).await?;
            let read = await_helper("read_var", ()).await?;
            Ok((first, crossing_after_first, second, read))
        })?;
        type Seen = ((String, String), String, (String, String), String);
        let (first, crossing_after_first, second, read): Seen = run(event_loop, &fut)?.extract()?;
        let expected_set = |v: &str| ("original".to_owned(), v.to_owned());
        assert_eq!(first, expected_set("first change"));
        assert_eq!(
            crossing_after_first, "original",
            "leaked back into the crossing"
        );
        assert_eq!(
            second,
            expected_set("second change"),
            "leaked into the next coroutine"
        );
        assert_eq!(read, "original");
        let var = helpers(py).getattr("var")?;
        let after: String = ctx.call_method1("get", (var,))?.extract()?;
        assert_eq!(after, "original", "leaked into the caller's Context object");
        Ok(())
    });
}

#[test]
fn c8_concurrent_crossings_each_see_only_their_own_value() {
    const CROSSINGS: i64 = 2_000;
    with_loop(|py, event_loop| {
        let futs = (0..CROSSINGS)
            .map(|i| {
                let ctx = helpers(py).call_method1("context_with", (i,))?;
                let locals = TaskLocals::new(event_loop.clone()).with_context(ctx);
                future_into_py_with_locals(py, locals, async move {
                    tokio::task::yield_now().await;
                    let first = await_helper("read_set_read", (i,)).await?;
                    tokio::task::yield_now().await;
                    let second = await_helper("read_var", ()).await?;
                    let crossing = var_in_crossing_context()?;
                    Ok((i, first, second, crossing))
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let results = gather(event_loop, futs)?;
        assert_eq!(results.len(), CROSSINGS as usize);
        for (i, result) in (0..).zip(results) {
            let (tag, (first, second, mutated), again, crossing): (
                i64,
                (i64, i64, bool),
                i64,
                i64,
            ) = result.extract()?;
            assert_eq!(tag, i);
            assert_eq!(
                (first, second),
                (i, i),
                "crossing {i} saw another crossing's value"
            );
            assert!(mutated, "crossing {i}: the coroutine's own set was lost");
            assert_eq!(
                again, i,
                "crossing {i}: a coroutine's set leaked into the next"
            );
            assert_eq!(crossing, i, "crossing {i}: a coroutine's set leaked back");
        }
        Ok(())
    });
}

/// Loop thread: `into_future_with_locals` with `ctx`, which the caller has entered right now.
#[pyfunction]
fn await_in<'py>(
    ctx: Bound<'py, PyAny>,
    awaitable: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = ctx.py();
    let locals = TaskLocals::with_running_loop(py)?.with_context(ctx);
    let fut = pyo3_async_bridge::into_future_with_locals(&locals, awaitable)?;
    future_into_py_with_locals(py, locals, fut)
}

#[test]
fn c8_into_future_inside_the_entered_context_runs_in_a_copy() {
    with_loop(|py, event_loop| {
        let await_in = pyo3::wrap_pyfunction!(await_in, py)?;
        let driver = helpers(py)
            .getattr("drive_in_entered_context")?
            .call1((await_in,))?;
        let (ctx, seen): (Bound<'_, PyAny>, (String, String)) =
            run(event_loop, &driver)?.extract()?;
        assert_eq!(
            seen,
            ("entered".to_owned(), "set by the coroutine".to_owned())
        );
        let var = helpers(py).getattr("var")?;
        let after: String = ctx.call_method1("get", (var,))?.extract()?;
        assert_eq!(
            after, "entered",
            "the coroutine's set leaked into the entered Context"
        );
        Ok(())
    });
}

/// Regression: the loop thread runs the bridge's deliveries in whatever context was current
/// when the bridge first used the loop. A coroutine started for locals without a context must
/// not see the values of that first user (another request's context, in a server).
#[test]

fn c8_context_less_crossing_does_not_see_the_loops_first_user() {
    Python::attach(|py| {
        let event_loop = common::new_loop(py);
        let outcome = (|| -> PyResult<String> {
            // The bridge meets this loop for the first time inside a context with a value.
            let first_user = helpers(py).call_method1("context_with", ("first user",))?;
            first_user.call_method1(
                "run",
                (pyo3::wrap_pyfunction!(copy_locals, py)?, &event_loop),
            )?;
            // Later, a crossing that carries no context awaits a coroutine from a worker.
            let locals = TaskLocals::new(event_loop.clone());
            let fut = future_into_py_with_locals(py, locals, async {
                await_helper("read_var", ()).await
            })?;
            run(&event_loop, &fut)?.extract()
        })();
        let problems = common::close_loop(&event_loop);
        let seen = outcome.unwrap_or_else(|e| common::fail(py, e));
        assert!(problems.is_empty(), "{problems:#?}");
        assert_ne!(
            seen, "first user",
            "the first user's context leaked into a later crossing"
        );
    });
}

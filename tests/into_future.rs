//! Rust awaits Python (rules C2, C9): a coroutine, an `asyncio.Future`, a Task and an object
//! with `__await__` awaited from Rust, and a non-awaitable refused with `TypeError`, both when
//! `into_future_with_locals` is called on the loop thread and when it is called from a tokio
//! worker thread (inside the test's own `Python::attach`).

mod common;

use common::{crossing, gather, load_module, run, with_loop, Attached};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::tokio::{
    future_into_py_with_locals, get_current_locals, get_runtime, into_future,
};
use pyo3_async_bridge::{get_running_loop, into_future_with_locals, PyFuture, TaskLocals};

const HELPERS: &std::ffi::CStr = cr#"
import asyncio

async def add(a, b):
    await asyncio.sleep(0)
    return a + b

class Awaitable:
    """Not a coroutine, not a future: only __await__."""
    def __init__(self, value):
        self.value = value
    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return self.value

RAISED = {}

async def fails(key):
    await asyncio.sleep(0)
    exc = ValueError(f"failure {key}")
    RAISED[key] = exc
    raise exc

async def resolve(fut, value):
    """Resolves `fut`, from a task on its loop."""
    fut.set_result(value)

async def from_loop_thread(await_here):
    """Calls into_future_with_locals on the loop thread for each kind of awaitable."""
    loop = asyncio.get_running_loop()
    coro_result = await await_here(add(20, 22))
    fut = loop.create_future()
    crossing = await_here(fut)            # the future is pending when handed over
    loop.call_soon(fut.set_result, "future result")
    fut_result = await crossing
    task = asyncio.ensure_future(add(1, 2))
    task_result = await await_here(task)
    custom_result = await await_here(Awaitable("custom result"))
    try:
        await_here(42)
    except TypeError as e:
        refused = str(e)
    else:
        refused = None
    try:
        await await_here(fails("loop thread"))
    except ValueError as e:
        same = e is RAISED["loop thread"]
    else:
        same = False
    return coro_result, fut_result, task_result, custom_result, refused, same

async def on_loop(await_here, awaitable):
    return await await_here(awaitable)

async def awaits(fut, started):
    started.set_result(None)
    return await fut

async def pending_future():
    return asyncio.get_running_loop().create_future()
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_into_future")
}

/// Loop thread: `into_future_with_locals` right here, then a crossing that awaits the result.
#[pyfunction]
fn await_here(awaitable: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyAny>> {
    let py = awaitable.py();
    // Proof that this runs on the loop thread, inside the running loop.
    let locals = TaskLocals::new(get_running_loop(py)?).copy_context(py)?;
    let fut = into_future_with_locals(&locals, awaitable)?;
    future_into_py_with_locals(py, locals, fut)
}

#[test]
fn c2_loop_thread_into_future_awaits_every_kind_of_awaitable() {
    with_loop(|py, event_loop| {
        let driver = helpers(py).call_method1(
            "from_loop_thread",
            (pyo3::wrap_pyfunction!(await_here, py)?,),
        )?;
        type Seen = (i64, String, i64, String, Option<String>, bool);
        let (coro, fut, task, custom, refused, same): Seen = run(event_loop, &driver)?.extract()?;
        assert_eq!(coro, 42);
        assert_eq!(fut, "future result");
        assert_eq!(task, 3);
        assert_eq!(custom, "custom result");
        let refused = refused.expect("a non-awaitable must raise TypeError at the call");
        assert!(
            refused.contains("42") && refused.contains("not awaitable"),
            "{refused}"
        );
        assert!(
            same,
            "the exception Rust awaited is not the one the coroutine raised"
        );
        Ok(())
    });
}

/// Worker thread, attached: asserts that this is a runtime thread without a running loop.
fn assert_off_loop(py: Python<'_>) {
    let name = std::thread::current().name().map(str::to_owned);
    assert!(
        name.as_deref() == Some("pyo3-async-bridge-worker"),
        "expected a runtime worker thread, got {name:?}"
    );
    assert!(
        get_running_loop(py).is_err(),
        "a loop runs on the worker thread"
    );
}

/// Worker thread, inside a crossing: `into_future_with_locals` with the crossing's locals.
fn start_from_worker(
    make: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<PyFuture> {
    Python::attach(|py| {
        assert_off_loop(py);
        into_future_with_locals(&get_current_locals(py)?, make(py)?)
    })
}

/// Worker thread: awaits `fut` and extracts its value, attached.
async fn value_of<T>(fut: PyFuture) -> PyResult<T>
where
    T: for<'a, 'py> FromPyObject<'a, 'py, Error = PyErr>,
{
    let result = fut.await;
    Python::attach(|py| result?.extract(py))
}

#[test]
fn c2_worker_into_future_awaits_a_coroutine() {
    with_loop(|_py, event_loop| {
        let fut = crossing(event_loop, async {
            let fut = start_from_worker(|py| helpers(py).getattr("add")?.call1((40, 2)))?;
            value_of::<i64>(fut).await
        })?;
        assert_eq!(run(event_loop, &fut)?.extract::<i64>()?, 42);
        Ok(())
    });
}

#[test]
fn c2_worker_into_future_awaits_an_object_with_await() {
    with_loop(|_py, event_loop| {
        let fut = crossing(event_loop, async {
            let fut = start_from_worker(|py| helpers(py).getattr("Awaitable")?.call1(("v",)))?;
            value_of::<String>(fut).await
        })?;
        assert_eq!(run(event_loop, &fut)?.extract::<String>()?, "v");
        Ok(())
    });
}

#[test]
fn c2_worker_into_future_awaits_a_pending_future() {
    with_loop(|py, event_loop| {
        // A pending asyncio.Future of this loop, resolved only after the worker handed it over.
        let pending = run(event_loop, &helpers(py).call_method0("pending_future")?)?;
        let target = Attached::new(pending.clone().unbind());
        let for_resolver = Attached::new(pending.clone().unbind());
        let fut = crossing(event_loop, async move {
            let fut = start_from_worker(|py| Ok(target.take().into_bound(py)))?;
            // Requests reach the loop thread in order: the future is pending when the bridge
            // hooks it, and resolved by a task started after that.
            let resolver = start_from_worker(|py| {
                let target = for_resolver.take().into_bound(py);
                helpers(py)
                    .getattr("resolve")?
                    .call1((target, "resolved later"))
            })?;
            let (value, resolved) = futures::join!(value_of::<String>(fut), resolver);
            Python::attach(|py| resolved.map(|r| r.drop_ref(py)))?;
            value
        })?;
        assert_eq!(
            run(event_loop, &fut)?.extract::<String>()?,
            "resolved later"
        );
        assert!(pending.call_method0("done")?.is_truthy()?);
        Ok(())
    });
}

#[test]
fn c2_worker_into_future_awaits_a_task() {
    with_loop(|py, event_loop| {
        let task = event_loop
            .call_method1("create_task", (helpers(py).getattr("add")?.call1((5, 6))?,))?;
        let task_ref = Attached::new(task.clone().unbind());
        let fut = crossing(event_loop, async move {
            let fut = start_from_worker(|py| Ok(task_ref.take().into_bound(py)))?;
            value_of::<i64>(fut).await
        })?;
        assert_eq!(run(event_loop, &fut)?.extract::<i64>()?, 11);
        Ok(())
    });
}

#[test]
fn c2_worker_into_future_returns_the_raised_exception() {
    with_loop(|_py, event_loop| {
        let fut = crossing(event_loop, async {
            let fut = start_from_worker(|py| helpers(py).getattr("fails")?.call1(("worker",)))?;
            let result = fut.await;
            Python::attach(|py| {
                let err = result.expect_err("the coroutine raised");
                let raised = helpers(py).getattr("RAISED")?.get_item("worker")?;
                Ok(err.is_instance_of::<PyValueError>(py) && err.value(py).is(&raised))
            })
        })?;
        let same: bool = run(event_loop, &fut)?.extract()?;
        assert!(
            same,
            "the exception Rust awaited is not the one the coroutine raised"
        );
        Ok(())
    });
}

#[test]
fn c9_into_future_from_a_worker_refuses_a_non_awaitable() {
    with_loop(|_py, event_loop| {
        let fut = crossing(event_loop, async {
            Python::attach(|py| {
                assert_off_loop(py);
                let locals = get_current_locals(py)?;
                let refused =
                    into_future_with_locals(&locals, 42_i64.into_pyobject(py)?.into_any())
                        .expect_err("42 is not awaitable");
                assert!(refused.is_instance_of::<PyTypeError>(py), "got {refused}");
                Ok(refused.to_string())
            })
        })?;
        let message: String = run(event_loop, &fut)?.extract()?;
        assert!(
            message.contains("42") && message.contains("not awaitable"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn c9_non_awaitable_awaited_through_a_crossing_raises_type_error() {
    with_loop(|py, event_loop| {
        let fut = crossing(event_loop, async {
            let fut = Python::attach(|py| into_future(py.None().into_bound(py)))?;
            fut.await
        })?;
        let err = run(event_loop, &fut).expect_err("the crossing must raise");
        assert!(err.is_instance_of::<PyTypeError>(py), "got {err}");
        assert!(err.to_string().contains("None"), "{err}");
        Ok(())
    });
}

#[test]
fn c9_plain_task_needs_explicit_locals() {
    with_loop(|_py, event_loop| {
        let locals = common::locals_for(event_loop)?;
        // A plain runtime task: no crossing, no scope, so only explicit locals can work.
        let task = get_runtime().spawn(async move {
            let implicit_refused = Python::attach(|py| {
                let coro = helpers(py).getattr("add")?.call1((1, 1))?;
                let refused = into_future(coro.clone()).err();
                coro.call_method0("close")?;
                PyResult::Ok(refused.map(|e| e.is_instance_of::<PyRuntimeError>(py)))
            })?;
            let fut = Python::attach(|py| {
                into_future_with_locals(&locals, helpers(py).getattr("add")?.call1((20, 3))?)
            })?;
            let value = value_of::<i64>(fut).await?;
            PyResult::Ok((implicit_refused, value))
        });
        // The loop runs while the task waits for its coroutine.
        let fut = crossing(
            event_loop,
            async move { task.await.expect("the task panicked") },
        )?;
        let (implicit_refused, value): (Option<bool>, i64) = run(event_loop, &fut)?.extract()?;
        assert_eq!(
            implicit_refused,
            Some(true),
            "into_future outside any crossing must raise RuntimeError"
        );
        assert_eq!(value, 23);
        Ok(())
    });
}

#[test]
fn c2_many_into_futures_from_workers_and_the_loop_thread() {
    with_loop(|py, event_loop| {
        let await_here_fn = pyo3::wrap_pyfunction!(await_here, py)?;
        let mut futs = Vec::new();
        for i in 0..500_i64 {
            futs.push(crossing(event_loop, async move {
                let fut = start_from_worker(|py| helpers(py).getattr("add")?.call1((i, i)))?;
                value_of::<i64>(fut).await
            })?);
            let coro = helpers(py).getattr("add")?.call1((i, 1))?;
            futs.push(helpers(py).call_method1("on_loop", (&await_here_fn, coro))?);
        }
        let values = gather(event_loop, futs)?
            .iter()
            .map(|v| v.extract::<i64>())
            .collect::<PyResult<Vec<_>>>()?;
        let expected: Vec<i64> = (0..500).flat_map(|i| [2 * i, i + 1]).collect();
        assert_eq!(values, expected);
        Ok(())
    });
}

/// Regression: a task that `into_future` started must stay alive while it waits, even when the
/// only thing it waits on is a crossing.
///
/// asyncio keeps only weak references to tasks. A task suspended on a crossing's future forms a
/// cycle (task -> coroutine frame -> future -> done callback -> task) that nothing else holds,
/// so the cyclic GC could collect it mid-flight, and the `PyFuture` would resolve to "the Python
/// awaitable was dropped".
#[test]

fn c2_task_started_by_into_future_survives_gc_while_awaiting_a_crossing() {
    with_loop(|py, event_loop| {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let inner = crossing(event_loop, async move {
            released
                .await
                .map_err(|_| PyRuntimeError::new_err("never released"))?;
            Ok(7_i64)
        })?;
        let started = event_loop.call_method0("create_future")?;
        let coro = helpers(py).call_method1("awaits", (inner, &started))?;
        let pyfut = into_future_with_locals(&common::locals_for(event_loop)?, coro)?;
        let outer = crossing(event_loop, pyfut)?;
        // Runs the loop until the task is suspended on the inner crossing's future.
        run(event_loop, &started)?;
        py.import("gc")?.call_method0("collect")?;
        // Fails (the receiver is gone) when the GC pass cancelled the inner crossing.
        let _ = release.send(());
        let outcome = run(event_loop, &outer).and_then(|v| v.extract::<i64>());
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Ok(7),
            "the task was collected while it awaited the inner crossing"
        );
        Ok(())
    });
}

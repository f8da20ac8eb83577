//! Test extension for the pytest suite: each function exercises one rule of `SPEC.md`.

mod cancel;
mod drop;
mod runtime;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{
    future_into_py, future_into_py_with_locals, get_current_locals, get_current_loop, into_future,
};
use pyo3_async_bridge::{into_future_with_locals, TaskLocals};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Resolves to `value` after `secs` seconds of tokio sleep (C2).
#[pyfunction]
fn sleep_then(py: Python<'_>, secs: f64, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        Ok(value)
    })
}

/// Resolves to `value` at once (the cheapest crossing; also used by benchmarks).
#[pyfunction]
fn ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Ok(value) })
}

/// Resolves to the integer `n + 1`, converted on the loop thread.
#[pyfunction]
fn add_one(py: Python<'_>, n: i64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Ok(n + 1) })
}

/// Returns `Ok(())`, which must arrive as `None` (C2).
#[pyfunction]
fn unit(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Ok(()) })
}

/// Fails with the given exception object (C2).
#[pyfunction]
fn raise_<'py>(py: Python<'py>, exc: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let err = PyErr::from_value(exc);
    future_into_py(py, async move { Err::<(), _>(err) })
}

/// Fails with a ValueError created lazily on the runtime thread.
#[pyfunction]
fn raise_lazy(py: Python<'_>, msg: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Err::<(), _>(PyValueError::new_err(msg)) })
}

/// Panics with a `&'static str` or a formatted `String` payload (C2).
#[pyfunction]
fn panic_with(py: Python<'_>, msg: String, static_str: bool) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        if static_str {
            std::panic::panic_any("static panic message");
        }
        panic!("{msg}");
        #[allow(unreachable_code)]
        Ok(())
    })
}

/// A value whose conversion to Python fails.
struct Unconvertible;
impl<'py> IntoPyObject<'py> for Unconvertible {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, _py: Python<'py>) -> PyResult<Self::Output> {
        Err(PyValueError::new_err(
            "Unconvertible cannot become a Python object",
        ))
    }
}

/// A value whose conversion to Python panics.
struct PanicsOnConvert;
impl<'py> IntoPyObject<'py> for PanicsOnConvert {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, _py: Python<'py>) -> PyResult<Self::Output> {
        panic!("conversion exploded")
    }
}

/// Resolves to a value whose conversion fails (`panics=False`) or panics (C2).
#[pyfunction]
fn bad_conversion(py: Python<'_>, panics: bool) -> PyResult<Bound<'_, PyAny>> {
    if panics {
        future_into_py(py, async move { Ok(PanicsOnConvert) })
    } else {
        future_into_py(py, async move { Ok(Unconvertible) })
    }
}

/// Rust awaits `awaitable` inside a crossing and returns its result (C8, C9).
#[pyfunction]
fn await_py(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let fut = Python::attach(|py| into_future(awaitable.into_bound(py)))?;
        fut.await
    })
}

/// Rust awaits each awaitable in turn inside one crossing; returns their results (C8).
#[pyfunction]
fn await_each(py: Python<'_>, awaitables: Vec<Py<PyAny>>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let mut out = Vec::with_capacity(awaitables.len());
        for aw in awaitables {
            let fut = Python::attach(|py| into_future(aw.into_bound(py)))?;
            out.push(fut.await?);
        }
        Ok(out)
    })
}

/// Calls `into_future` on the loop thread, before the crossing exists (`TypeError` at the call).
#[pyfunction]
fn into_future_now<'py>(
    py: Python<'py>,
    awaitable: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let fut = into_future(awaitable)?;
    future_into_py(py, fut)
}

/// The locals seen inside the crossing: `(loop, context)` (C1).
#[pyfunction]
fn locals_inside(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        Python::attach(|py| {
            let l = get_current_locals(py)?;
            Ok((l.event_loop(py).unbind(), l.context(py).unbind()))
        })
    })
}

/// Reads `var` inside the crossing's context, from Rust (C8).
#[pyfunction]
fn read_var_inside(py: Python<'_>, var: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        Python::attach(|py| {
            let ctx = get_current_locals(py)?.context(py);
            ctx.call_method1("get", (var.bind(py),)).map(Bound::unbind)
        })
    })
}

/// Resolves to `value` on `event_loop`, through `TaskLocals::new(event_loop)` (C9: an object
/// that is not a usable loop raises `TypeError` at the call).
#[pyfunction]
fn ready_on<'py>(
    py: Python<'py>,
    event_loop: Bound<'py, PyAny>,
    value: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    future_into_py_with_locals(py, TaskLocals::new(event_loop), async move { Ok(value) })
}

/// Starts `awaitable` at the call, on the loop thread, with `TaskLocals::new` (no context),
/// and resolves to its result (C1: it runs in a copy of the caller's context).
#[pyfunction]
fn into_future_no_context_now<'py>(
    py: Python<'py>,
    awaitable: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let locals = TaskLocals::new(pyo3_async_bridge::get_running_loop(py)?);
    let fut = into_future_with_locals(&locals, awaitable)?;
    future_into_py(py, fut)
}

/// Rust starts `awaitable` from a runtime thread with `TaskLocals::new` (no context) and
/// returns its result (C1: it runs in a fresh, empty context).
#[pyfunction]
fn await_py_no_context(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let fut = Python::attach(|py| {
            let locals = TaskLocals::new(get_current_loop(py)?);
            into_future_with_locals(&locals, awaitable.into_bound(py))
        })?;
        fut.await
    })
}

static RUST_DROPS: AtomicU64 = AtomicU64::new(0);

/// Counts its own drop in [`rust_drops`].
struct CountDrop;
impl Drop for CountDrop {
    fn drop(&mut self) {
        RUST_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Like `sleep_then(secs, None)`, but the Rust future's drop is counted in `rust_drops()` (C7:
/// a cancelled or collected future's Rust work is dropped).
#[pyfunction]
fn counted_sleep(py: Python<'_>, secs: f64) -> PyResult<Bound<'_, PyAny>> {
    let guard = CountDrop;
    future_into_py(py, async move {
        let _guard = guard;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        Ok(())
    })
}

/// How many `counted_sleep` futures have been dropped on the Rust side.
#[pyfunction]
fn rust_drops() -> u64 {
    RUST_DROPS.load(Ordering::SeqCst)
}

/// Bridge counters: `(wakeups, drains, jobs, runtime_thread_attaches, other_attaches)`.
#[pyfunction]
fn stats() -> (u64, u64, u64, u64, u64) {
    let q = pyo3_async_bridge::debug::queue_stats();
    let a = pyo3_async_bridge::debug::attach_counts();
    (
        q.wakeups,
        q.drains,
        q.jobs,
        a.runtime_threads,
        a.other_threads,
    )
}

/// The test extension module.
#[pymodule]
fn bridge_pytests(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "RustPanic",
        m.py().get_type::<pyo3_async_bridge::RustPanic>(),
    )?;
    cancel::register(m)?;
    drop::register(m)?;
    runtime::register(m)?;
    m.add_function(wrap_pyfunction!(sleep_then, m)?)?;
    m.add_function(wrap_pyfunction!(ready, m)?)?;
    m.add_function(wrap_pyfunction!(add_one, m)?)?;
    m.add_function(wrap_pyfunction!(unit, m)?)?;
    m.add_function(wrap_pyfunction!(raise_, m)?)?;
    m.add_function(wrap_pyfunction!(raise_lazy, m)?)?;
    m.add_function(wrap_pyfunction!(panic_with, m)?)?;
    m.add_function(wrap_pyfunction!(bad_conversion, m)?)?;
    m.add_function(wrap_pyfunction!(await_py, m)?)?;
    m.add_function(wrap_pyfunction!(await_each, m)?)?;
    m.add_function(wrap_pyfunction!(into_future_now, m)?)?;
    m.add_function(wrap_pyfunction!(locals_inside, m)?)?;
    m.add_function(wrap_pyfunction!(read_var_inside, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(ready_on, m)?)?;
    m.add_function(wrap_pyfunction!(into_future_no_context_now, m)?)?;
    m.add_function(wrap_pyfunction!(await_py_no_context, m)?)?;
    m.add_function(wrap_pyfunction!(counted_sleep, m)?)?;
    m.add_function(wrap_pyfunction!(rust_drops, m)?)?;
    Ok(())
}

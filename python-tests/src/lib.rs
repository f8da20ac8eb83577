//! Test extension for the pytest suite: each function exercises one rule of `SPEC.md`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{future_into_py, get_current_locals, into_future};
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
    Ok(())
}

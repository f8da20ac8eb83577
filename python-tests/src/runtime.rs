//! Entry points for the pytest suite (`tests/test_runtime.py`): `run`, Ctrl-C, several loops,
//! `block_on_python` (rules R2-R5).

use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{block_on_python, cancellation_token, into_future, run};
use std::sync::atomic::{AtomicBool, Ordering};

static RUN_DROPPED: AtomicBool = AtomicBool::new(false);
static RUN_TOKEN_FIRED: AtomicBool = AtomicBool::new(false);

/// Flags the Rust future of `run_forever` when it is dropped, and whether its token had fired.
struct RunGuard;
impl Drop for RunGuard {
    fn drop(&mut self) {
        let fired = cancellation_token().is_some_and(|t| t.is_cancelled());
        RUN_TOKEN_FIRED.store(fired, Ordering::SeqCst);
        RUN_DROPPED.store(true, Ordering::SeqCst);
    }
}

/// `tokio::run` (no loop needed) of Rust work that awaits `coro_fn()` and then waits for ever:
/// only Ctrl-C ends it (R3).
#[pyfunction]
fn run_forever(py: Python<'_>, coro_fn: Py<PyAny>) -> PyResult<()> {
    run(py, async move {
        let _guard = RunGuard;
        let fut = Python::attach(|py| into_future(coro_fn.bind(py).call0()?))?;
        fut.await?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// `(dropped, token_fired)` of the last `run_forever`.
#[pyfunction]
fn run_forever_probe() -> (bool, bool) {
    (
        RUN_DROPPED.load(Ordering::SeqCst),
        RUN_TOKEN_FIRED.load(Ordering::SeqCst),
    )
}

/// `tokio::run` of Rust work that awaits `coro` and returns its result (R2).
#[pyfunction]
fn run_coro(py: Python<'_>, coro: Py<PyAny>) -> PyResult<Py<PyAny>> {
    run(py, async move {
        let fut = Python::attach(|py| into_future(coro.into_bound(py)))?;
        fut.await
    })
}

/// `tokio::block_on_python(event_loop, awaitable)` (R5).
#[pyfunction]
fn block_on(event_loop: Bound<'_, PyAny>, awaitable: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    block_on_python(&event_loop, awaitable)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_forever, m)?)?;
    m.add_function(wrap_pyfunction!(run_forever_probe, m)?)?;
    m.add_function(wrap_pyfunction!(run_coro, m)?)?;
    m.add_function(wrap_pyfunction!(block_on, m)?)?;
    Ok(())
}

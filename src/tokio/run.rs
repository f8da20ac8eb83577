//! [`run`] and [`run_until_complete`] on the bridge's tokio runtime (rules R2, R3): the
//! runtime-independent `crate::run` with tokio's crossings, so the main future sees its
//! crossing's [`cancellation_token`](super::cancellation_token) too.

use super::future_into_py_with_locals;
use crate::TaskLocals;
use pyo3::prelude::*;
use std::future::Future;

/// Runs `fut` to completion on `event_loop`, on this thread, and returns its value.
///
/// The loop is not closed, and other tasks on it are left alone (see [`run`] for the complete
/// life of a loop). If the loop stops before `fut` is done (a `KeyboardInterrupt` raised by a
/// signal handler, `loop.stop()`), `fut` is cancelled and dropped before this returns.
///
/// # Contextvars
/// `fut` runs with [`TaskLocals`] for `event_loop` carrying a copy of the caller's context
/// (C1, C8): coroutines it awaits see the caller's `ContextVar` values.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// Python::attach(|py| -> PyResult<()> {
///     let event_loop = py.import("asyncio")?.call_method0("new_event_loop")?;
///     let n = pyo3_async_bridge::tokio::run_until_complete(event_loop.clone(), async { Ok(42) })?;
///     assert_eq!(n, 42);
///     event_loop.call_method0("close")?;
///     Ok(())
/// })
/// .unwrap();
/// ```
///
/// # Errors
/// What `fut` returns, a panic of `fut` as `RustPanic`, `CancelledError` when the crossing was
/// cancelled; `RuntimeError` when a loop already runs in this thread or `event_loop` is closed
/// (nothing is started then); `TypeError` when `event_loop` is not an event loop.
pub fn run_until_complete<F, T>(event_loop: Bound<'_, PyAny>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    crate::run::run_until_complete(spawn_main, &event_loop, fut)
}

/// Runs `fut` to completion on a new event loop, like `asyncio.run`, and returns its value.
///
/// The loop comes from `asyncio.new_event_loop()` (so an installed policy, such as uvloop's,
/// applies) and is this thread's current loop while `fut` runs. On the way out, as
/// `asyncio.run` does, the tasks left on the loop are cancelled and awaited, async generators
/// and the default executor are shut down, and the loop is closed.
///
/// # Cancellation
/// On the main thread, Ctrl-C cancels `fut` (rule R3): its cancellation token fires, it is
/// dropped, and `run` returns `KeyboardInterrupt`. A second Ctrl-C while the cancellation is
/// being awaited raises `KeyboardInterrupt` at once. This holds where SIGINT still has Python's
/// default handler or none at all (`SIG_DFL`, an embedded interpreter); a handler of the
/// user's is left alone, and off the main thread nothing is installed.
///
/// # Contextvars
/// As in [`run_until_complete`].
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// let n = Python::attach(|py| {
///     pyo3_async_bridge::tokio::run(py, async {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         Ok(7)
///     })
/// })
/// .unwrap();
/// assert_eq!(n, 7);
/// ```
///
/// # Errors
/// As [`run_until_complete`], plus `KeyboardInterrupt` after Ctrl-C; an error while closing the
/// loop when `fut` succeeded.
pub fn run<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    crate::run::run(spawn_main, py, fut)
}

/// How `run` makes its crossings: as [`future_into_py_with_locals`] does, so the main future
/// sees the crossing's [`cancellation_token`](super::cancellation_token) too.
fn spawn_main<'py>(
    py: Python<'py>,
    locals: TaskLocals,
    fut: futures::future::BoxFuture<'static, PyResult<()>>,
) -> PyResult<Bound<'py, PyAny>> {
    future_into_py_with_locals(py, locals, fut)
}

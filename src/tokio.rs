//! The tokio runtime: crossings in both directions, task-local [`TaskLocals`], the runtime.
//!
//! Mirrors `pyo3_async_runtimes::tokio`.

use crate::attach::mark_runtime_thread;
use crate::into_future::into_future_with_locals;
use crate::into_py::{drive, new_crossing};
use crate::{PyFuture, TaskLocals};
use pyo3::prelude::*;
use std::future::Future;
use std::sync::{Mutex, OnceLock, PoisonError};

pub use ::tokio::runtime::{Builder, Runtime};

::tokio::task_local! {
    static TASK_LOCALS: TaskLocals;
}

static BUILDER: Mutex<Option<Builder>> = Mutex::new(None);
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Sets the builder of the runtime [`get_runtime`] creates. Has no effect once it exists.
pub fn init(builder: Builder) {
    *BUILDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(builder);
}

/// The bridge's tokio runtime: by default a multi-thread runtime, built on first use.
///
/// # Panics
/// When the runtime cannot be built (for example a builder given to [`init`] is invalid).
pub fn get_runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let user = BUILDER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut builder = user.unwrap_or_else(|| {
            let mut b = Builder::new_multi_thread();
            b.enable_all()
                .thread_name("pyo3-async-bridge-worker")
                .on_thread_start(mark_runtime_thread);
            b
        });
        builder.build().expect("failed to build the tokio runtime")
    })
}

/// Runs `fut` with `locals` as the current [`TaskLocals`] (C1). The inner future is also
/// dropped inside the scope, so its destructors see the same locals.
pub fn scope<F, R>(locals: TaskLocals, fut: F) -> impl Future<Output = R> + Send
where
    F: Future<Output = R> + Send + 'static,
{
    TASK_LOCALS.scope(locals, fut)
}

/// The event loop of the current crossing, or else the loop running in this thread.
///
/// # Errors
/// `RuntimeError` when there is neither (C9).
pub fn get_current_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    match TASK_LOCALS.try_with(|l| l.event_loop(py)) {
        Ok(l) => Ok(l),
        Err(_) => crate::get_running_loop(py),
    }
}

/// The locals of the current crossing, or else the running loop with a copy of the current
/// context (C1, C8).
///
/// # Errors
/// `RuntimeError` when there is no crossing and no running loop (C9).
pub fn get_current_locals(py: Python<'_>) -> PyResult<TaskLocals> {
    match TASK_LOCALS.try_with(TaskLocals::clone) {
        Ok(l) => Ok(l),
        Err(_) => TaskLocals::running_with_copied_context(py),
    }
}

/// Converts a Rust future into an `asyncio.Future` on the current loop.
///
/// The context is copied here, at the call (C8). The future runs on [`get_runtime`] inside
/// [`scope`] with those locals (C1).
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// #[pyfunction]
/// fn sleep(py: Python<'_>, secs: f64) -> PyResult<Bound<'_, PyAny>> {
///     pyo3_async_bridge::tokio::future_into_py(py, async move {
///         tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
///         Ok(())
///     })
/// }
/// ```
///
/// # Errors
/// `RuntimeError` when no loop runs in this thread (C9).
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    future_into_py_with_locals(py, get_current_locals(py)?, fut)
}

/// Like [`future_into_py`] with explicit `locals`.
///
/// # Cancellation
/// Cancelling the returned future, or dropping every reference to it before it is done, drops
/// the Rust future on a runtime thread, inside its scope.
///
/// # Errors
/// `TypeError` when `locals` does not hold a usable event loop.
pub fn future_into_py_with_locals<F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let (py_fut, crossing) = new_crossing(py, &locals)?;
    let task = scope(locals, drive(crossing.token, fut));
    let delivery = crossing.delivery;
    get_runtime().spawn(async move { delivery.send(task.await) });
    Ok(py_fut)
}

/// Converts a Python awaitable into a Rust future, using [`get_current_locals`].
///
/// # Errors
/// `TypeError` when `awaitable` is not awaitable, `RuntimeError` with no loop (C9).
pub fn into_future(awaitable: Bound<'_, PyAny>) -> PyResult<PyFuture> {
    let locals = get_current_locals(awaitable.py())?;
    into_future_with_locals(&locals, awaitable)
}

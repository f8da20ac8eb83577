//! The tokio runtime: crossings in both directions, task-local [`TaskLocals`], the runtime
//! ([`init`], [`get_handle`], …), the entry points [`run`], [`run_until_complete`] and
//! [`block_on_python`], and `!Send` futures on a `LocalSet` ([`local_future_into_py`]).
//!
//! Mirrors `pyo3_async_runtimes::tokio`.

use crate::cancel::Shared;
use crate::into_py::{drive, new_crossing};
use crate::{IntoPyOptions, PyFuture, TaskLocals};
use pyo3::prelude::*;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

mod blocking;
mod generic;
mod local;
mod run;
mod runtime;

pub use blocking::block_on_python;
pub use generic::TokioRuntime;
pub use local::{local_future_into_py, local_future_into_py_with_locals, scope_local};
pub use run::{run, run_until_complete};
pub(crate) use runtime::handle;
pub use runtime::{
    get_handle, get_runtime, init, init_with_handle, init_with_runtime, AlreadyInitialized,
    Builder, Handle, Runtime, DRIVER_THREAD,
};

pub use ::tokio::task::JoinHandle;

/// Runs an `async fn main` on a fresh asyncio event loop (SPEC T1).
///
/// The expansion initialises Python, hands a runtime builder to [`init`], then runs the body with
/// [`run`] inside `Python::attach`: on a new event loop, which is closed afterwards. Options:
/// `flavor = "multi_thread"` (the default) or `"current_thread"` (the bridge drives that runtime
/// from its own thread), and `worker_threads = N` (multi-thread only). The function returns
/// `()` or `PyResult<()>`; an error is printed as Python prints an uncaught exception and the
/// process exits with status 1.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// #[pyo3_async_bridge::tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// async fn main() -> PyResult<()> {
///     let fut = Python::attach(|py| {
///         let sleep = py.import("asyncio")?.call_method1("sleep", (0,))?;
///         pyo3_async_bridge::tokio::into_future(sleep)
///     })?;
///     fut.await?;
///     Ok(())
/// }
/// ```
#[cfg(feature = "attributes")]
#[cfg_attr(docsrs, doc(cfg(feature = "attributes")))]
pub use pyo3_async_bridge_macros::tokio_main as main;

/// Marks a test that runs on a fresh asyncio event loop (SPEC T2, T3).
///
/// Underneath it is a plain `#[test]` function: `cargo test` (with its `--list`, filters and
/// `--exact`) and `cargo nextest` run it as any other test, each on a new event loop created by
/// [`run`] in the test's thread and closed afterwards. With the `testing` feature the test is
/// also registered for [`testing::main`](crate::testing::main), the harness of `harness = false`
/// binaries written for `pyo3-async-runtimes`.
///
/// Accepted shapes, each returning `()` or `PyResult<()>`:
/// - `async fn name()`: runs as the main future of the test's loop; inside it,
///   [`get_current_loop`] is that loop.
/// - `fn name()`: runs on a blocking thread of the runtime, so it may block.
/// - `fn name(event_loop: Py<PyAny>)`: the same, given the test's loop.
///
/// `#[ignore]` and `#[should_panic(expected = "...")]` work as for `#[test]`: an error fails the
/// test with a panic whose message is the exception (`ValueError: ...`) and its traceback; a
/// panic keeps its message. Anything else (generics, arguments to an async test, a second
/// `#[test]`, options) is a compile error that says what to change.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// #[pyo3_async_bridge::tokio::test]
/// async fn sleeps() -> PyResult<()> {
///     let fut = Python::attach(|py| {
///         let sleep = py.import("asyncio")?.call_method1("sleep", (0,))?;
///         pyo3_async_bridge::tokio::into_future(sleep)
///     })?;
///     fut.await?;
///     Ok(())
/// }
///
/// #[pyo3_async_bridge::tokio::test]
/// fn blocks(event_loop: Py<PyAny>) -> PyResult<()> {
///     // `move`: the reference is released attached too.
///     Python::attach(move |py| {
///         let closed = event_loop.bind(py).call_method0("is_closed")?.is_truthy()?;
///         assert!(!closed);
///         Ok(())
///     })
/// }
/// ```
#[cfg(feature = "attributes")]
#[cfg_attr(docsrs, doc(cfg(feature = "attributes")))]
pub use pyo3_async_bridge_macros::tokio_test as test;

::tokio::task_local! {
    static TASK_LOCALS: TaskLocals;
    static CANCEL: CancelScope;
}

/// The cancellation side of the crossing a task runs in: the crossing's cell (machine, tokens,
/// reason) and the two tokens this task hangs from: the crossing's own `signal` and `stop`
/// tokens in the crossing's future (clones, no new token node), children of the parent's in a
/// task made by [`spawn`]. User code only ever gets children of `signal` (rule S).
#[derive(Clone)]
struct CancelScope {
    shared: Arc<Shared>,
    signal: CancellationToken,
    stop: CancellationToken,
}

impl CancelScope {
    /// The scope of a crossing's own future.
    fn of(shared: &Arc<Shared>) -> CancelScope {
        CancelScope {
            signal: shared.signal_token().clone(),
            stop: shared.stop_token().clone(),
            shared: Arc::clone(shared),
        }
    }

    /// The scope of a task spawned from this one.
    fn child(&self) -> CancelScope {
        CancelScope {
            shared: Arc::clone(&self.shared),
            signal: self.signal.child_token(),
            stop: self.stop.child_token(),
        }
    }
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
/// The context is copied here, at the call (C8). The future runs on the bridge's runtime
/// ([`get_handle`]) inside
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
    future_into_py_with_options(py, IntoPyOptions::new(), fut)
}

/// Like [`future_into_py`] with explicit `locals`.
///
/// # Cancellation
/// Cancelling the returned future fires the crossing's token and drops the Rust future on a
/// runtime thread, inside its scope (C3). Like an asyncio task, the crossing runs on when every
/// reference to its future is dropped.
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
    future_into_py_with_options(py, IntoPyOptions::new().locals(locals), fut)
}

/// Like [`future_into_py`], with [`IntoPyOptions`]: the locals and the [`CancelMode`].
///
/// Inside `fut`, [`cancellation_token`] is the crossing's token and [`cancellation_reason`]
/// the message Python cancelled with.
///
/// # Examples
/// Cooperative cancellation: the Rust future sees the token fire, cleans up, and Python's
/// `CancelledError` (or `asyncio.timeout`'s `TimeoutError`) arrives only after that.
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_bridge::{tokio, CancelMode, IntoPyOptions};
///
/// #[pyfunction]
/// fn serve(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
///     let options = IntoPyOptions::new().cancel_mode(CancelMode::Cooperative { grace: None });
///     tokio::future_into_py_with_options(py, options, async {
///         let token = tokio::cancellation_token().expect("inside a crossing");
///         token.cancelled().await;
///         // ... flush, close connections ...
///         Ok(())
///     })
/// }
/// ```
///
/// # Cancellation
/// See [`CancelMode`]: by default the Rust future is dropped when Python cancels; in
/// cooperative mode it is told through the token and Python waits for it (C3).
///
/// # Errors
/// `RuntimeError` when no locals are given and no loop runs in this thread (C9); `TypeError`
/// when the locals do not hold a usable event loop.
///
/// [`CancelMode`]: crate::CancelMode
pub fn future_into_py_with_options<F, T>(
    py: Python<'_>,
    options: IntoPyOptions,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    // L3: no new crossing once the interpreter exits; the frame is counted until it returns.
    let _entry = crate::exit::enter()?;
    let locals = match options.locals {
        Some(locals) => locals,
        None => get_current_locals(py)?,
    };
    let (py_fut, crossing) = new_crossing(py, &locals, options.cancel)?;
    let cancel = CancelScope::of(&crossing.shared);
    let task = scope(
        locals,
        CANCEL.scope(cancel, drive(crossing.shared, options.cancel, fut)),
    );
    let delivery = crossing.delivery;
    handle().spawn(async move { delivery.send(task.await) });
    Ok(py_fut)
}

/// The cancellation token of the crossing the current task runs in: it fires when Python
/// cancels the future awaiting this task (C3), in either [`CancelMode`]: in cooperative mode it
/// is the signal to clean up. In a task made by [`spawn`], a child token of it. `None` outside
/// any crossing.
///
/// The token does not fire when the crossing completes: work spawned from it may outlive it.
/// It is a child of the crossing's own token, so cancelling it from Rust affects only it and
/// its children, never the crossing (whose state machine alone decides; SPEC rule S).
///
/// [`CancelMode`]: crate::CancelMode
pub fn cancellation_token() -> Option<CancellationToken> {
    CANCEL.try_with(|c| c.signal.child_token()).ok()
}

/// The message Python passed to `cancel(msg)` on the current crossing's future, once it has
/// been cancelled with one. `None` before that, without a message, or outside any crossing.
pub fn cancellation_reason() -> Option<String> {
    CANCEL.try_with(|c| c.shared.reason()).ok().flatten()
}

/// Spawns `fut` on the bridge's runtime ([`get_handle`]) carrying the current crossing: the
/// same [`TaskLocals`] scope (C1) and a child of its cancellation token (C6).
///
/// The handle resolves to `None` when the crossing was stopped before `fut` finished; `fut` is
/// then dropped, inside the scope. "Stopped" means what drops the crossing's own future: a
/// Python cancel in [`CancelMode::Drop`](crate::CancelMode::Drop), the grace period running out
/// in cooperative mode. During a cooperative cleanup, `spawn` still works (a flush spawned
/// after the signal runs), and [`cancellation_token`] inside the task has fired, so it can
/// cooperate too. A plain `tokio::spawn` carries neither the locals nor the tokens: its future
/// sees no crossing and runs on when the crossing is cancelled.
///
/// Outside any crossing this is `get_handle().spawn`, with the current locals if a [`scope`]
/// is active.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// #[pyfunction]
/// fn fan_out(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
///     pyo3_async_bridge::tokio::future_into_py(py, async {
///         let a = pyo3_async_bridge::tokio::spawn(async { 1 });
///         let b = pyo3_async_bridge::tokio::spawn(async { 2 });
///         let sum = a.await.ok().flatten().unwrap_or(0) + b.await.ok().flatten().unwrap_or(0);
///         Ok(sum)
///     })
/// }
/// ```
pub fn spawn<F>(fut: F) -> JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let locals = TASK_LOCALS.try_with(TaskLocals::clone).ok();
    match CANCEL.try_with(CancelScope::child) {
        Ok(cancel) => {
            let stop = cancel.stop.clone();
            spawn_in(
                locals,
                CANCEL.scope(cancel, stop.run_until_cancelled_owned(fut)),
            )
        }
        Err(_) => spawn_in(locals, async move { Some(fut.await) }),
    }
}

/// Spawns `fut` on the bridge's runtime, inside `locals`' scope when there are locals.
fn spawn_in<F>(locals: Option<TaskLocals>, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match locals {
        Some(locals) => handle().spawn(scope(locals, fut)),
        None => handle().spawn(fut),
    }
}

/// Converts a Python awaitable into a Rust future, using [`get_current_locals`].
///
/// # Errors
/// `TypeError` when `awaitable` is not awaitable, `RuntimeError` with no loop (C9).
pub fn into_future(awaitable: Bound<'_, PyAny>) -> PyResult<PyFuture> {
    let is_coro = crate::task::is_coroutine(&awaitable);
    // L3: refused before the loop is even looked up (registering a loop runs Python code).
    let _entry = crate::into_future::enter_or_close(&awaitable, is_coro)?;
    let locals = match get_current_locals(awaitable.py()) {
        Ok(locals) => locals,
        Err(e) => {
            crate::task::close_unstarted(&awaitable, is_coro);
            return Err(e);
        }
    };
    crate::into_future::into_future_entered(&locals, awaitable, is_coro)
}

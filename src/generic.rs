//! Other executors: the traits a Rust runtime implements to carry crossings, and the conversions
//! written against them. Mirrors `pyo3_async_runtimes::generic`.
//!
//! A runtime that can spawn a `Send` future ([`Runtime`]) and carry [`TaskLocals`] in a task
//! ([`ContextExt`]) gets every crossing of the bridge: [`future_into_py`], [`into_future`],
//! [`run`] and [`run_until_complete`]. One that can also spawn `!Send` futures on the current
//! thread ([`SpawnLocalExt`], [`LocalContextExt`]) gets [`local_future_into_py`]. The crossings
//! are the tokio module's: the same state machine, delivery queue and rules (C1–C9 in cancel
//! mode `Drop`, L1–L3, R2–R3), so cancellation, `contextvars` and exit behave alike on every
//! runtime; tokio's cancellation token and cooperative mode are not part of them (SPEC R7).
//!
//! The runtime's own threads never attach to the interpreter for the bridge (A1): an outcome
//! goes home through the loop's delivery queue. `!Send` values are the exception, as with tokio
//! (R6): they are converted on the thread of the local task, attached.
//!
//! # Invariants
//! 1. A crossing's task is spawned before the crossing exists, and gets the crossing's Rust
//!    side through a channel: a runtime that panics in `spawn` or `spawn_local` (tokio's
//!    outside a `LocalSet`) panics before anything exists that would then fail unobserved.
//! 2. Whatever way `R` ends that task (finished, dropped before or after it got the crossing),
//!    the crossing's delivery is sent or dropped exactly once (C7).
//!
//! [`tokio::TokioRuntime`](crate::tokio::TokioRuntime) implements these traits for the bridge's
//! tokio runtime, and `async_std::AsyncStdRuntime` (feature `async-std-runtime`) for async-std.
//!
//! # Examples
//! A runtime of one's own: here, a thread per task (futures' `block_on`), with the task-locals
//! kept in a thread-local while the task's future is polled (see `tests/generic.rs` for a
//! complete executor).
//! ```
//! use pyo3_async_bridge::generic::{ContextExt, JoinError, Runtime};
//! use pyo3_async_bridge::TaskLocals;
//! use std::cell::RefCell;
//! use std::future::Future;
//! use std::pin::Pin;
//!
//! thread_local!(static LOCALS: RefCell<Option<TaskLocals>> = const { RefCell::new(None) });
//!
//! struct ThreadPerTask;
//! struct Panicked(Box<dyn std::any::Any + Send>);
//!
//! impl JoinError for Panicked {
//!     fn is_panic(&self) -> bool {
//!         true
//!     }
//!     fn into_panic(self) -> Box<dyn std::any::Any + Send> {
//!         self.0
//!     }
//! }
//!
//! impl Runtime for ThreadPerTask {
//!     type JoinError = Panicked;
//!     type JoinHandle = Pin<Box<dyn Future<Output = Result<(), Panicked>> + Send>>;
//!
//!     fn spawn<F: Future<Output = ()> + Send + 'static>(fut: F) -> Self::JoinHandle {
//!         Self::spawn_blocking(move || futures::executor::block_on(fut))
//!     }
//!     fn spawn_blocking<F: FnOnce() + Send + 'static>(f: F) -> Self::JoinHandle {
//!         let (tx, rx) = futures::channel::oneshot::channel();
//!         std::thread::spawn(move || {
//!             let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
//!             let _ = tx.send(ended.map_err(Panicked));
//!         });
//!         Box::pin(async move { rx.await.unwrap_or(Ok(())) })
//!     }
//! }
//!
//! impl ContextExt for ThreadPerTask {
//!     fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
//!     where
//!         F: Future<Output = R> + Send + 'static,
//!     {
//!         // Set on the task's own thread, when it first runs; one task per thread, so they
//!         // can stay for the thread's life.
//!         Box::pin(async move {
//!             LOCALS.with(|l| *l.borrow_mut() = Some(locals));
//!             fut.await
//!         })
//!     }
//!     fn get_task_locals() -> Option<TaskLocals> {
//!         LOCALS.with(|l| l.borrow().clone())
//!     }
//! }
//!
//! # pyo3::Python::initialize();
//! let n = pyo3::Python::attach(|py| {
//!     pyo3_async_bridge::generic::run::<ThreadPerTask, _, _>(py, async { Ok(6 * 7) })
//! })
//! .unwrap();
//! assert_eq!(n, 42);
//! ```
//! (This toy leaves the locals set after the future, which works only because every task has
//! a thread of its own; `tests/generic.rs` sets them around each poll and drop.)

use crate::cancel::CancelMode;
use crate::into_py::{drive, new_crossing, send_converted};
use crate::{PyFuture, TaskLocals};
use futures::channel::oneshot;
use pyo3::prelude::*;
use std::any::Any;
use std::future::Future;
use std::pin::Pin;

/// Why a spawned task ended without finishing.
pub trait JoinError {
    /// Whether the task panicked.
    fn is_panic(&self) -> bool;
    /// The panic's payload. May panic when [`is_panic`](JoinError::is_panic) is false.
    fn into_panic(self) -> Box<dyn Any + Send + 'static>;
}

/// A Rust async runtime that can spawn tasks.
pub trait Runtime: Send + 'static {
    /// What awaiting a [`JoinHandle`](Runtime::JoinHandle) fails with.
    type JoinError: JoinError + Send;
    /// Completes when the spawned task has. The bridge drops the handles it gets: dropping one
    /// must let the task run on (detach), as tokio's and async-std's do. A runtime whose
    /// handles cancel on drop drops every crossing's Rust future at once, and the crossing
    /// fails with `RuntimeError` (C7).
    type JoinHandle: Future<Output = Result<(), Self::JoinError>> + Send;

    /// Spawns `fut` onto the runtime.
    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static;

    /// Runs the blocking function `f` where it may block.
    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static;
}

/// A runtime that can spawn `!Send` futures on the current thread.
pub trait SpawnLocalExt: Runtime {
    /// Spawns the `!Send` future `fut` onto the current thread's local executor.
    fn spawn_local<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + 'static;
}

/// A runtime that carries [`TaskLocals`] in its tasks (C1).
pub trait ContextExt: Runtime {
    /// Runs `fut` with `locals` as the current task's locals: while `fut` is polled (and, best,
    /// while it is dropped), [`get_task_locals`](ContextExt::get_task_locals) returns them.
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static;

    /// The current task's locals: `None` outside any [`scope`](ContextExt::scope).
    fn get_task_locals() -> Option<TaskLocals>;
}

/// A runtime that carries [`TaskLocals`] in its `!Send` tasks.
pub trait LocalContextExt: Runtime {
    /// Runs the `!Send` future `fut` with `locals` as the current task's locals.
    fn scope_local<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R>>>
    where
        F: Future<Output = R> + 'static;
}

/// The event loop of the current task's locals, or else the loop running in this thread.
///
/// # Errors
/// `RuntimeError` when there is neither (C9).
pub fn get_current_loop<R: ContextExt>(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    match R::get_task_locals() {
        Some(locals) => Ok(locals.event_loop(py)),
        None => crate::get_running_loop(py),
    }
}

/// The current task's locals, or else the running loop with a copy of the current context
/// (C1, C8).
///
/// # Errors
/// `RuntimeError` when there are no task locals and no running loop (C9).
pub fn get_current_locals<R: ContextExt>(py: Python<'_>) -> PyResult<TaskLocals> {
    match R::get_task_locals() {
        Some(locals) => Ok(locals),
        None => TaskLocals::running_with_copied_context(py),
    }
}

/// Runs `fut` to completion on `event_loop`, on this thread: `R`'s
/// [`tokio::run_until_complete`](crate::tokio::run_until_complete).
///
/// # Errors
/// As `tokio::run_until_complete`.
pub fn run_until_complete<R, F, T>(event_loop: &Bound<'_, PyAny>, fut: F) -> PyResult<T>
where
    R: ContextExt,
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    crate::run::run_until_complete(spawn_main::<R>, event_loop, fut)
}

/// Runs `fut` to completion on a new event loop, like `asyncio.run`: `R`'s
/// [`tokio::run`](crate::tokio::run), Ctrl-C included (R3).
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_bridge::{generic, tokio::TokioRuntime};
///
/// let n = Python::attach(|py| generic::run::<TokioRuntime, _, _>(py, async { Ok(7) })).unwrap();
/// assert_eq!(n, 7);
/// ```
///
/// # Errors
/// As `tokio::run`.
pub fn run<R, F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    R: ContextExt,
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    crate::run::run(spawn_main::<R>, py, fut)
}

/// How `run` makes its crossings on `R`.
fn spawn_main<'py, R: ContextExt>(
    py: Python<'py>,
    locals: TaskLocals,
    fut: futures::future::BoxFuture<'static, PyResult<()>>,
) -> PyResult<Bound<'py, PyAny>> {
    future_into_py_with_locals::<R, _, ()>(py, locals, fut)
}

/// Converts a Python awaitable into a Rust future, using [`get_current_locals`] (C4: dropping
/// the [`PyFuture`] cancels the Python task).
///
/// # Errors
/// `TypeError` when `awaitable` is not awaitable, `RuntimeError` with no loop (C9).
pub fn into_future<R: ContextExt>(awaitable: Bound<'_, PyAny>) -> PyResult<PyFuture> {
    let is_coro = crate::task::is_coroutine(&awaitable);
    // L3: refused before the loop is even looked up (registering a loop runs Python code).
    let _entry = crate::into_future::enter_or_close(&awaitable, is_coro)?;
    let locals = match get_current_locals::<R>(awaitable.py()) {
        Ok(locals) => locals,
        Err(e) => {
            crate::task::close_unstarted(&awaitable, is_coro);
            return Err(e);
        }
    };
    crate::into_future::into_future_entered(&locals, awaitable, is_coro)
}

/// Converts a Rust future into an `asyncio.Future` on `locals`' loop; the future runs on `R`
/// inside [`ContextExt::scope`] with those locals (C1).
///
/// # Cancellation
/// Cancelling the returned future drops the Rust future on `R`'s thread that polls it, inside
/// its scope (C3); the result is delivered exactly once (C7).
///
/// # Errors
/// `TypeError` when `locals` does not hold a usable event loop.
pub fn future_into_py_with_locals<R, F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    R: ContextExt,
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    // L3: no new crossing once the interpreter exits; the frame is counted until it returns.
    let _entry = crate::exit::enter()?;
    // First the task, then the crossing (invariant 1).
    let (slot, waiting) = oneshot::channel::<Pin<Box<dyn Future<Output = ()> + Send>>>();
    drop(R::spawn(run_when_sent(waiting)));
    let (py_fut, crossing) = new_crossing(py, &locals, CancelMode::Drop)?;
    let task = R::scope(locals, drive(crossing.shared, CancelMode::Drop, fut));
    let delivery = crossing.delivery;
    // Invariant 2: if `R` dropped the waiting task already, `send` hands this back and it is
    // dropped here.
    let _ = slot.send(Box::pin(async move { delivery.send(task.await) }));
    Ok(py_fut)
}

/// `R`'s thread: the task spawned for a crossing, before the crossing exists (invariant 1). It
/// runs what it is sent; if the sender is dropped (making the crossing failed), it just ends.
/// No lost wakeup: the channel wakes the receiver whether the send (or the sender's drop)
/// happens before or after its first poll.
async fn run_when_sent<Task: Future<Output = ()>>(waiting: oneshot::Receiver<Task>) {
    if let Ok(task) = waiting.await {
        task.await;
    }
}

/// Converts a Rust future into an `asyncio.Future`, using [`get_current_locals`].
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_bridge::{generic, tokio::TokioRuntime};
///
/// #[pyfunction]
/// fn answer(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
///     generic::future_into_py::<TokioRuntime, _, _>(py, async { Ok(42) })
/// }
/// ```
///
/// # Errors
/// `RuntimeError` when there are no task locals and no running loop (C9).
pub fn future_into_py<R, F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    R: ContextExt,
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    // L3: entered before the loop is looked up (registering a loop runs Python code).
    let _entry = crate::exit::enter()?;
    let locals = get_current_locals::<R>(py)?;
    future_into_py_with_locals::<R, F, T>(py, locals, fut)
}

/// Converts a `!Send` Rust future into an `asyncio.Future` on `locals`' loop; it runs as a
/// local task of `R` on this thread, and its value is converted to Python there, attached
/// (R6).
///
/// # Cancellation
/// As [`future_into_py_with_locals`], on this thread.
///
/// # Errors
/// `TypeError` when `locals` does not hold a usable event loop.
///
/// # Panics
/// Where `R::spawn_local` panics (for tokio: outside a `LocalSet`; use
/// [`tokio::local_future_into_py`](crate::tokio::local_future_into_py), which checks).
pub fn local_future_into_py_with_locals<R, F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    R: SpawnLocalExt + LocalContextExt,
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py> + 'static,
{
    // L3: no new crossing once the interpreter exits; the frame is counted until it returns.
    let _entry = crate::exit::enter()?;
    // First the task, then the crossing (invariant 1): `R::spawn_local` may panic here.
    let (slot, waiting) = oneshot::channel::<Pin<Box<dyn Future<Output = ()>>>>();
    drop(R::spawn_local(run_when_sent(waiting)));
    let (py_fut, crossing) = new_crossing(py, &locals, CancelMode::Drop)?;
    let task = R::scope_local(locals, drive(crossing.shared, CancelMode::Drop, fut));
    let delivery = crossing.delivery;
    // Invariant 2, as in `future_into_py_with_locals`.
    let _ = slot.send(Box::pin(async move {
        send_converted(delivery, task.await);
    }));
    Ok(py_fut)
}

/// Converts a `!Send` Rust future into an `asyncio.Future`, using [`get_current_locals`].
///
/// # Errors
/// As [`future_into_py`].
///
/// # Panics
/// As [`local_future_into_py_with_locals`].
pub fn local_future_into_py<R, F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    R: ContextExt + SpawnLocalExt + LocalContextExt,
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py> + 'static,
{
    // L3: entered before the loop is looked up (registering a loop runs Python code).
    let _entry = crate::exit::enter()?;
    let locals = get_current_locals::<R>(py)?;
    local_future_into_py_with_locals::<R, F, T>(py, locals, fut)
}

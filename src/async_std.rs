//! The async-std runtime: crossings in both directions on async-std's executor, task-local
//! [`TaskLocals`], the entry points [`run`] and [`run_until_complete`], and `!Send` futures
//! ([`local_future_into_py`]). Mirrors `pyo3_async_runtimes::async_std`.
//!
//! Every function is a thin call into [`generic`] with [`AsyncStdRuntime`]: the
//! crossings are the tokio module's (the same state machine, delivery queue and rules C1–C9,
//! L1–L3, R2–R3), less `cancellation_token`/`cancellation_reason` and the cooperative mode,
//! which belong to the tokio module (SPEC R8).
//!
//! # Threads
//! A crossing's Rust future runs on async-std's executor threads (`async-std/runtime`), which
//! never attach to the interpreter for the bridge (A1); its outcome goes home through the loop's
//! delivery queue. A `!Send` future runs on the thread that spawned it, which must drive
//! async-std's local executor (R6).
//!
//! # Examples
//! ```
//! use pyo3::prelude::*;
//!
//! let n = Python::attach(|py| {
//!     pyo3_async_bridge::async_std::run(py, async {
//!         async_std::task::sleep(std::time::Duration::from_millis(1)).await;
//!         Ok(7)
//!     })
//! })
//! .unwrap();
//! assert_eq!(n, 7);
//! ```

use crate::err::BridgeError;
use crate::generic::{self, ContextExt, LocalContextExt, Runtime, SpawnLocalExt};
use crate::{PyFuture, TaskLocals};
use ::async_std::task;
use futures::FutureExt;
use pyo3::prelude::*;
use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs an `async fn main` on a fresh asyncio event loop with async-std (SPEC T1, R8).
///
/// The expansion initialises Python and runs the body with [`run`] inside `Python::attach`: on
/// a new event loop, which is closed afterwards. It takes no options. The function returns `()`
/// or `PyResult<()>`; an error is printed as Python prints an uncaught exception and the process
/// exits with status 1.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// #[pyo3_async_bridge::async_std::main]
/// async fn main() {
///     async_std::task::sleep(std::time::Duration::from_millis(1)).await;
///     Python::attach(|py| assert!(pyo3_async_bridge::async_std::get_current_loop(py).is_ok()));
/// }
/// ```
#[cfg(feature = "attributes")]
#[cfg_attr(docsrs, doc(cfg(feature = "attributes")))]
pub use pyo3_async_bridge_macros::async_std_main as main;

/// Marks a test that runs on a fresh asyncio event loop with async-std (SPEC T2, T3, R8).
///
/// As [`tokio::test`](crate::tokio::test) in every respect (a plain `#[test]`, the same shapes,
/// `#[ignore]` and `#[should_panic]`, registered for [`testing::main`](crate::testing::main)
/// with the `testing` feature), with async-std's executor: an async test runs as [`run`]'s main
/// future, and a sync test on async-std's blocking pool.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// #[pyo3_async_bridge::async_std::test]
/// async fn yields() {
///     async_std::task::yield_now().await;
/// }
///
/// #[pyo3_async_bridge::async_std::test]
/// fn takes_its_loop(event_loop: Py<PyAny>) -> PyResult<()> {
///     // `move`: the reference is released attached too.
///     Python::attach(move |py| event_loop.bind(py).call_method0("time").map(drop))
/// }
/// ```
#[cfg(feature = "attributes")]
#[cfg_attr(docsrs, doc(cfg(feature = "attributes")))]
pub use pyo3_async_bridge_macros::async_std_test as test;

::async_std::task_local! {
    /// The locals of the [`Scoped`] future being polled or dropped in this task, if any.
    static TASK_LOCALS: RefCell<Option<TaskLocals>> = RefCell::new(None);
}

/// async-std's executor as a [`generic`] runtime: what every function of this
/// module runs on.
pub struct AsyncStdRuntime;

/// Why a task spawned by [`AsyncStdRuntime`] did not finish: it panicked, with this payload.
/// (Its handles are never cancelled; dropping one lets the task run on.)
pub struct AsyncStdJoinError(Box<dyn Any + Send + 'static>);

impl std::fmt::Debug for AsyncStdJoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncStdJoinError(panic)")
    }
}

impl generic::JoinError for AsyncStdJoinError {
    fn is_panic(&self) -> bool {
        true
    }

    fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.0
    }
}

/// The handle of a task spawned by [`AsyncStdRuntime`].
pub type JoinHandle = task::JoinHandle<Result<(), AsyncStdJoinError>>;

/// `fut` with its panic caught, as the task's result.
async fn caught<F: Future<Output = ()>>(fut: F) -> Result<(), AsyncStdJoinError> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(AsyncStdJoinError)
}

impl Runtime for AsyncStdRuntime {
    type JoinError = AsyncStdJoinError;
    type JoinHandle = JoinHandle;

    fn spawn<F>(fut: F) -> JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        task::spawn(caught(fut))
    }

    fn spawn_blocking<F>(f: F) -> JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(AsyncStdJoinError)
        })
    }
}

impl SpawnLocalExt for AsyncStdRuntime {
    /// async-std's `spawn_local`: the task runs on this thread whenever it drives async-std's
    /// local executor (`task::block_on`, or an executor thread); elsewhere it never runs.
    fn spawn_local<F>(fut: F) -> JoinHandle
    where
        F: Future<Output = ()> + 'static,
    {
        task::spawn_local(caught(fut))
    }
}

impl ContextExt for AsyncStdRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(Scoped::new(locals, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(|slot| slot.borrow().clone()).ok()?
    }
}

impl LocalContextExt for AsyncStdRuntime {
    fn scope_local<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R>>>
    where
        F: Future<Output = R> + 'static,
    {
        Box::pin(Scoped::new(locals, fut))
    }
}

/// A future and its locals, which are the current task's [`TASK_LOCALS`] while the future is
/// polled and while it is dropped (C1, C3: destructors see them too).
///
/// Whatever thread polls or drops it does so inside one async-std task (an executor thread, a
/// `block_on` thread, or the local thread of a `!Send` task): the slot is that task's, so tasks
/// sharing a thread never see each other's locals, and the previous value is put back after
/// each poll (nested scopes). Dropped outside any async-std task (an executor shutting down),
/// the future is dropped without its locals: there is no task slot to put them in.
#[must_use = "futures do nothing unless polled"]
#[pin_project::pin_project(PinnedDrop)]
struct Scoped<F> {
    locals: Option<TaskLocals>,
    #[pin]
    fut: Option<F>,
}

impl<F> Scoped<F> {
    fn new(locals: TaskLocals, fut: F) -> Self {
        Scoped {
            locals: Some(locals),
            fut: Some(fut),
        }
    }
}

/// Runs `f` with `locals` swapped into the current task's slot, then swaps them back, also when
/// `f` unwinds (a caught panic must not leave an inner scope's locals current).
fn entered<T>(locals: &mut Option<TaskLocals>, f: impl FnOnce() -> T) -> T {
    /// Swaps back when dropped: after `f` returns or while it unwinds.
    struct Restore<'a>(&'a mut Option<TaskLocals>);

    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            swap(self.0);
        }
    }

    fn swap(locals: &mut Option<TaskLocals>) {
        let _ = TASK_LOCALS.try_with(|slot| std::mem::swap(&mut *slot.borrow_mut(), locals));
    }

    swap(locals);
    let _restore = Restore(locals);
    f()
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        entered(this.locals, || {
            let polled = this
                .fut
                .as_mut()
                .as_pin_mut()
                .expect("`async_std::scope` future polled after completion")
                .poll(cx);
            if polled.is_ready() {
                this.fut.set(None);
            }
            polled
        })
    }
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for Scoped<F> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        entered(this.locals, || this.fut.set(None));
    }
}

/// Runs `fut` with `locals` as the current [`TaskLocals`] (C1). The inner future is also dropped
/// inside the scope, so its destructors see the same locals.
///
/// The locals live in async-std's task-local storage: poll the returned future inside an
/// async-std task (spawned, or `task::block_on`). Polled by another executor, `fut` runs
/// without them.
///
/// # Panics
/// When polled again after it completed.
pub fn scope<F, R>(locals: TaskLocals, fut: F) -> impl Future<Output = R> + Send
where
    F: Future<Output = R> + Send + 'static,
{
    Scoped::new(locals, fut)
}

/// [`scope`] for a `!Send` future (C1): inside it, [`local_future_into_py`] takes `locals`.
pub fn scope_local<F, R>(locals: TaskLocals, fut: F) -> impl Future<Output = R>
where
    F: Future<Output = R> + 'static,
{
    Scoped::new(locals, fut)
}

/// The event loop of the current crossing, or else the loop running in this thread.
///
/// # Errors
/// `RuntimeError` when there is neither (C9).
pub fn get_current_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    generic::get_current_loop::<AsyncStdRuntime>(py)
}

/// The locals of the current crossing, or else the running loop with a copy of the current
/// context (C1, C8).
///
/// # Errors
/// `RuntimeError` when there is no crossing and no running loop (C9).
pub fn get_current_locals(py: Python<'_>) -> PyResult<TaskLocals> {
    generic::get_current_locals::<AsyncStdRuntime>(py)
}

/// Runs `fut` to completion on `event_loop`, on this thread, and returns its value: as
/// [`tokio::run_until_complete`](crate::tokio::run_until_complete), on async-std (R2).
///
/// # Errors
/// What `fut` returns, a panic of `fut` as `RustPanic`, `CancelledError` when the crossing was
/// cancelled; `RuntimeError` when a loop already runs in this thread or `event_loop` is closed;
/// `TypeError` when `event_loop` is not an event loop.
pub fn run_until_complete<F, T>(event_loop: Bound<'_, PyAny>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    generic::run_until_complete::<AsyncStdRuntime, F, T>(&event_loop, fut)
}

/// Runs `fut` to completion on a new event loop, like `asyncio.run`, and returns its value: as
/// [`tokio::run`](crate::tokio::run), on async-std (R2). See the [module](self) example.
///
/// # Cancellation
/// On the main thread, Ctrl-C drops `fut` and `run` returns `KeyboardInterrupt` (R3).
///
/// # Errors
/// As [`run_until_complete`], plus `KeyboardInterrupt` after Ctrl-C.
pub fn run<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    generic::run::<AsyncStdRuntime, F, T>(py, fut)
}

/// Converts a Rust future into an `asyncio.Future` on `locals`' loop; it runs on async-std
/// inside [`scope`] with those locals (C1).
///
/// # Cancellation
/// Cancelling the returned future drops the Rust future on the executor thread that polls it,
/// inside its scope (C3); the result is delivered exactly once (C7).
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
    generic::future_into_py_with_locals::<AsyncStdRuntime, F, T>(py, locals, fut)
}

/// Converts a Rust future into an `asyncio.Future` on the current loop, with a copy of the
/// current context (C8).
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// #[pyfunction]
/// fn sleep(py: Python<'_>, secs: f64) -> PyResult<Bound<'_, PyAny>> {
///     pyo3_async_bridge::async_std::future_into_py(py, async move {
///         async_std::task::sleep(std::time::Duration::from_secs_f64(secs)).await;
///         Ok(())
///     })
/// }
/// ```
///
/// # Cancellation
/// As [`future_into_py_with_locals`].
///
/// # Errors
/// `RuntimeError` when there is no crossing and no loop runs in this thread (C9).
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    generic::future_into_py::<AsyncStdRuntime, F, T>(py, fut)
}

/// Converts a `!Send` Rust future into an `asyncio.Future` on `locals`' loop. It runs as a local
/// task on this thread, and its value is converted to Python there, attached (R6).
///
/// Call it on a thread that drives async-std's local executor (inside `task::block_on` or an
/// async-std task): the task runs only while this thread does.
///
/// # Cancellation
/// As [`future_into_py_with_locals`], on this thread.
///
/// # Errors
/// `RuntimeError` outside any async-std task (checked first, nothing is started), where the
/// task would never run; `TypeError` when `locals` does not hold a usable event loop.
pub fn local_future_into_py_with_locals<F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py> + 'static,
{
    in_async_std_task("local_future_into_py_with_locals")?;
    generic::local_future_into_py_with_locals::<AsyncStdRuntime, F, T>(py, locals, fut)
}

/// R8: a local crossing made outside any async-std task would never run; refused before
/// anything is made.
fn in_async_std_task(caller: &'static str) -> PyResult<()> {
    match task::try_current() {
        Some(_) => Ok(()),
        None => Err(BridgeError::NoAsyncStdTask(caller).into()),
    }
}

/// [`local_future_into_py_with_locals`] with [`get_current_locals`].
///
/// # Errors
/// As [`future_into_py`].
pub fn local_future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py> + 'static,
{
    in_async_std_task("local_future_into_py")?;
    generic::local_future_into_py::<AsyncStdRuntime, F, T>(py, fut)
}

/// Converts a Python awaitable into a Rust future, using [`get_current_locals`].
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// let slept: String = Python::attach(|py| {
///     pyo3_async_bridge::async_std::run(py, async {
///         let fut = Python::attach(|py| {
///             let sleep = py.import("asyncio")?.call_method1("sleep", (0, "slept"))?;
///             pyo3_async_bridge::async_std::into_future(sleep)
///         })?;
///         let value = fut.await?;
///         Python::attach(move |py| value.extract(py))
///     })
/// })
/// .unwrap();
/// assert_eq!(slept, "slept");
/// ```
///
/// # Cancellation
/// Dropping the [`PyFuture`] cancels the Python task (C4).
///
/// # Errors
/// `TypeError` when `awaitable` is not awaitable, `RuntimeError` with no loop (C9).
pub fn into_future(awaitable: Bound<'_, PyAny>) -> PyResult<PyFuture> {
    generic::into_future::<AsyncStdRuntime>(awaitable)
}

//! Shared scaffolding for the integration tests: the embedded interpreter, one private asyncio
//! event loop per test, Python helper modules, and [`Attached`], which keeps Python references
//! from being dropped on a thread that is not attached. For the cancellation tests (C3–C6):
//! [`Drops`] counts and describes drops of Rust futures, [`Signal`] carries an event between
//! Python and Rust, [`run_bounded`] runs the loop with a deadline and [`in_running_loop`] calls
//! Rust on the loop thread while the loop runs (as a `#[pyfunction]` would be).
//!
//! The suite also runs with `--cfg pyo3_disable_reference_pool`, where such a drop aborts the
//! process. So every Python reference that a Rust future on a runtime thread holds is either
//! consumed inside `Python::attach`, returned as the crossing's outcome (the bridge carries it
//! home to the loop thread), or wrapped in [`Attached`].

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

pub mod child;

use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyModule};
// The tokio crossings; a suite built without the tokio runtime (tests/async_std.rs with
// `--no-default-features`) uses the rest.
#[cfg(feature = "tokio-runtime")]
use pyo3_async_bridge::tokio::{
    cancellation_reason, cancellation_token, future_into_py, future_into_py_with_locals,
};
use pyo3_async_bridge::TaskLocals;
use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a test waits for a signal from another thread before it fails. This bounds a wait
/// that a correct bridge ends at once; it never stands in for synchronisation.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Loop management shared by every test binary.
///
/// Each loop runs in debug mode (asyncio then rejects non-thread-safe calls made from another
/// thread) and records what reaches its exception handler ("Future exception was never
/// retrieved", "Task was destroyed but it is pending", errors in callbacks). Unraisable
/// exceptions (the bridge reports failures on the loop thread that way) are recorded
/// process-wide. Closing a loop returns everything recorded; [`with_loop`] fails on any of it.
const LOOP_HELPERS: &CStr = cr#"
import asyncio, gc, sys

UNRAISABLE = []

def _record_unraisable(u):
    UNRAISABLE.append(f"unraisable {u.exc_type.__name__}: {u.exc_value!r} ({u.err_msg}) in {u.object!r}")

sys.unraisablehook = _record_unraisable

def new_loop():
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 30  # debug builds drain thousands of jobs per callback
    problems = []
    def handler(loop, context):
        problems.append(f"{context.get('message')}: {context.get('exception')!r}")
    loop.set_exception_handler(handler)
    loop.bridge_test_problems = problems
    return loop

def close_loop(loop):
    problems = loop.bridge_test_problems
    try:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            problems.append(f"task still pending when the test ended: {task!r}")
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    gc.collect()
    return list(problems) + list(UNRAISABLE)

async def gather_all(aws):
    return await asyncio.gather(*aws)

async def bounded(aw, secs):
    """Awaits `aw`, failing (without cancelling it) when it is not done within `secs`."""
    fut = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait([fut], timeout=secs)
    if not done:
        raise TimeoutError(f"{fut!r} was not done within {secs}s")
    return fut.result()

async def call_in_loop(f):
    return f()

async def await_call(f):
    return await f()
"#;

static LOOP_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Loads a Python helper module from source once per process (also registered in
/// `sys.modules` under `name`) and returns it. Any thread, attached.
pub fn load_module<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyModule>>,
    code: &CStr,
    name: &CStr,
) -> Bound<'py, PyModule> {
    cell.get_or_try_init(py, || {
        PyModule::from_code(py, code, name, name).map(Bound::unbind)
    })
    .unwrap_or_else(|e| fail(py, e))
    .bind(py)
    .clone()
}

fn loop_helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &LOOP_MODULE, LOOP_HELPERS, c"bridge_test_loop")
}

/// Panics with the Python exception `err`, its type and traceback included.
pub fn fail(py: Python<'_>, err: PyErr) -> ! {
    let text = py
        .import("traceback")
        .and_then(|tb| tb.call_method1("format_exception", (err.value(py),)))
        .and_then(|lines| lines.extract::<Vec<String>>())
        .map(|lines| lines.concat())
        .unwrap_or_else(|_| err.to_string());
    panic!("Python exception:\n{text}");
}

/// A fresh event loop in debug mode that records problems (see [`close_loop`]). The bridge has
/// not seen it yet.
pub fn new_loop(py: Python<'_>) -> Bound<'_, PyAny> {
    loop_helpers(py)
        .call_method0("new_loop")
        .unwrap_or_else(|e| fail(py, e))
}

/// Cancels what is left on `event_loop`, closes it, and returns the problems it recorded: an
/// exception that reached its handler, an unraisable exception, or a task left pending.
pub fn close_loop(event_loop: &Bound<'_, PyAny>) -> Vec<String> {
    let py = event_loop.py();
    loop_helpers(py)
        .call_method1("close_loop", (event_loop,))
        .and_then(|p| p.extract())
        .unwrap_or_else(|e| fail(py, e))
}

/// Runs `f` attached, with a fresh event loop in debug mode, then closes the loop.
///
/// The bridge registers its delivery queue with the loop before `f` runs, from this thread's
/// own context: work the queue delivers later must not depend on where the loop was first used.
///
/// # Panics
/// When `f` fails (the Python traceback is shown), or when the loop recorded a problem (see
/// [`close_loop`]).
pub fn with_loop<R>(f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>) -> PyResult<R>) -> R {
    Python::attach(|py| {
        let event_loop = new_loop(py);
        drop(TaskLocals::new(event_loop.clone()));
        let outcome = f(py, &event_loop);
        let problems = close_loop(&event_loop);
        let value = outcome.unwrap_or_else(|e| fail(py, e));
        assert!(
            problems.is_empty(),
            "the event loop recorded problems: {problems:#?}"
        );
        value
    })
}

/// `loop.run_until_complete(awaitable)`: runs the loop on this thread until `awaitable` is done.
pub fn run<'py>(
    event_loop: &Bound<'py, PyAny>,
    awaitable: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    event_loop.call_method1("run_until_complete", (awaitable,))
}

/// Runs the loop until every awaitable is done and returns their results in order
/// (`asyncio.gather`); the first exception is raised.
pub fn gather<'py>(
    event_loop: &Bound<'py, PyAny>,
    awaitables: Vec<Bound<'py, PyAny>>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let py = event_loop.py();
    let coro = loop_helpers(py).call_method1("gather_all", (awaitables,))?;
    run(event_loop, &coro)?.extract()
}

/// Locals for `event_loop` carrying a copy of the caller's current context.
pub fn locals_for(event_loop: &Bound<'_, PyAny>) -> PyResult<TaskLocals> {
    TaskLocals::new(event_loop.clone()).copy_context(event_loop.py())
}

/// A crossing on `event_loop` (Python awaits Rust) with [`locals_for`] as its locals.
#[cfg(feature = "tokio-runtime")]
pub fn crossing<'py, F, T>(event_loop: &Bound<'py, PyAny>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    future_into_py_with_locals(event_loop.py(), locals_for(event_loop)?, fut)
}

/// A value holding Python references that may travel into a future on a runtime thread: if it
/// is dropped without being taken (the future was dropped early), it attaches before releasing
/// the references, so no reference is ever dropped on a thread that is not attached.
pub struct Attached<T>(Option<T>);

impl<T> Attached<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(Some(value))
    }

    /// The value; the caller now owns its references (take it inside `Python::attach`).
    pub fn take(mut self) -> T {
        self.0
            .take()
            .expect("an Attached value is only taken by value, once")
    }
}

impl<T> Drop for Attached<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            Python::attach(|_py| drop(value));
        }
    }
}

/// Waits, detached so that other threads can attach meanwhile, for the signal on `rx`.
///
/// # Panics
/// When nothing arrives within [`SIGNAL_TIMEOUT`]; `what` names the awaited event.
pub fn wait_detached<T: Send>(py: Python<'_>, rx: std::sync::mpsc::Receiver<T>, what: &str) -> T {
    py.detach(move || rx.recv_timeout(SIGNAL_TIMEOUT))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `loop.run_until_complete(bounded(awaitable))`: like [`run`], but fails with `TimeoutError`
/// when `awaitable` is not done within [`SIGNAL_TIMEOUT`] (a broken bridge fails the test rather
/// than hanging it). The outcome is `awaitable`'s: a cancelled future raises its own
/// `CancelledError`, message included.
pub fn run_bounded<'py>(
    event_loop: &Bound<'py, PyAny>,
    awaitable: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = event_loop.py();
    let coro =
        loop_helpers(py).call_method1("bounded", (awaitable, SIGNAL_TIMEOUT.as_secs_f64()))?;
    run(event_loop, &coro)
}

/// Calls `f` on the loop thread inside the running `event_loop` (from a task, the way Python
/// calls a `#[pyfunction]`) and returns what it returned. So `f` may call `future_into_py`,
/// which takes the running loop and a copy of the current context.
pub fn in_running_loop<'py, F>(event_loop: &Bound<'py, PyAny>, f: F) -> PyResult<Bound<'py, PyAny>>
where
    F: for<'a> FnOnce(Python<'a>) -> PyResult<Bound<'a, PyAny>> + Send + 'static,
{
    let py = event_loop.py();
    let slot = Mutex::new(Some(f));
    let call = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let f = slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("in_running_loop calls its function once");
        f(args.py()).map(Bound::unbind)
    })?;
    let coro = loop_helpers(py).call_method1("call_in_loop", (call,))?;
    run(event_loop, &coro)
}

/// The name of the bridge's runtime worker threads.
pub const WORKER_THREAD: &str = "pyo3-async-bridge-worker";

/// What a [`DropGuard`] saw when it was dropped. Gathered without attaching: the crossing's
/// task-locals ([`cancellation_token`], [`cancellation_reason`]) and the thread.
#[derive(Clone, Debug)]
pub struct DropReport {
    /// The guard's name.
    pub name: String,
    /// The dropping thread's name.
    pub thread_name: Option<String>,
    /// The dropping thread.
    pub thread: ThreadId,
    /// `None` when the drop ran outside any crossing; else whether its token had fired.
    pub token_fired: Option<bool>,
    /// [`cancellation_reason`] at the drop.
    pub reason: Option<String>,
    /// When it was dropped.
    pub at: Instant,
}

impl DropReport {
    /// Panics unless the drop ran on a runtime worker thread (not `loop_thread`), inside a
    /// crossing whose token had fired, with `reason` as the cancellation reason (C3).
    pub fn assert_cancelled_on_runtime(&self, loop_thread: ThreadId, reason: Option<&str>) {
        assert_eq!(
            self.thread_name.as_deref(),
            Some(WORKER_THREAD),
            "{self:?}: not dropped on a runtime worker thread"
        );
        assert_ne!(
            self.thread, loop_thread,
            "{self:?}: dropped on the loop thread"
        );
        assert_eq!(
            self.token_fired,
            Some(true),
            "{self:?}: not dropped inside a crossing whose token fired"
        );
        assert_eq!(
            self.reason.as_deref(),
            reason,
            "{self:?}: cancellation reason"
        );
    }
}

/// Counts drops of [`DropGuard`]s and keeps what each saw. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Drops(Arc<DropsInner>);

#[derive(Default)]
struct DropsInner {
    count: AtomicUsize,
    reports: Mutex<Vec<DropReport>>,
    changed: Condvar,
}

impl Drops {
    /// A fresh counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard that reports to this counter when dropped: move it into a future.
    pub fn guard(&self, name: impl Into<String>) -> DropGuard {
        DropGuard {
            name: name.into(),
            drops: self.clone(),
        }
    }

    /// How many guards have been dropped.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::SeqCst)
    }

    /// The reports so far, in drop order.
    pub fn reports(&self) -> Vec<DropReport> {
        self.0
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The report of the guard named `name`.
    ///
    /// # Panics
    /// Unless exactly one guard of that name was dropped.
    pub fn report(&self, name: &str) -> DropReport {
        let reports: Vec<_> = self
            .reports()
            .into_iter()
            .filter(|r| r.name == name)
            .collect();
        assert_eq!(reports.len(), 1, "drops of {name:?}: {reports:#?}");
        reports.into_iter().next().expect("one report")
    }

    /// Waits, detached, until at least `n` guards were dropped, and returns the reports.
    ///
    /// # Panics
    /// When that does not happen within [`SIGNAL_TIMEOUT`]; `what` names the awaited drops.
    pub fn wait_for(&self, py: Python<'_>, n: usize, what: &str) -> Vec<DropReport> {
        let inner = &self.0;
        py.detach(|| {
            let deadline = Instant::now() + SIGNAL_TIMEOUT;
            let mut reports = inner.reports.lock().unwrap_or_else(PoisonError::into_inner);
            while reports.len() < n {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "{what}: {} of {n} drops within {SIGNAL_TIMEOUT:?}: {reports:#?}",
                    reports.len()
                );
                reports = inner
                    .changed
                    .wait_timeout(reports, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            reports.clone()
        })
    }
}

/// Reports to its [`Drops`] when dropped.
pub struct DropGuard {
    name: String,
    drops: Drops,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let thread = std::thread::current();
        let report = DropReport {
            name: std::mem::take(&mut self.name),
            thread_name: thread.name().map(str::to_owned),
            thread: thread.id(),
            token_fired: token_fired(),
            reason: reason(),
            at: Instant::now(),
        };
        let inner = &self.drops.0;
        let mut reports = inner.reports.lock().unwrap_or_else(PoisonError::into_inner);
        inner.count.fetch_add(1, Ordering::SeqCst);
        reports.push(report);
        inner.changed.notify_all();
    }
}

/// Whether the current tokio crossing's token fired (`None` outside one).
fn token_fired() -> Option<bool> {
    #[cfg(feature = "tokio-runtime")]
    return cancellation_token().map(|t| t.is_cancelled());
    #[cfg(not(feature = "tokio-runtime"))]
    None
}

/// The current tokio crossing's cancellation reason.
fn reason() -> Option<String> {
    #[cfg(feature = "tokio-runtime")]
    return cancellation_reason();
    #[cfg(not(feature = "tokio-runtime"))]
    None
}

/// [`Drops`] as a Python object, so that Python code can hand it to Rust functions.
#[pyclass(frozen, module = "bridge_tests", name = "Drops")]
pub struct PyDrops(pub Drops);

impl PyDrops {
    /// A Python object sharing `drops`.
    pub fn wrap<'py>(py: Python<'py>, drops: &Drops) -> PyResult<Bound<'py, PyDrops>> {
        Bound::new(py, PyDrops(drops.clone()))
    }
}

/// A one-shot event between Python and Rust: calling it from Python (or `notify_one` on its
/// [`Notify`] from Rust) wakes one waiter, now or later. Rust waits with [`notified`]; Python
/// awaits `signal.wait()` (a crossing, so only inside a running loop; see [`wait_signal`]).
#[pyclass(frozen, module = "bridge_tests")]
pub struct Signal {
    notify: Arc<Notify>,
}

impl Signal {
    /// A new signal and the Rust side of it.
    pub fn pair(py: Python<'_>) -> PyResult<(Bound<'_, Signal>, Arc<Notify>)> {
        let notify = Arc::new(Notify::new());
        let signal = Bound::new(
            py,
            Signal {
                notify: Arc::clone(&notify),
            },
        )?;
        Ok((signal, notify))
    }
}

#[pymethods]
impl Signal {
    /// Any thread: signals (a permit is kept when nobody waits yet).
    fn __call__(&self) {
        self.notify.notify_one();
    }

    /// Loop thread: an awaitable that resolves once signalled, or raises `TimeoutError` after
    /// [`SIGNAL_TIMEOUT`].
    #[cfg(feature = "tokio-runtime")]
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let notify = Arc::clone(&self.notify);
        future_into_py(py, async move { notified(&notify, "Signal.wait()").await })
    }
}

/// Runs `event_loop` until `signal` is signalled (`await signal.wait()`, bounded).
pub fn wait_signal(event_loop: &Bound<'_, PyAny>, signal: &Bound<'_, Signal>) -> PyResult<()> {
    let py = event_loop.py();
    let coro = loop_helpers(py).call_method1("await_call", (signal.getattr("wait")?,))?;
    run_bounded(event_loop, &coro).map(drop)
}

/// Runtime thread: waits for `notify`, failing with `TimeoutError` after [`SIGNAL_TIMEOUT`].
pub async fn notified(notify: &Notify, what: &str) -> PyResult<()> {
    tokio::time::timeout(SIGNAL_TIMEOUT, notify.notified())
        .await
        .map_err(|_| {
            PyTimeoutError::new_err(format!("{what}: no signal within {SIGNAL_TIMEOUT:?}"))
        })
}

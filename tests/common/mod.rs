//! Shared scaffolding for the integration tests: the embedded interpreter, one private asyncio
//! event loop per test, Python helper modules, and [`Attached`], which keeps Python references
//! from being dropped on a thread that is not attached.
//!
//! The suite also runs with `--cfg pyo3_disable_reference_pool`, where such a drop aborts the
//! process. So every Python reference that a Rust future on a runtime thread holds is either
//! consumed inside `Python::attach`, returned as the crossing's outcome (the bridge carries it
//! home to the loop thread), or wrapped in [`Attached`].

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::tokio::future_into_py_with_locals;
use pyo3_async_bridge::TaskLocals;
use std::ffi::CStr;
use std::future::Future;
use std::time::Duration;

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
pub fn crossing<'py, F, T>(event_loop: &Bound<'py, PyAny>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
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

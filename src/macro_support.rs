//! What the expansions of `#[tokio::main]` and `#[tokio::test]` call (`macros/`). Hidden, not
//! part of the stable API: the attributes stay thin and the behaviour lives (and is tested)
//! here.
//!
//! Rules: T1 (`main`), T2 (a test on a fresh event loop), T3 (the test shapes) in `SPEC.md`.

use crate::tokio::{Builder, JoinHandle};
use pyo3::prelude::*;
use std::future::Future;
use std::pin::Pin;

/// The future a test function becomes: the shape of the peer's `testing::Test::test_fn`.
pub type TestFuture = Pin<Box<dyn Future<Output = PyResult<()>> + Send>>;

/// What a `#[main]` or `#[test]` function may return: `()` or `PyResult<()>`.
pub trait Outcome {
    /// The outcome as a `PyResult`.
    fn into_result(self) -> PyResult<()>;
}

impl Outcome for () {
    fn into_result(self) -> PyResult<()> {
        Ok(())
    }
}

impl Outcome for PyResult<()> {
    fn into_result(self) -> PyResult<()> {
        self
    }
}

/// `#[main]` (T1): initialises Python, hands `builder` to [`crate::tokio::init`] and runs `fut`
/// to completion with [`crate::tokio::run`] on a fresh event loop. An error is printed as
/// Python prints an uncaught exception (traceback, `sys.last_*` set) and the process exits with
/// status 1.
pub fn main<F, R>(mut builder: Builder, fut: F)
where
    F: Future<Output = R> + Send + 'static,
    R: Outcome,
{
    builder
        .enable_all()
        .on_thread_start(crate::attach::mark_runtime_thread);
    Python::initialize();
    crate::tokio::init(builder);
    let failed = Python::attach(|py| {
        crate::tokio::run(py, async move { fut.await.into_result() })
            .map_err(|e| e.print_and_set_sys_last_vars(py))
            .is_err()
    });
    if failed {
        std::process::exit(1);
    }
}

/// `#[test]` under cargo's harness or `cargo nextest` (T2): runs the test on a fresh event loop
/// in the calling thread and panics with the error's description when it fails, so libtest
/// reports it (and `#[should_panic(expected = ...)]` matches the message).
pub fn run_test(make: fn() -> TestFuture) {
    if let Err(failure) = run_on_fresh_loop(make) {
        panic!("{failure}");
    }
}

/// How a test failed.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The test panicked (its error is a [`RustPanic`](crate::RustPanic)).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) panicked: bool,
    /// The exception's type and message, then its traceback when it has one.
    pub(crate) text: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Runs the test `make` builds on a fresh event loop in the calling thread ([`crate::tokio::run`]
/// creates the loop and closes it afterwards). `make` is called inside the run, so a test
/// function sees that loop as its current loop.
pub(crate) fn run_on_fresh_loop(
    make: impl FnOnce() -> TestFuture + Send + 'static,
) -> Result<(), Failure> {
    Python::initialize();
    Python::attach(|py| {
        crate::tokio::run(py, async move { make().await }).map_err(|e| Failure {
            panicked: e.is_instance_of::<crate::RustPanic>(py),
            text: describe(py, &e),
        })
    })
}

/// `type: message`, then the formatted traceback if there is one.
fn describe(py: Python<'_>, err: &PyErr) -> String {
    let mut out = err.to_string();
    if let Some(tb) = err.traceback(py).and_then(|tb| tb.format().ok()) {
        out.push('\n');
        out.push_str(&tb);
    }
    out
}

/// An `async fn` test (T3).
pub fn async_test<F, R>(fut: F) -> TestFuture
where
    F: Future<Output = R> + Send + 'static,
    R: Outcome,
{
    Box::pin(async move { fut.await.into_result() })
}

/// A sync test (T3): runs on a blocking thread of the runtime, so it may block.
pub fn blocking_test<F, R>(f: F) -> TestFuture
where
    F: FnOnce() -> R + Send + 'static,
    R: Outcome + 'static,
{
    Box::pin(joined(::tokio::task::spawn_blocking(move || {
        f().into_result()
    })))
}

/// A sync test that takes `event_loop: Py<PyAny>` (T3): the same, given the test's loop.
pub fn blocking_test_with_loop<F, R>(f: F) -> TestFuture
where
    F: FnOnce(Py<PyAny>) -> R + Send + 'static,
    R: Outcome + 'static,
{
    Box::pin(async move {
        let locals = crate::tokio::current_task_locals().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err(
                "a test future runs inside its event loop's scope",
            )
        })?;
        joined(::tokio::task::spawn_blocking(move || {
            // The test's own thread (a blocking one, where the test body attaches as it
            // likes): the loop reference is taken here, not on a worker thread (A1).
            let event_loop = Python::attach(|py| locals.event_loop(py).unbind());
            f(event_loop).into_result()
        }))
        .await
    })
}

/// The result of a blocking test; its panic is resumed here, so the bridge reports it as for
/// any crossing (`RustPanic` with the message, C2).
async fn joined(handle: JoinHandle<PyResult<()>>) -> PyResult<()> {
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "the test's blocking task did not finish: {e}"
        ))),
    }
}

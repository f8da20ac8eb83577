//! What the expansions of the `main` and `test` attributes call (`macros/`), for tokio and
//! async-std alike. Hidden, not part of the stable API: the attributes stay thin and the
//! behaviour lives (and is tested) here.
//!
//! Rules: T1 (`main`), T2 (a test on a fresh event loop), T3 (the test shapes) in `SPEC.md`, and
//! R8 for async-std. Each expansion names its runtime ([`AttrRuntime`]); everything else is the
//! same code for both.

use crate::generic::{ContextExt, JoinError, Runtime};
use pyo3::prelude::*;
use std::future::Future;
use std::pin::Pin;

/// The future a test function becomes: the shape of the peer's `testing::Test::test_fn`.
pub type TestFuture = Pin<Box<dyn Future<Output = PyResult<()>> + Send>>;

/// Makes a test's future, called inside the run of its fresh loop.
pub type StartTest = Box<dyn FnOnce() -> TestFuture + Send>;

/// Runs a test on a fresh event loop in the calling thread: [`run_on_fresh_loop`] for one
/// runtime, as a registered test carries it for `testing::main()`.
pub type Runner = fn(StartTest) -> Result<(), Failure>;

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

/// A runtime the attributes run on: its module's `run` (by default [`generic::run`]; tokio's
/// own `run` also gives the main future its cancellation token).
///
/// [`generic::run`]: crate::generic::run
pub trait AttrRuntime: ContextExt + Sized {
    /// Runs `fut` as the main future of a new event loop, closed afterwards (R2).
    fn run_main(py: Python<'_>, fut: TestFuture) -> PyResult<()> {
        crate::generic::run::<Self, _, _>(py, fut)
    }
}

#[cfg(feature = "tokio-runtime")]
impl AttrRuntime for crate::tokio::TokioRuntime {
    fn run_main(py: Python<'_>, fut: TestFuture) -> PyResult<()> {
        crate::tokio::run(py, fut)
    }
}

#[cfg(feature = "async-std-runtime")]
impl AttrRuntime for crate::async_std::AsyncStdRuntime {}

/// `#[tokio::main]` (T1): hands `builder` to [`crate::tokio::init`], then as [`main_on`].
#[cfg(feature = "tokio-runtime")]
pub fn main<F, R>(mut builder: crate::tokio::Builder, fut: F)
where
    F: Future<Output = R> + Send + 'static,
    R: Outcome,
{
    builder
        .enable_all()
        .on_thread_start(crate::attach::mark_runtime_thread);
    crate::tokio::init(builder);
    main_on::<crate::tokio::TokioRuntime, F, R>(fut);
}

/// `#[main]` (T1, R8): initialises Python and runs `fut` to completion on a fresh event loop with
/// `Rt`'s `run`. An error is printed as Python prints an uncaught exception (traceback,
/// `sys.last_*` set) and the process exits with status 1.
pub fn main_on<Rt, F, R>(fut: F)
where
    Rt: AttrRuntime,
    F: Future<Output = R> + Send + 'static,
    R: Outcome,
{
    Python::initialize();
    let failed = Python::attach(|py| {
        Rt::run_main(py, Box::pin(async move { fut.await.into_result() }))
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
pub fn run_test<Rt: AttrRuntime>(make: fn() -> TestFuture) {
    if let Err(failure) = run_on_fresh_loop::<Rt>(Box::new(make)) {
        panic!("{failure}");
    }
}

/// How a test failed.
#[derive(Debug)]
pub struct Failure {
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

/// Runs the test `make` builds on a fresh event loop in the calling thread (`Rt`'s `run` creates
/// the loop and closes it afterwards). `make` is called inside the run, so a test function sees
/// that loop as its current loop.
pub fn run_on_fresh_loop<Rt: AttrRuntime>(make: StartTest) -> Result<(), Failure> {
    Python::initialize();
    Python::attach(|py| {
        Rt::run_main(py, Box::pin(async move { make().await })).map_err(|e| Failure {
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

/// A sync test (T3): runs on a blocking thread of `Rt`, so it may block.
pub fn blocking_test<Rt, F, R>(f: F) -> TestFuture
where
    Rt: AttrRuntime,
    F: FnOnce() -> R + Send + 'static,
    R: Outcome + 'static,
{
    Box::pin(on_blocking_thread::<Rt>(move || f().into_result()))
}

/// A sync test that takes `event_loop: Py<PyAny>` (T3): the same, given the test's loop.
pub fn blocking_test_with_loop<Rt, F, R>(f: F) -> TestFuture
where
    Rt: AttrRuntime,
    F: FnOnce(Py<PyAny>) -> R + Send + 'static,
    R: Outcome + 'static,
{
    Box::pin(async move {
        let locals = Rt::get_task_locals().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err(
                "a test future runs inside its event loop's scope",
            )
        })?;
        on_blocking_thread::<Rt>(move || {
            // The test's own thread (a blocking one, where the test body attaches as it
            // likes): the loop reference is taken here, not on a worker thread (A1).
            let event_loop = Python::attach(|py| locals.event_loop(py).unbind());
            f(event_loop).into_result()
        })
        .await
    })
}

/// Runs `f` on a blocking thread of `Rt` and returns its result; its panic is resumed here, so
/// the bridge reports it as for any crossing (`RustPanic` with the message, C2).
async fn on_blocking_thread<Rt: Runtime>(
    f: impl FnOnce() -> PyResult<()> + Send + 'static,
) -> PyResult<()> {
    // The blocking thread sends the result before its task ends, so once the handle is done
    // with `Ok` the result is in the channel.
    let (tx, rx) = futures::channel::oneshot::channel();
    let ended = Rt::spawn_blocking(move || {
        // The test's future is gone (a `testing::main` timeout): its error may hold Python
        // references, released attached (the reference pool may be disabled).
        if let Err(unsent) = tx.send(f()) {
            Python::attach(move |_| drop(unsent));
        }
    })
    .await;
    match ended {
        Ok(()) => rx.await.unwrap_or_else(|_| {
            Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the test's blocking task ended without a result",
            ))
        }),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "the test's blocking task did not finish",
        )),
    }
}

//! The harness for `harness = false` test binaries: [`main`] runs every test marked with
//! [`#[tokio::test]`](crate::tokio::test) or `#[async_std::test]`, as `pyo3-async-runtimes`'
//! `testing::main` does, so such binaries keep working after the rename.
//!
//! You rarely need it: `#[tokio::test]` is a plain `#[test]` under cargo's standard harness and
//! `cargo nextest`, each test on a fresh event loop. Keep a `harness = false` binary when you
//! have one already, or when a test must own the main thread's interpreter set-up.
//!
//! # Examples
//! `Cargo.toml`:
//! ```toml
//! [[test]]
//! name = "test_example"
//! path = "pytests/test_example.rs"
//! harness = false
//! ```
//! `pytests/test_example.rs`:
//! ```no_run
//! use pyo3::prelude::*;
//!
//! #[pyo3_async_bridge::tokio::test]
//! async fn test_async_sleep() -> PyResult<()> {
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!     Ok(())
//! }
//!
//! #[pyo3_async_bridge::tokio::test]
//! fn test_blocking_with_loop(event_loop: Py<PyAny>) -> PyResult<()> {
//!     Python::attach(|py| {
//!         let closed = event_loop.bind(py).call_method0("is_closed")?.is_truthy()?;
//!         assert!(!closed);
//!         Ok(())
//!     })
//! }
//!
//! #[pyo3_async_bridge::tokio::main]
//! async fn main() -> PyResult<()> {
//!     pyo3_async_bridge::testing::main().await
//! }
//! ```
//!
//! # Behaviour (SPEC rule T4)
//! - Each test runs on a **fresh event loop in its own thread** (the loop [`main`] itself runs
//!   on is never shared), on the runtime its attribute names (a [`Test`] submitted by hand, on
//!   the runtime that runs [`main`]), with a **timeout** (`--timeout SECS`, the environment variable
//!   [`TIMEOUT_ENV`], else 60 s): a test that runs longer fails and the run goes on.
//! - It prints libtest's lines (`running N tests`, `test NAME ... ok`, `FAILED`, `ignored`), the
//!   failures with their messages, and the `test result:` summary.
//! - It never stops at the first failure. [`main`] returns `Err` when any test failed, so the
//!   binary exits non-zero.
//! - With no arguments it runs every test; it understands libtest's filters, `--exact`,
//!   `--skip`, `--list` (also `--format terse`), `--ignored`, `--include-ignored` and
//!   `--test-threads`, which is what `cargo nextest` needs to run such a binary too.
//! - `#[ignore]` and `#[should_panic(expected = "...")]` behave as under libtest.

mod args;

pub use args::{Args, DEFAULT_TIMEOUT, TIMEOUT_ENV};

use crate::macro_support::{run_on_fresh_loop, Failure, Runner, TestFuture};
use args::{IgnoredMode, Parsed};
use futures::StreamExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A function that starts a test: the shape the peer's `Test::test_fn` has.
pub type TestFn = dyn Fn() -> TestFuture + Send + Sync;

/// A test for the harness, as in `pyo3-async-runtimes`: what [`tokio::test`](crate::tokio::test)
/// registers (through `inventory`). Submitting your own with `inventory::submit!` (through the
/// bridge's re-export) also works.
#[derive(Clone)]
pub struct Test {
    /// The test's full name: `crate::module::function`.
    pub name: &'static str,
    /// Starts the test.
    pub test_fn: &'static TestFn,
}

impl Test {
    /// Starts the test: the future to run on its event loop.
    pub fn task(&self) -> TestFuture {
        (self.test_fn)()
    }
}

inventory::collect!(Test);

/// What the attribute registers: the test, its `#[ignore]` / `#[should_panic]`, and how to run
/// it on its runtime.
#[doc(hidden)]
pub struct Registered {
    pub test: Test,
    pub ignore: bool,
    /// `Some(expected)` for `#[should_panic]` (`Some("")` without `expected`).
    pub should_panic: Option<&'static str>,
    pub runner: Runner,
}

inventory::collect!(Registered);

/// One test, wherever it was registered.
#[derive(Clone)]
struct Case {
    test: Test,
    ignore: bool,
    should_panic: Option<&'static str>,
    runner: Runner,
}

/// How one test ended.
enum Verdict {
    Ok,
    Failed(String),
    Ignored,
}

/// Parses the command line (see [`Args`]). `--help` prints the usage and exits; an unknown
/// option prints the error and the usage and exits with status 2.
pub fn parse_args() -> Args {
    match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            println!("{}", args::USAGE);
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{}", args::USAGE);
            std::process::exit(2)
        }
    }
}

/// Runs `tests` as `args` asks (see the [module docs](self)).
///
/// # Errors
/// `RuntimeError` when a test failed (after all ran), or when the timeout set through the
/// environment is malformed.
pub async fn test_harness(tests: Vec<Test>, args: Args) -> PyResult<()> {
    let runner = default_runner();
    let cases = tests
        .into_iter()
        .map(|test| Case {
            test,
            ignore: false,
            should_panic: None,
            runner,
        })
        .collect();
    harness(cases, args).await
}

/// Parses the command line and runs every registered test: the body of a `harness = false`
/// test binary (see the [module docs](self)).
///
/// # Errors
/// `RuntimeError` when a test failed, so that `main` returns it and the binary exits non-zero.
pub async fn main() -> PyResult<()> {
    let args = parse_args();
    let registered = inventory::iter::<Registered>.into_iter().map(|r| Case {
        test: r.test.clone(),
        ignore: r.ignore,
        should_panic: r.should_panic,
        runner: r.runner,
    });
    let runner = default_runner();
    let submitted = inventory::iter::<Test>.into_iter().map(|t| Case {
        test: t.clone(),
        ignore: false,
        should_panic: None,
        runner,
    });
    harness(registered.chain(submitted).collect(), args).await
}

/// Selects, lists or runs `cases`; prints libtest's lines.
async fn harness(mut cases: Vec<Case>, args: Args) -> PyResult<()> {
    let timeout = args.effective_timeout().map_err(PyRuntimeError::new_err)?;
    cases.sort_by_key(|c| c.test.name);
    let total = cases.len();
    cases.retain(|c| args.selects(c.test.name));
    let filtered_out = total - cases.len();
    if args.list {
        for c in cases
            .iter()
            .filter(|c| args.ignored != IgnoredMode::Only || c.ignore)
        {
            println!("{}: test", c.test.name);
        }
        if !args.terse {
            println!("\n{} tests, 0 benchmarks", cases.len());
        }
        return Ok(());
    }
    let started = Instant::now();
    println!("\nrunning {} tests", cases.len());
    let mut results = futures::stream::iter(cases)
        .map(|case| {
            let skip = match args.ignored {
                IgnoredMode::Skip => case.ignore,
                IgnoredMode::Only => !case.ignore,
                IgnoredMode::Include => false,
            };
            async move {
                let verdict = if skip {
                    Verdict::Ignored
                } else {
                    run_case(&case, timeout).await
                };
                (case.test.name, verdict)
            }
        })
        .buffer_unordered(args.concurrency());
    let (mut passed, mut ignored, mut failures) = (0, 0, Vec::new());
    while let Some((name, verdict)) = results.next().await {
        match verdict {
            Verdict::Ok => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Verdict::Ignored => {
                ignored += 1;
                println!("test {name} ... ignored");
            }
            Verdict::Failed(why) => {
                println!("test {name} ... FAILED");
                failures.push((name, why));
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:\n");
        for (name, why) in &failures {
            println!("---- {name} ----\n{why}\n");
        }
        println!("failures:");
        for (name, _) in &failures {
            println!("    {name}");
        }
    }
    let status = if failures.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {status}. {passed} passed; {} failed; {ignored} ignored; 0 measured; \
         {filtered_out} filtered out; finished in {:.2}s\n",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    match failures.len() {
        0 => Ok(()),
        n => Err(PyRuntimeError::new_err(format!(
            "{n} of {} tests failed",
            n + passed
        ))),
    }
}

/// The runtime of a test submitted without one, when [`main`] runs on neither.
#[cfg(feature = "tokio-runtime")]
type Fallback = crate::tokio::TokioRuntime;
#[cfg(not(feature = "tokio-runtime"))]
type Fallback = crate::async_std::AsyncStdRuntime;

/// How to run a [`Test`] that carries no runtime (submitted by hand, or given to
/// [`test_harness`]): on the runtime the harness itself runs on, as the peer polls every test on
/// main's runtime; else on tokio when it is enabled.
fn default_runner() -> Runner {
    #[cfg(feature = "async-std-runtime")]
    {
        use crate::generic::ContextExt;
        if crate::async_std::AsyncStdRuntime::get_task_locals().is_some() {
            return run_on_fresh_loop::<crate::async_std::AsyncStdRuntime>;
        }
    }
    run_on_fresh_loop::<Fallback>
}

/// How long a timed-out test gets to stop after its future is cancelled (a blocking test
/// cannot be stopped: its thread is left to finish on its own).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How one run of a test ended.
enum CaseEnd {
    Passed,
    Failed(Failure),
    /// It ran longer than the timeout.
    TimedOut,
    /// No result: its thread could not start, or ended without sending one (it died).
    NoResult(String),
}

/// Runs one test on a fresh event loop in a thread of its own, bounded by `timeout`.
async fn run_case(case: &Case, timeout: Duration) -> Verdict {
    let (tx, rx) = futures::channel::oneshot::channel();
    let (test, runner) = (case.test.clone(), case.runner);
    // The watchdog thread starts the test's thread and waits for it, at most `timeout`, with
    // plain blocking calls: no timer of any runtime. The harness's task only awaits `rx`, which
    // the watchdog always answers (dropped unsent only if the watchdog dies).
    let watchdog = std::thread::Builder::new()
        .name(format!("{} (watchdog)", case.test.name))
        .spawn(move || {
            let _ = tx.send(watch(test, runner, timeout));
        });
    let end = match watchdog {
        Ok(_) => rx.await.unwrap_or_else(|_| {
            CaseEnd::NoResult("the test's watchdog thread ended without a result".into())
        }),
        Err(e) => CaseEnd::NoResult(format!("could not start the test's watchdog thread: {e}")),
    };
    match (end, case.should_panic) {
        (CaseEnd::Passed, None) => Verdict::Ok,
        (CaseEnd::Passed, Some(_)) => Verdict::Failed("test did not panic as expected".into()),
        (CaseEnd::Failed(f), None) => Verdict::Failed(f.text),
        (CaseEnd::Failed(f), Some(expected)) if f.panicked && f.text.contains(expected) => {
            Verdict::Ok
        }
        (CaseEnd::Failed(f), Some(expected)) => Verdict::Failed(format!(
            "the test should have panicked with a message containing {expected:?}; it ended with:\n{}",
            f.text
        )),
        (CaseEnd::TimedOut, _) => Verdict::Failed(format!("test timed out after {timeout:?}")),
        (CaseEnd::NoResult(why), _) => Verdict::Failed(why),
    }
}

/// The watchdog: runs `test` with `runner` in a thread of its own and waits for its result, at
/// most `timeout`; then cancels its future and gives it [`STOP_GRACE`] to stop.
fn watch(test: Test, runner: Runner, timeout: Duration) -> CaseEnd {
    let (tx, rx) = mpsc::channel();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let thread = std::thread::Builder::new()
        .name(test.name.to_string())
        .spawn(move || {
            // This thread runs the test's own loop; the watchdog only waits for `rx` (sent once,
            // whatever the outcome; dropped unsent only if this thread dies).
            let result = runner(Box::new(move || {
                let fut = test.task();
                Box::pin(async move {
                    token
                        .run_until_cancelled_owned(fut)
                        .await
                        .unwrap_or_else(|| {
                            Err(PyRuntimeError::new_err("stopped by the harness's timeout"))
                        })
                })
            }));
            let _ = tx.send(result);
        });
    if let Err(e) = thread {
        return CaseEnd::NoResult(format!("could not start the test's thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => CaseEnd::Passed,
        Ok(Err(failure)) => CaseEnd::Failed(failure),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            stop.cancel();
            let _ = rx.recv_timeout(STOP_GRACE);
            CaseEnd::TimedOut
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            CaseEnd::NoResult("the test's thread ended without a result".into())
        }
    }
}

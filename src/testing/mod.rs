//! The harness for `harness = false` test binaries: [`main`] runs every test marked with
//! [`#[tokio::test]`](crate::tokio::test), as `pyo3-async-runtimes`' `testing::main` does, so
//! such binaries keep working after the rename.
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
//!   on is never shared), with a **timeout** (`--timeout SECS`, the environment variable
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

use crate::macro_support::{run_on_fresh_loop, TestFuture};
use args::{IgnoredMode, Parsed};
use futures::StreamExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
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

/// What the attribute registers: the test, and its `#[ignore]` / `#[should_panic]`.
#[doc(hidden)]
pub struct Registered {
    pub test: Test,
    pub ignore: bool,
    /// `Some(expected)` for `#[should_panic]` (`Some("")` without `expected`).
    pub should_panic: Option<&'static str>,
}

inventory::collect!(Registered);

/// One test, wherever it was registered.
#[derive(Clone)]
struct Case {
    test: Test,
    ignore: bool,
    should_panic: Option<&'static str>,
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
    let cases = tests
        .into_iter()
        .map(|test| Case {
            test,
            ignore: false,
            should_panic: None,
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
    });
    let submitted = inventory::iter::<Test>.into_iter().map(|t| Case {
        test: t.clone(),
        ignore: false,
        should_panic: None,
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

/// How long a timed-out test gets to stop after its future is cancelled (a blocking test
/// cannot be stopped: its thread is left to finish on its own).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs one test on a fresh event loop in a thread of its own, bounded by `timeout`.
async fn run_case(case: &Case, timeout: Duration) -> Verdict {
    let (tx, mut rx) = ::tokio::sync::oneshot::channel();
    let stop = CancellationToken::new();
    let test = case.test.clone();
    let token = stop.clone();
    let thread = std::thread::Builder::new()
        .name(case.test.name.to_string())
        .spawn(move || {
            // This thread runs the test's own loop; the harness's loop only waits for `rx`
            // (sent once, whatever the outcome; dropped unsent only if this thread dies).
            let result = run_on_fresh_loop(move || {
                let fut = test.task();
                Box::pin(async move {
                    token
                        .run_until_cancelled_owned(fut)
                        .await
                        .unwrap_or_else(|| {
                            Err(PyRuntimeError::new_err("stopped by the harness's timeout"))
                        })
                })
            });
            let _ = tx.send(result);
        });
    if let Err(e) = thread {
        return Verdict::Failed(format!("could not start the test's thread: {e}"));
    }
    let result = match ::tokio::time::timeout(timeout, &mut rx).await {
        Ok(received) => received,
        Err(_) => {
            stop.cancel();
            let _ = ::tokio::time::timeout(STOP_GRACE, rx).await;
            return Verdict::Failed(format!("test timed out after {timeout:?}"));
        }
    };
    match (result, case.should_panic) {
        (Ok(Ok(())), None) => Verdict::Ok,
        (Ok(Ok(())), Some(_)) => Verdict::Failed("test did not panic as expected".into()),
        (Ok(Err(f)), None) => Verdict::Failed(f.text),
        (Ok(Err(f)), Some(expected)) if f.panicked && f.text.contains(expected) => Verdict::Ok,
        (Ok(Err(f)), Some(expected)) => Verdict::Failed(format!(
            "the test should have panicked with a message containing {expected:?}; it ended with:\n{}",
            f.text
        )),
        (Err(_), _) => Verdict::Failed("the test's thread ended without a result".into()),
    }
}

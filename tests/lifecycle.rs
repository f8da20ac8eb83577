//! A loop that closes, and a Rust binary that exits, with crossings pending (rules L1, L2).
//!
//! The L1 tests run in this process: a loop is closed under pending crossings and the Rust
//! side must see every token fire and every `PyFuture` fail with the bridge's error, promptly.
//! Under `--cfg pyo3_disable_reference_pool` (`make test-nopool`) they also prove that closing
//! releases every Python reference attached: an unattached release aborts there.
//!
//! The L2 tests re-run this test binary as a child process ([`child`], selected by an
//! environment variable) that leaves 10,000 crossings pending in each direction and returns
//! from `main`, which is how a Rust program that embeds Python ends: the interpreter is never
//! finalized and the runtime's threads are still busy. Exit code 0, empty stderr, no hang.

mod common;

use common::{fail, new_loop, run};
use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{cancellation_token, future_into_py_with_locals, get_runtime};
use pyo3_async_bridge::{into_future_with_locals, TaskLocals};
use std::ffi::CStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// "Promptly, within about a second" (L1), with a margin for a loaded machine.
const PROMPT: Duration = Duration::from_secs(2);
/// Bound of every wait in these tests; a correct bridge ends each far sooner.
const DEADLINE: Duration = Duration::from_secs(60);

const HELPERS: &CStr = cr#"
import asyncio

async def forever():
    await asyncio.sleep(3600)

async def pending_crossings(make, n):
    return [make() for _ in range(n)]
"#;

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    static CELL: pyo3::sync::PyOnceLock<Py<PyModule>> = pyo3::sync::PyOnceLock::new();
    common::load_module(py, &CELL, HELPERS, c"bridge_test_lifecycle")
}

/// Waits on `rx` for `n` messages with the GIL released; panics at the deadline.
fn receive<T: Send>(py: Python<'_>, rx: &mut mpsc::Receiver<T>, n: usize, what: &str) -> Vec<T> {
    // `detach` needs a `Send` closure: the receiver goes in and comes back.
    let (dummy_tx, dummy_rx) = mpsc::channel();
    drop(dummy_tx);
    let owned = std::mem::replace(rx, dummy_rx);
    let what = what.to_owned();
    let (got, owned) = py.detach(move || {
        let deadline = Instant::now() + DEADLINE;
        let got: Vec<T> = (0..n)
            .map(|i| {
                owned
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|_| panic!("{what}: only {i} of {n} arrived"))
            })
            .collect();
        (got, owned)
    });
    *rx = owned;
    got
}

#[test]
fn l1_closing_the_loop_fires_tokens_and_drops_rust_futures() {
    Python::attach(|py| {
        let event_loop = new_loop(py);
        let locals = TaskLocals::new(event_loop.clone());
        let (started_tx, mut started_rx) = mpsc::channel::<()>();
        let (fired_tx, mut fired_rx) = mpsc::channel::<()>();
        let (dropped_tx, mut dropped_rx) = mpsc::channel::<()>();
        const N: usize = 100;
        let mut futures = Vec::new();
        for _ in 0..N {
            let (started, fired, dropped) =
                (started_tx.clone(), fired_tx.clone(), dropped_tx.clone());
            let fut = future_into_py_with_locals(py, locals.clone(), async move {
                struct OnDrop(mpsc::Sender<()>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        let _ = self.0.send(());
                    }
                }
                let _on_drop = OnDrop(dropped);
                let token = cancellation_token().expect("inside a crossing");
                tokio::spawn(async move {
                    token.cancelled().await;
                    let _ = fired.send(());
                });
                let _ = started.send(());
                std::future::pending::<()>().await;
                Ok(())
            })
            .unwrap_or_else(|e| fail(py, e));
            futures.push(fut);
        }
        receive(py, &mut started_rx, N, "Rust futures started");
        event_loop.call_method0("close").unwrap();
        let closed_at = Instant::now();
        receive(
            py,
            &mut dropped_rx,
            N,
            "Rust futures dropped after the close",
        );
        let elapsed = closed_at.elapsed();
        receive(py, &mut fired_rx, N, "tokens fired");
        assert!(
            elapsed < PROMPT,
            "the Rust futures were dropped {elapsed:?} after the close"
        );
        for fut in &futures {
            assert!(!fut.call_method0("done").unwrap().is_truthy().unwrap());
        }
        // A new crossing on the closed loop is refused with the bridge's error.
        let err = future_into_py_with_locals(py, locals.clone(), async { Ok(()) }).unwrap_err();
        assert!(err.to_string().contains("event loop was closed"), "{err}");
    });
}

#[test]
fn l1_pyfutures_on_a_closed_loop_fail_promptly_started_or_not() {
    Python::attach(|py| {
        let event_loop = new_loop(py);
        let locals = TaskLocals::new(event_loop.clone());
        let (tx, mut rx) = mpsc::channel::<Result<(), String>>();
        let spawn_await = |py: Python<'_>| {
            let coro = helpers(py).call_method0("forever").unwrap();
            let fut = into_future_with_locals(&locals, coro).unwrap_or_else(|e| fail(py, e));
            let tx = tx.clone();
            get_runtime().spawn(async move {
                // Formatted and dropped attached: the error holds a Python object (A1).
                let outcome = match fut.await {
                    Ok(v) => {
                        Python::attach(move |_| drop(v));
                        Ok(())
                    }
                    Err(e) => Err(Python::attach(move |_| e.to_string())),
                };
                let _ = tx.send(outcome);
            });
        };
        // 50 tasks start while the loop runs one step; 50 more are only queued.
        for _ in 0..50 {
            spawn_await(py);
        }
        let sleep = py
            .import("asyncio")
            .unwrap()
            .call_method1("sleep", (0.05,))
            .unwrap();
        run(&event_loop, &sleep).unwrap_or_else(|e| fail(py, e));
        for _ in 0..50 {
            spawn_await(py);
        }
        event_loop.call_method0("close").unwrap();
        let closed_at = Instant::now();
        let outcomes = receive(py, &mut rx, 100, "PyFutures resolved after the close");
        let elapsed = closed_at.elapsed();
        for outcome in outcomes {
            let err = outcome.expect_err("a PyFuture on a closed loop succeeded");
            assert!(
                err.starts_with("RuntimeError: the asyncio event loop was closed"),
                "{err}"
            );
        }
        assert!(
            elapsed < PROMPT,
            "the PyFutures failed {elapsed:?} after the close"
        );
        // The loop is known closed now: refused at once.
        let coro = helpers(py).call_method0("forever").unwrap();
        let err = into_future_with_locals(&locals, coro.clone()).unwrap_err();
        assert!(err.to_string().contains("event loop was closed"), "{err}");
        assert!(
            coro.getattr("cr_frame").unwrap().is_none(),
            "the coroutine was not closed"
        );
    });
}

#[test]
fn l1_crossings_made_from_another_thread_do_not_hide_a_closed_loop() {
    // Another thread keeps making crossings on a loop that closed: that is no sign of life
    // of the loop, so the close is still noticed promptly and every PyFuture fails.
    Python::attach(|py| {
        let event_loop = new_loop(py);
        let locals = TaskLocals::new(event_loop.clone());
        let sleep = py
            .import("asyncio")
            .unwrap()
            .call_method1("sleep", (0.01,))
            .unwrap();
        run(&event_loop, &sleep).unwrap_or_else(|e| fail(py, e));
        event_loop.call_method0("close").unwrap();
        let closed_at = Instant::now();
        let (tx, mut rx) = mpsc::channel::<Duration>();
        let submitted = py.detach(|| {
            std::thread::spawn(move || {
                let mut submitted = 0usize;
                while closed_at.elapsed() < DEADLINE {
                    let made = Python::attach(|py| {
                        let coro = helpers(py).call_method0("forever").unwrap();
                        into_future_with_locals(&locals, coro).ok()
                    });
                    let Some(fut) = made else {
                        break; // refused: the bridge knows the loop is closed
                    };
                    submitted += 1;
                    let tx = tx.clone();
                    get_runtime().spawn(async move {
                        let outcome = fut.await;
                        let _ = tx.send(closed_at.elapsed());
                        Python::attach(move |_| drop(outcome));
                    });
                    std::thread::sleep(Duration::from_millis(1)); // a steady stream
                }
                submitted
            })
            .join()
            .unwrap()
        });
        assert!(submitted > 0);
        let resolved = receive(py, &mut rx, submitted, "PyFutures on the closed loop");
        let last = resolved.into_iter().max().unwrap();
        assert!(
            last < PROMPT,
            "the last PyFuture failed {last:?} after the close"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// L2: a Rust binary that exits with work pending.

const PENDING: usize = 10_000;

/// Leaves `PENDING` crossings pending in each direction on `event_loop`, plus `PENDING` that
/// complete over the next few milliseconds. Attached, on the loop's thread, loop not running.
fn leave_work_pending(py: Python<'_>, event_loop: &Bound<'_, PyAny>) {
    let locals = TaskLocals::new(event_loop.clone());
    let mut keep = Vec::new();
    for i in 0..PENDING {
        let forever = future_into_py_with_locals(py, locals.clone(), async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .unwrap_or_else(|e| fail(py, e));
        let soon = future_into_py_with_locals(py, locals.clone(), async move {
            tokio::time::sleep(Duration::from_millis((i % 5) as u64)).await;
            Ok(i)
        })
        .unwrap_or_else(|e| fail(py, e));
        let coro = helpers(py).call_method0("forever").unwrap();
        let awaited = into_future_with_locals(&locals, coro).unwrap_or_else(|e| fail(py, e));
        get_runtime().spawn(async move {
            let _ = awaited.await;
        });
        keep.push(forever.unbind());
        keep.push(soon.unbind());
    }
    // Kept alive to the end: the user still holds the futures.
    std::mem::forget(keep);
}

/// The child process's side of the L2 tests: does nothing unless `common::child` set a role.
#[test]
fn child() {
    let Some(scenario) = common::child::role() else {
        return;
    };
    match scenario.as_str() {
        // The loop ran on the main thread and returned; `main` returns right after.
        "main-thread" => Python::attach(|py| {
            let event_loop = new_loop(py);
            leave_work_pending(py, &event_loop);
            let sleep = py
                .import("asyncio")
                .unwrap()
                .call_method1("sleep", (0.001,))
                .unwrap();
            run(&event_loop, &sleep).unwrap_or_else(|e| fail(py, e));
        }),
        // As above, and the loop is closed before `main` returns.
        "main-thread-closed" => Python::attach(|py| {
            let event_loop = new_loop(py);
            leave_work_pending(py, &event_loop);
            let sleep = py
                .import("asyncio")
                .unwrap()
                .call_method1("sleep", (0.001,))
                .unwrap();
            run(&event_loop, &sleep).unwrap_or_else(|e| fail(py, e));
            event_loop.call_method0("close").unwrap();
        }),
        // The loop still runs in a worker thread when `main` returns.
        // The runtime is the user's own (handed over before any crossing), and the loop still
        // runs in a worker thread when `main` returns.
        "user-runtime" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            pyo3_async_bridge::tokio::init_with_runtime(Box::leak(Box::new(runtime)))
                .expect("no crossing ran before");
            worker_thread_scenario();
        }
        "worker-thread" => worker_thread_scenario(),
        other => panic!("unknown scenario {other}"),
    }
    println!("child done");
}

/// A loop left running in a worker thread, with work pending, when `main` returns.
fn worker_thread_scenario() {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        Python::attach(|py| {
            let event_loop = new_loop(py);
            leave_work_pending(py, &event_loop);
            let ready = ready_tx;
            let signal = pyo3::types::PyCFunction::new_closure(py, None, None, move |_, _| {
                let _ = ready.send(());
            })
            .unwrap();
            event_loop.call_method1("call_soon", (signal,)).unwrap();
            event_loop.call_method0("run_forever").unwrap();
        });
    });
    ready_rx
        .recv_timeout(DEADLINE)
        .expect("the worker loop never ran");
}

/// Runs [`child`] in a child process with `scenario` (three times); asserts each exits 0,
/// printed "child done" and wrote nothing on stderr, within the child's deadline.
fn run_child(scenario: &str) {
    for _ in 0..3 {
        let finished = common::child::run(scenario);
        finished.assert_ok_with("child done");
        assert!(
            finished.stderr.is_empty(),
            "{scenario}: stderr:\n{}",
            finished.stderr
        );
    }
}

#[test]
fn l2_rust_binary_exits_after_the_loop_returned() {
    run_child("main-thread");
}

#[test]
fn l2_rust_binary_exits_after_the_loop_closed() {
    run_child("main-thread-closed");
}

#[test]
fn l2_rust_binary_with_a_user_supplied_runtime_exits_with_the_loop_running() {
    run_child("user-runtime");
}

#[test]
fn l2_rust_binary_exits_with_the_loop_running_in_a_worker_thread() {
    run_child("worker-thread");
}

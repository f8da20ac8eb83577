//! Ctrl-C during `tokio::run` (rule R3), in child processes of this test binary: the parent
//! sends SIGINT (`kill -INT`) once the child printed "ready" from inside the running loop.
//! The child's interpreter is embedded (`Py_InitializeEx(0)`, no SIGINT handler of Python's).

mod common;

use common::{child, fail, load_module};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::tokio::{cancellation_token, into_future, run};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio, signal

EVENTS = []

async def announce_then_wait():
    print("ready", flush=True)
    try:
        await asyncio.sleep(3600)
    finally:
        EVENTS.append("python finally")

def sigint_handler():
    return signal.getsignal(signal.SIGINT)

def is_default(h):
    return h is signal.SIG_DFL or h is signal.default_int_handler

def custom(signum, frame):
    pass
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"interrupt_helpers")
}

static DROPPED: AtomicBool = AtomicBool::new(false);
static TOKEN: OnceLock<CancellationToken> = OnceLock::new();

struct Guard;
impl Drop for Guard {
    fn drop(&mut self) {
        DROPPED.store(true, Ordering::SeqCst);
    }
}

fn sigint_handler(py: Python<'_>) -> Bound<'_, PyAny> {
    helpers(py)
        .call_method0("sigint_handler")
        .unwrap_or_else(|e| fail(py, e))
}

/// Child: `run` with work that waits for ever; the parent's SIGINT must end it.
fn interrupted_run(py: Python<'_>) {
    let before = sigint_handler(py);
    let err = run(py, async {
        let _guard = Guard;
        let token = cancellation_token().expect("inside a crossing");
        TOKEN.set(token).expect("one run");
        let fut =
            Python::attach(|py| into_future(helpers(py).call_method0("announce_then_wait")?))?;
        let value = fut.await?;
        Python::attach(move |_py| drop(value)); // A1: released attached
        Ok(())
    })
    .expect_err("interrupted");
    assert!(err.is_instance_of::<PyKeyboardInterrupt>(py), "{err}");
    // The Rust work is gone and its token fired before `run` returned; the Python task it
    // awaited was cancelled (C4) and its `finally` ran.
    assert!(
        DROPPED.load(Ordering::SeqCst),
        "the Rust future was not dropped"
    );
    assert!(
        TOKEN.get().expect("token").is_cancelled(),
        "token not fired"
    );
    let events: Vec<String> = helpers(py).getattr("EVENTS").unwrap().extract().unwrap();
    assert_eq!(events, ["python finally"]);
    // The previous handler is back.
    assert!(sigint_handler(py).is(&before), "handler not restored");
}

/// Set by the child's main thread once `run` has returned; the stuck drop waits for it.
static RELEASE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// A Rust future whose drop does not end by itself: it blocks its runtime thread until the
/// child's main thread releases it (bounded, so a failing test cannot keep the child alive).
struct StuckDrop;
impl Drop for StuckDrop {
    fn drop(&mut self) {
        println!("dropping");
        let (lock, released) = &RELEASE;
        let guard = lock.lock().unwrap();
        drop(
            released
                .wait_timeout_while(guard, Duration::from_secs(50), |r| !*r)
                .unwrap(),
        );
        DROPPED.store(true, Ordering::SeqCst);
    }
}

/// Child: the first Ctrl-C cancels the main crossing, whose Rust drop then blocks; the second
/// one (sent once the drop began) must end `run` with `KeyboardInterrupt` at once, without
/// waiting for that drop.
fn stuck_run(py: Python<'_>) {
    let err = run(py, async {
        let _stuck = StuckDrop;
        println!("ready");
        std::future::pending::<()>().await;
        Ok(())
    })
    .expect_err("interrupted");
    assert!(err.is_instance_of::<PyKeyboardInterrupt>(py), "{err}");
    assert!(
        !DROPPED.load(Ordering::SeqCst),
        "run waited for the drop that the second Ctrl-C should have cut short"
    );
    let (lock, released) = &RELEASE;
    *lock.lock().unwrap() = true;
    released.notify_all();
}

/// Child: what the SIGINT handler is while `run`'s future runs, read from Rust.
fn handler_during_run(py: Python<'_>) -> Py<PyAny> {
    run(py, async {
        Ok(Python::attach(|py| sigint_handler(py).unbind()))
    })
    .unwrap_or_else(|e| fail(py, e))
}

/// An embedded interpreter started from a terminal finds SIGINT at `SIG_DFL`. A child of a
/// non-interactive shell's background job inherits `SIG_IGN` (which `run` rightly leaves
/// alone), so the child puts the terminal's disposition back first.
fn reset_to_sig_dfl(py: Python<'_>) {
    let signal = py.import("signal").unwrap();
    let sigint = signal.getattr("SIGINT").unwrap();
    signal
        .call_method1("signal", (&sigint, signal.getattr("SIG_DFL").unwrap()))
        .unwrap();
}

/// The roles of the child processes.
#[test]
fn child() {
    let Some(role) = child::role() else { return };
    // The first attach makes this thread Python's main thread.
    Python::attach(|py| match role.as_str() {
        "embedded" => {
            reset_to_sig_dfl(py);
            interrupted_run(py);
        }
        "default_int_handler" => {
            // What `python` itself installs.
            let signal = py.import("signal").unwrap();
            let default = signal.getattr("default_int_handler").unwrap();
            signal
                .call_method1("signal", (signal.getattr("SIGINT").unwrap(), &default))
                .unwrap();
            interrupted_run(py);
        }
        "second_ctrl_c" => {
            reset_to_sig_dfl(py);
            stuck_run(py);
        }
        "installs_only_where_it_may" => {
            reset_to_sig_dfl(py);
            let is_default = |h: &Bound<'_, PyAny>| -> bool {
                helpers(py)
                    .call_method1("is_default", (h,))
                    .and_then(|b| b.is_truthy())
                    .unwrap()
            };
            // Main thread, SIG_DFL: installed during the run, restored after.
            let during = handler_during_run(py);
            assert!(
                !is_default(during.bind(py)),
                "not installed on the main thread"
            );
            assert!(is_default(&sigint_handler(py)));
            // Another thread: nothing installed.
            let during = py.detach(|| {
                std::thread::spawn(|| Python::attach(handler_during_run))
                    .join()
                    .expect("thread")
            });
            assert!(is_default(during.bind(py)), "installed off the main thread");
            // A handler of the user's is left alone.
            let signal = py.import("signal").unwrap();
            let custom = helpers(py).getattr("custom").unwrap();
            signal
                .call_method1("signal", (signal.getattr("SIGINT").unwrap(), &custom))
                .unwrap();
            let during = handler_during_run(py);
            assert!(during.bind(py).is(&custom), "replaced the user's handler");
            assert!(sigint_handler(py).is(&custom));
        }
        other => panic!("unknown child role {other:?}"),
    });
    println!("child ok");
}

fn interrupt_child(role: &str) {
    let running = child::spawn(role).wait_for_line("ready");
    running.interrupt();
    running.finish().assert_ok_with("child ok");
}

#[test]
fn r3_ctrl_c_in_an_embedded_interpreter_cancels_run_and_raises_keyboard_interrupt() {
    interrupt_child("embedded");
}

#[test]
fn r3_ctrl_c_with_pythons_default_handler_cancels_run_and_raises_keyboard_interrupt() {
    interrupt_child("default_int_handler");
}

#[test]
fn r3_a_second_ctrl_c_ends_run_while_the_rust_drop_is_stuck() {
    let running = child::spawn("second_ctrl_c").wait_for_line("ready");
    running.interrupt();
    let dropping = running.wait_for_line("dropping");
    dropping.interrupt();
    dropping.finish().assert_ok_with("child ok");
}

#[test]
fn r3_handler_installed_only_on_the_main_thread_over_a_default_one() {
    child::run("installs_only_where_it_may").assert_ok_with("child ok");
}

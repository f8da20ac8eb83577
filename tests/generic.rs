//! The `generic` module: every crossing on a runtime that is not tokio, here `Mini`, a small
//! executor written for these tests (`generic/executor.rs`), and on `TokioRuntime` through the
//! same traits. The crossings every runtime must carry are in `generic/suite.rs`: values, errors
//! and panics cross (C2); contextvars reach Python and stay apart between concurrent crossings
//! (C1, C8); Python cancelling drops the Rust future on the executor, inside its scope (C3);
//! dropping a `PyFuture` cancels the Python task (C4); `run` and `run_until_complete` (R2).
//! Here: those on `Mini`, and `!Send` futures on the executor's local thread (R6).

mod common;
#[path = "generic/executor.rs"]
mod executor;
#[path = "generic/suite.rs"]
mod suite;

use common::{locals_for, run_bounded, with_loop};
use executor::{LocalThread, Mini, LOCAL, POLLS, WORKER};
use pyo3::prelude::*;
use pyo3_async_bridge::generic::{self, ContextExt};
use pyo3_async_bridge::tokio::TokioRuntime;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use suite::thread_name;

#[test]
fn g_c2_values_errors_and_panics_cross_on_the_executor() {
    let polls = POLLS.load(Ordering::Relaxed);
    suite::c2_values_errors_and_panics_cross::<Mini>(WORKER);
    assert!(
        POLLS.load(Ordering::Relaxed) >= polls + 3,
        "the crossings ran on Mini"
    );
}

#[test]
fn g_c1_c8_contextvars_reach_python_and_stay_apart() {
    suite::c1_c8_contextvars_reach_python_and_stay_apart::<Mini>(WORKER);
}

#[test]
fn g_c3_python_cancel_drops_the_rust_future_on_the_executor_inside_its_scope() {
    suite::c3_python_cancel_drops_the_rust_future_inside_its_scope::<Mini>(WORKER);
}

#[test]
fn g_c4_dropping_the_py_future_cancels_the_python_task() {
    suite::c4_dropping_the_py_future_cancels_the_python_task::<Mini>();
}

#[test]
fn g_r2_run_and_run_until_complete() {
    suite::r2_run_and_run_until_complete::<Mini>();
}

#[test]
fn g_r2_run_inside_a_running_loop_is_refused() {
    suite::r2_run_inside_a_running_loop_is_refused::<Mini>();
}

#[test]
fn g_r6_local_futures_run_and_convert_on_the_local_thread() {
    let mut local = LocalThread::start();
    let got: (i64, String) = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let (tx, rx) = mpsc::channel();
        local.send(move || {
            let value = Rc::new(9_i64); // !Send
            let made = Python::attach(|py| {
                generic::local_future_into_py_with_locals::<Mini, _, _>(py, locals, async move {
                    Ok(LocalPair(value))
                })
                .map(Bound::unbind)
            });
            let _ = tx.send(made);
        });
        let made = common::wait_detached(py, rx, "the local thread made the crossing")?;
        run_bounded(event_loop, made.bind(py))?.extract()
    });
    local.stop();
    assert_eq!(got, (9, LOCAL.to_owned()));
}

/// A `!Send` value converted to `(value, converting thread's name)`.
struct LocalPair(Rc<i64>);

impl<'py> IntoPyObject<'py> for LocalPair {
    type Target = pyo3::types::PyTuple;
    type Output = Bound<'py, pyo3::types::PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        (*self.0, thread_name()).into_pyobject(py)
    }
}

#[test]
fn g_r6_c7_a_local_pool_dropped_with_the_crossing_pending_fails_it() {
    let mut local = LocalThread::start();
    let err: String = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let (tx, rx) = mpsc::channel();
        local.send(move || {
            let made = Python::attach(|py| {
                generic::local_future_into_py_with_locals::<Mini, _, ()>(py, locals, async {
                    std::future::pending::<()>().await;
                    Ok(())
                })
                .map(Bound::unbind)
            });
            let _ = tx.send(made);
        });
        let made = common::wait_detached(py, rx, "the local thread made the crossing")?;
        py.detach(|| local.stop());
        let e = run_bounded(event_loop, made.bind(py)).unwrap_err();
        Ok(e.to_string())
    });
    assert!(err.starts_with("RuntimeError"), "{err}");
}

#[test]
fn g_tokio_runtime_implements_the_traits() {
    let got: (i64, bool) = with_loop(|py, event_loop| {
        let fut = generic::future_into_py_with_locals::<TokioRuntime, _, _>(
            py,
            locals_for(event_loop)?,
            async { Ok((3, TokioRuntime::get_task_locals().is_some())) },
        )?;
        run_bounded(event_loop, &fut)?.extract()
    });
    assert_eq!(got, (3, true));
}

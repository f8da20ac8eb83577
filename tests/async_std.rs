//! The `async_std` module (R8): the crossings every runtime carries (`generic/suite.rs`: C1–C4,
//! C8, R2) on `AsyncStdRuntime`, the module's own functions, its scope (C1: set while the future
//! is polled and dropped, apart between tasks of one thread), and `!Send` futures on a thread
//! that drives async-std's local executor (R6).
//!
//! Also built without tokio: `cargo test --no-default-features --features async-std-runtime
//! --test async_std`.

mod common;
#[path = "generic/suite.rs"]
mod suite;

use ::async_std::task;
use common::{fail, locals_for, run_bounded, with_loop};
use futures::channel::oneshot;
use futures::FutureExt;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3_async_bridge::async_std::{self as bridge, AsyncStdRuntime};
use pyo3_async_bridge::generic::ContextExt;
use pyo3_async_bridge::RustPanic;
use std::rc::Rc;
use std::sync::mpsc;
use suite::{thread_name, DropProbe};

/// The name of async-std's executor threads.
const EXECUTOR: &str = "async-std/runtime";

#[test]
fn r8_c2_values_errors_and_panics_cross() {
    suite::c2_values_errors_and_panics_cross::<AsyncStdRuntime>(EXECUTOR);
}

#[test]
fn r8_c1_c8_contextvars_reach_python_and_stay_apart() {
    suite::c1_c8_contextvars_reach_python_and_stay_apart::<AsyncStdRuntime>(EXECUTOR);
    // A1: async-std's executor threads count as runtime threads; the bridge never attached on
    // one (the test's own `Python::attach` calls are not the bridge's).
    let counts = pyo3_async_bridge::debug::attach_counts();
    assert_eq!(counts.runtime_threads, 0, "{counts:?}");
}

#[test]
fn r8_c3_python_cancel_drops_the_rust_future_on_an_executor_thread_inside_its_scope() {
    suite::c3_python_cancel_drops_the_rust_future_inside_its_scope::<AsyncStdRuntime>(EXECUTOR);
}

#[test]
fn r8_c4_dropping_the_py_future_cancels_the_python_task() {
    suite::c4_dropping_the_py_future_cancels_the_python_task::<AsyncStdRuntime>();
}

#[test]
fn r8_r2_run_and_run_until_complete() {
    suite::r2_run_and_run_until_complete::<AsyncStdRuntime>();
}

#[test]
fn r8_r2_run_inside_a_running_loop_is_refused() {
    suite::r2_run_inside_a_running_loop_is_refused::<AsyncStdRuntime>();
}

#[test]
fn r8_module_functions_cross_both_ways() {
    Python::attach(|py| {
        // run: the main future awaits Python, and a Python task awaits a Rust future made with
        // the current locals (future_into_py inside a crossing).
        let (slept, nested) = bridge::run(py, async {
            let (sleep, rust) = Python::attach(|py| -> PyResult<_> {
                let same_loop = bridge::get_current_loop(py)?
                    .is(bridge::get_current_locals(py)?.event_loop(py));
                assert!(same_loop, "the crossing's locals hold its loop");
                let sleep = py.import("asyncio")?.call_method1("sleep", (0, "slept"))?;
                let rust = bridge::future_into_py(py, async {
                    task::yield_now().await;
                    Ok(thread_name())
                })?;
                Ok((bridge::into_future(sleep)?, bridge::into_future(rust)?))
            })?;
            let (slept, nested) = (sleep.await?, rust.await?);
            Python::attach(move |py| Ok((slept.extract(py)?, nested.extract(py)?)))
        })
        .unwrap_or_else(|e| fail(py, e));
        let (slept, nested): (String, String) = (slept, nested);
        assert_eq!((slept.as_str(), nested.as_str()), ("slept", EXECUTOR));

        let event_loop = common::new_loop(py);
        let e = bridge::run_until_complete::<_, ()>(event_loop.clone(), async {
            Err(PyValueError::new_err("nope"))
        })
        .unwrap_err();
        assert!(e.is_instance_of::<PyValueError>(py), "{e}");
        let problems = common::close_loop(&event_loop);
        assert!(problems.is_empty(), "{problems:#?}");
    });
}

#[test]
fn r8_c9_outside_any_crossing_there_is_no_loop() {
    Python::attach(|py| {
        assert!(AsyncStdRuntime::get_task_locals().is_none());
        let e = bridge::future_into_py(py, async { Ok(()) }).unwrap_err();
        assert!(e.to_string().starts_with("RuntimeError"), "{e}");
        assert!(bridge::get_current_loop(py).is_err());
    });
}

#[test]
fn r8_c1_scope_holds_while_polled_and_dropped_and_stays_in_its_task() {
    let (tx, rx) = mpsc::channel();
    let seen: (bool, bool, bool) = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        Ok(py.detach(move || {
            task::block_on(async move {
                let (held_tx, held_rx) = oneshot::channel();
                let probe = DropProbe::<AsyncStdRuntime>::new(tx);
                let mut scoped = Box::pin(bridge::scope(locals, async move {
                    let _probe = probe;
                    // A task spawned on this thread from inside the scope has a slot of its own.
                    let other =
                        task::spawn_local(async { AsyncStdRuntime::get_task_locals().is_some() });
                    let held = AsyncStdRuntime::get_task_locals().is_some();
                    let _ = held_tx.send((held, other));
                    std::future::pending::<()>().await;
                }));
                assert!(futures::poll!(scoped.as_mut()).is_pending());
                let outside = AsyncStdRuntime::get_task_locals().is_some();
                let (held, other) = held_rx.await.expect("the scoped future ran");
                let other = other.await;
                drop(scoped);
                (held, outside, other)
            })
        }))
    });
    assert_eq!(
        seen,
        (true, false, false),
        "(inside the scope, after its poll, in another task)"
    );
    let (_, in_scope) = rx
        .recv_timeout(common::SIGNAL_TIMEOUT)
        .expect("the scoped future was dropped");
    assert!(in_scope, "dropped outside its scope");
}

#[test]
fn r8_r6_a_future_holding_an_rc_runs_on_the_thread_that_drives_it() {
    let got: (String, String, bool) = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let (made_tx, made_rx) = mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let local = std::thread::Builder::new()
            .name("as-local".into())
            .spawn(move || {
                // This thread drives async-std's local executor while `block_on` runs: until
                // the test has the crossing's value (`done_rx`).
                task::block_on(async move {
                    let made = Python::attach(|py| {
                        bridge::local_future_into_py_with_locals(py, locals, async {
                            let name = Rc::new(thread_name()); // !Send, held across an await
                            task::yield_now().await;
                            let in_scope = AsyncStdRuntime::get_task_locals().is_some();
                            Ok(((*name).clone(), thread_name(), in_scope))
                        })
                        .map(Bound::unbind)
                    });
                    // On failure the error (Python references) goes back attached (no-pool).
                    if let Err(mpsc::SendError(made)) = made_tx.send(made) {
                        Python::attach(move |_| drop(made));
                    }
                    let _ = done_rx.await;
                })
            })
            .expect("spawn the local thread");
        let made = common::wait_detached(py, made_rx, "the local thread made the crossing")?;
        let got = run_bounded(event_loop, made.bind(py))?.extract();
        let _ = done_tx.send(());
        py.detach(|| local.join()).expect("the local thread");
        got
    });
    assert_eq!(got, ("as-local".into(), "as-local".into(), true));
}

#[test]
fn r8_c2_a_panic_in_run_is_a_rust_panic() {
    let (is_panic, err) = Python::attach(|py| {
        let e = bridge::run::<_, ()>(py, async { panic!("boom on async-std") }).unwrap_err();
        (e.is_instance_of::<RustPanic>(py), e.to_string())
    });
    assert!(is_panic && err.contains("boom on async-std"), "{err}");
}

#[test]
fn r8_c1_a_panic_inside_a_nested_scope_restores_the_outer_locals() {
    let same: bool = with_loop(|py, event_loop| {
        let outer = locals_for(event_loop)?;
        let other_loop = common::new_loop(py);
        let inner = locals_for(&other_loop)?;
        let expected = event_loop.clone().unbind();
        let same = py.detach(move || {
            task::block_on(bridge::scope(outer, async move {
                let nested = bridge::scope(inner, async { panic!("inside the inner scope") });
                let caught = std::panic::AssertUnwindSafe(nested).catch_unwind().await;
                assert!(caught.is_err());
                let now = AsyncStdRuntime::get_task_locals().expect("the outer scope's locals");
                Python::attach(move |py| now.event_loop(py).is(expected.bind(py)))
            }))
        });
        let problems = common::close_loop(&other_loop);
        assert!(problems.is_empty(), "{problems:#?}");
        Ok(same)
    });
    assert!(
        same,
        "after a caught panic, the inner scope's locals were still current"
    );
}

#[test]
fn r8_r6_a_local_crossing_outside_any_async_std_task_is_a_runtime_error() {
    let err: String = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let e = bridge::local_future_into_py_with_locals(py, locals, async { Ok(()) })
            .map(drop)
            .unwrap_err();
        assert!(e.is_instance_of::<PyRuntimeError>(py));
        Ok(e.to_string())
    });
    assert!(
        err.contains("must be called inside an async-std task"),
        "{err}"
    );
}

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
use executor::{LocalThread, Mini, LOCAL, WORKER};
use pyo3::prelude::*;
use pyo3_async_bridge::debug::attach_counts;
use pyo3_async_bridge::generic::{self, ContextExt, LocalContextExt, SpawnLocalExt};
use pyo3_async_bridge::tokio::{get_runtime, TokioRuntime};
use std::rc::Rc;
use std::sync::mpsc;
use suite::thread_name;

#[test]
fn r7_c2_values_errors_and_panics_cross_on_the_executor() {
    suite::c2_values_errors_and_panics_cross::<Mini>(WORKER);
}

#[test]
fn r7_c1_c8_contextvars_reach_python_and_stay_apart() {
    suite::c1_c8_contextvars_reach_python_and_stay_apart::<Mini>(WORKER);
    // A1: Mini's workers are marked as runtime threads (executor.rs); the bridge never
    // attached on one (the test's own `Python::attach` calls are not the bridge's).
    assert_eq!(attach_counts().runtime_threads, 0, "{:?}", attach_counts());
}

#[test]
fn r7_c1_current_loop_and_locals_inside_a_crossing_are_its_own() {
    let same: (bool, bool) = with_loop(|py, event_loop| {
        let expected = event_loop.clone().unbind();
        let fut = generic::future_into_py_with_locals::<Mini, _, _>(
            py,
            locals_for(event_loop)?,
            async move {
                Python::attach(move |py| {
                    let current = generic::get_current_loop::<Mini>(py)?;
                    let locals = generic::get_current_locals::<Mini>(py)?;
                    let expected = expected.bind(py);
                    Ok((current.is(expected), locals.event_loop(py).is(expected)))
                })
            },
        )?;
        run_bounded(event_loop, &fut)?.extract()
    });
    assert_eq!(same, (true, true));
}

#[test]
fn r7_c3_python_cancel_drops_the_rust_future_on_the_executor_inside_its_scope() {
    suite::c3_python_cancel_drops_the_rust_future_inside_its_scope::<Mini>(WORKER);
}

#[test]
fn r7_c4_dropping_the_py_future_cancels_the_python_task() {
    suite::c4_dropping_the_py_future_cancels_the_python_task::<Mini>();
}

#[test]
fn r7_r2_run_and_run_until_complete() {
    suite::r2_run_and_run_until_complete::<Mini>();
}

#[test]
fn r7_r2_run_inside_a_running_loop_is_refused() {
    suite::r2_run_inside_a_running_loop_is_refused::<Mini>();
}

#[test]
fn r7_r6_local_futures_run_and_convert_on_the_local_thread() {
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

#[test]
fn r7_r6_local_future_into_py_takes_the_local_scope() {
    let mut local = LocalThread::start();
    let got: (i64, String) = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let (tx, rx) = mpsc::channel();
        local.send(move || {
            // A local task in `locals`' scope makes the crossing, as a `!Send` caller would.
            drop(Mini::spawn_local(Mini::scope_local(locals, async move {
                let value = Rc::new(4_i64);
                let made = Python::attach(|py| {
                    generic::local_future_into_py::<Mini, _, _>(
                        py,
                        async move { Ok(LocalPair(value)) },
                    )
                    .map(Bound::unbind)
                });
                let _ = tx.send(made);
            })));
        });
        let made = common::wait_detached(py, rx, "the local task made the crossing")?;
        run_bounded(event_loop, made.bind(py))?.extract()
    });
    local.stop();
    assert_eq!(got, (4, LOCAL.to_owned()));
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
fn r7_r6_c7_a_local_pool_dropped_with_the_crossing_pending_fails_it() {
    let mut local = LocalThread::start();
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let err: String = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let (tx, rx) = mpsc::channel();
        local.send(move || {
            let probe = ScopeProbe(Some(dropped_tx));
            let made = Python::attach(|py| {
                generic::local_future_into_py_with_locals::<Mini, _, ()>(py, locals, async {
                    let _probe = probe;
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
    // Dropped by the pool, outside any poll: `Scoped`'s drop still gave it its locals (C3).
    let (thread, in_scope) = dropped_rx
        .recv_timeout(common::SIGNAL_TIMEOUT)
        .expect("the pending future was dropped");
    assert_eq!((thread.as_str(), in_scope), (LOCAL, true));
}

/// Reports, when dropped: the thread, and whether Mini's task locals were set.
struct ScopeProbe(Option<mpsc::Sender<(String, bool)>>);

impl Drop for ScopeProbe {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send((thread_name(), Mini::get_task_locals().is_some()));
        }
    }
}

#[test]
fn r7_tokio_runtime_implements_the_traits() {
    let got: ((i64, bool, String), (i64, String)) = with_loop(|py, event_loop| {
        let fut = generic::future_into_py_with_locals::<TokioRuntime, _, _>(
            py,
            locals_for(event_loop)?,
            async { Ok((3, TokioRuntime::get_task_locals().is_some(), thread_name())) },
        )?;
        let sent = run_bounded(event_loop, &fut)?.extract()?;
        // SpawnLocalExt and LocalContextExt: a `!Send` crossing inside a LocalSet.
        let locals = locals_for(event_loop)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(LOCAL.into())
            .spawn(move || {
                let local_set = tokio::task::LocalSet::new();
                let made = local_set.block_on(get_runtime(), async move {
                    let value = Rc::new(5_i64);
                    Python::attach(|py| {
                        generic::local_future_into_py_with_locals::<TokioRuntime, _, _>(
                            py,
                            locals,
                            async move { Ok(LocalPair(value)) },
                        )
                        .map(Bound::unbind)
                    })
                });
                let _ = tx.send(made);
                // Drives the local task to its end before the LocalSet goes.
                local_set.block_on(get_runtime(), tokio::task::yield_now());
                get_runtime().block_on(local_set);
            })
            .expect("spawn the LocalSet thread");
        let made = common::wait_detached(py, rx, "the LocalSet thread made the crossing")?;
        let local = run_bounded(event_loop, made.bind(py))?.extract()?;
        Ok((sent, local))
    });
    assert_eq!(got.0, (3, true, common::WORKER_THREAD.to_owned()));
    assert_eq!(got.1, (5, LOCAL.to_owned()));
}

#[test]
fn r7_a_runtime_that_panics_in_spawn_leaves_no_stray_future() {
    // tokio's spawn_local panics outside a LocalSet: the panic reaches the caller, and no
    // crossing was made whose failure would go unobserved ("Future exception was never
    // retrieved" fails `with_loop`).
    with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            generic::local_future_into_py_with_locals::<TokioRuntime, _, ()>(py, locals, async {
                Ok(())
            })
            .map(drop)
        }));
        std::panic::set_hook(hook);
        assert!(
            made.is_err(),
            "spawn_local outside a LocalSet did not panic"
        );
        let none = py.import("asyncio")?.call_method1("sleep", (0,))?;
        run_bounded(event_loop, &none)?;
        Ok(())
    });
}

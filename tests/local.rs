//! Rule R6: `!Send` futures on a tokio `LocalSet` (`tokio::local_future_into_py`,
//! `local_future_into_py_with_locals`, `scope_local`).
//!
//! The loop runs on the test thread; a `LocalSet` runs on a thread of its own ("local-set"),
//! driven by `LocalSet::block_on` on the bridge's runtime, where each test makes its local
//! crossings. Values (a `!Send` one converted on the `LocalSet`'s thread), errors and panics
//! cross (C2); Python cancelling drops the `!Send` future on the `LocalSet`'s thread, inside
//! the crossing's scope (C3); the locals are visible inside (C1); a `LocalSet` dropped with
//! the crossing pending fails it (C7); outside a `LocalSet` the calls raise `RuntimeError`,
//! never panic.

mod common;

use common::child;
use common::{load_module, locals_for, run_bounded, wait_detached, with_loop, Drops};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyTuple};
use pyo3_async_bridge::tokio::{
    cancellation_token, get_current_locals, get_current_loop, get_runtime, local_future_into_py,
    local_future_into_py_with_locals, scope_local,
};
use pyo3_async_bridge::RustPanic;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::ThreadId;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio

async def await_it(fut):
    return await fut

async def cancel_it(fut, msg):
    await asyncio.sleep(0)
    fut.cancel(msg)
    try:
        await fut
    except asyncio.CancelledError as e:
        return e.args
    raise AssertionError("the crossing was not cancelled")
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_local")
}

/// The name of the thread that drives the tests' `LocalSet`.
const LOCAL_THREAD: &str = "local-set";

type Job = Box<dyn FnOnce() + Send>;

/// A thread driving a tokio `LocalSet` (`LocalSet::block_on` on the bridge's runtime) that runs
/// jobs inside it; stopping it drops the `LocalSet` with whatever tasks it still holds.
struct LocalSetThread {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    id: ThreadId,
}

impl LocalSetThread {
    fn start() -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(LOCAL_THREAD.into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(get_runtime(), async move {
                    while let Some(job) = rx.recv().await {
                        job();
                    }
                });
            })
            .expect("spawn the LocalSet thread");
        let id = thread.thread().id();
        LocalSetThread {
            jobs: Some(tx),
            thread: Some(thread),
            id,
        }
    }

    /// Runs `f` inside the `LocalSet` (on its thread) and returns what it returned.
    fn call<R: Send + 'static>(&self, py: Python<'_>, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .as_ref()
            .expect("the LocalSet thread runs")
            .send(job)
            .unwrap_or_else(|_| panic!("the LocalSet thread is gone"));
        wait_detached(py, rx, "the LocalSet thread never ran the job")
    }

    /// Makes a local crossing on `event_loop` inside the `LocalSet`; `make` builds the `!Send`
    /// future there.
    fn crossing<'py, F, Fut, T>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        make: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = PyResult<T>> + 'static,
        T: for<'a> IntoPyObject<'a> + 'static,
    {
        let py = event_loop.py();
        let locals = locals_for(event_loop)?;
        self.call(py, move || {
            let fut = make();
            Python::attach(|py| {
                local_future_into_py_with_locals(py, locals, fut).map(Bound::unbind)
            })
        })
        .map(|f| f.into_bound(py))
    }

    /// Drops the `LocalSet` (and its pending tasks, on its thread) and joins the thread.
    fn stop(&mut self, py: Python<'_>) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            py.detach(|| thread.join())
                .expect("the LocalSet thread panicked");
        }
    }
}

impl Drop for LocalSetThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            Python::attach(|py| self.stop(py));
        }
    }
}

/// A `!Send` result: converted (to `(value, converting thread's name)`) where it was made.
struct LocalInt(Rc<i64>);

impl<'py> IntoPyObject<'py> for LocalInt {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let thread = std::thread::current().name().unwrap_or_default().to_owned();
        (*self.0, thread).into_pyobject(py)
    }
}

#[test]
fn r6_values_errors_and_panics_cross() {
    with_loop(|py, event_loop| {
        let local = LocalSetThread::start();

        // A !Send future (an Rc held across an await) with a !Send value.
        let fut = local.crossing(event_loop, || {
            let rc = Rc::new(41);
            async move {
                tokio::task::yield_now().await;
                Ok(LocalInt(Rc::new(*rc + 1)))
            }
        })?;
        let (value, thread): (i64, String) = run_bounded(event_loop, &fut)?.extract()?;
        assert_eq!(value, 42);
        assert_eq!(thread, LOCAL_THREAD, "converted on the LocalSet's thread");

        // Ok(()) arrives as None.
        let fut = local.crossing(event_loop, || async { Ok(()) })?;
        assert!(run_bounded(event_loop, &fut)?.is_none());

        // An error arrives as the same exception object.
        let (err_tx, err_rx) = mpsc::channel::<usize>();
        let fut = local.crossing(event_loop, move || {
            let rc = Rc::new(());
            async move {
                tokio::task::yield_now().await;
                drop(rc);
                let err = Python::attach(|py| {
                    let err = PyValueError::new_err("local boom");
                    let _ = err_tx.send(err.value(py).as_ptr() as usize);
                    err
                });
                Err::<(), _>(err)
            }
        })?;
        let err = run_bounded(event_loop, &fut).expect_err("the error crossed as a value");
        assert!(err.is_instance_of::<PyValueError>(py), "{err}");
        assert_eq!(err.value(py).to_string(), "local boom");
        let sent = wait_detached(py, err_rx, "the error was never made");
        assert_eq!(
            err.value(py).as_ptr() as usize,
            sent,
            "not the same exception object"
        );

        // A panic arrives as RustPanic with its message.
        let fut = local.crossing(event_loop, || {
            let rc = Rc::new(());
            async move {
                tokio::task::yield_now().await;
                let _rc = rc;
                boom()
            }
        })?;
        let err = run_bounded(event_loop, &fut).expect_err("the panic crossed as a value");
        assert!(err.is_instance_of::<RustPanic>(py), "{err}");
        assert!(err.to_string().contains("local panic"), "{err}");

        // The LocalSet and the loop keep working.
        let fut = local.crossing(event_loop, || async { Ok(7) })?;
        assert_eq!(run_bounded(event_loop, &fut)?.extract::<i64>()?, 7);
        Ok(())
    });
}

#[test]
fn r6_c3_python_cancel_drops_the_future_on_the_local_set_thread() {
    with_loop(|py, event_loop| {
        let local = LocalSetThread::start();
        let drops = Drops::new();
        let guard = drops.guard("local");
        let (tx, rx) = mpsc::channel();
        let fut = local.crossing(event_loop, move || {
            let rc = Rc::new(guard);
            async move {
                let _held = rc;
                let _ = tx.send(cancellation_token());
                std::future::pending::<PyResult<()>>().await
            }
        })?;
        let token = wait_detached(py, rx, "the local future never started")
            .expect("cancellation_token() is None inside a local crossing");
        assert!(!token.is_cancelled(), "the token fired before any cancel");

        let args = run_bounded(
            event_loop,
            &helpers(py).call_method1("cancel_it", (&fut, "stop local"))?,
        )?;
        assert_eq!(args.extract::<Vec<String>>()?, vec!["stop local"]);
        assert!(fut.call_method0("cancelled")?.is_truthy()?);

        drops.wait_for(py, 1, "the cancelled local future was never dropped");
        let report = drops.report("local");
        assert_eq!(
            report.thread, local.id,
            "{report:?}: not on the LocalSet's thread"
        );
        assert_eq!(report.token_fired, Some(true), "{report:?}");
        assert_eq!(report.reason.as_deref(), Some("stop local"), "{report:?}");
        assert!(token.is_cancelled(), "the token handed out did not fire");
        Ok(())
    });
}

#[test]
fn r6_c1_locals_are_visible_inside() {
    with_loop(|py, event_loop| {
        let local = LocalSetThread::start();
        let locals = locals_for(event_loop)?;
        let context = locals.context(py).unbind();
        let (tx, rx) = mpsc::channel();
        local.call(py, move || {
            let fut = async move {
                let _rc = Rc::new(());
                tokio::task::yield_now().await;
                Python::attach(|py| {
                    let current = get_current_locals(py)?;
                    Ok((
                        current.event_loop(py).unbind(),
                        current.context(py).unbind(),
                        get_current_loop(py)?.unbind(),
                    ))
                })
            };
            Python::attach(|py| {
                let _ =
                    tx.send(local_future_into_py_with_locals(py, locals, fut).map(Bound::unbind));
            });
        });
        let fut = wait_detached(py, rx, "no crossing")?.into_bound(py);
        let (seen_loop, seen_context, current_loop): (Py<PyAny>, Py<PyAny>, Py<PyAny>) =
            run_bounded(event_loop, &fut)?.extract()?;
        assert!(
            seen_loop.bind(py).is(event_loop),
            "get_current_locals' loop"
        );
        assert!(seen_context.bind(py).is(&context), "the crossing's context");
        assert!(current_loop.bind(py).is(event_loop), "get_current_loop");
        Ok(())
    });
}

#[test]
fn r6_scope_local_sets_the_locals_of_local_future_into_py() {
    with_loop(|py, event_loop| {
        let local = LocalSetThread::start();
        let locals = locals_for(event_loop)?;
        let (tx, rx) = mpsc::channel();
        local.call(py, move || {
            // `local_future_into_py` without locals, inside `scope_local`: no loop runs on the
            // LocalSet's thread, so the locals can only come from the scope.
            drop(tokio::task::spawn_local(scope_local(locals, async move {
                let rc = Rc::new(5);
                let made = Python::attach(|py| {
                    local_future_into_py(py, async move {
                        let in_scope = Python::attach(|py| get_current_loop(py).map(Bound::unbind));
                        Ok((*rc, in_scope?))
                    })
                    .map(Bound::unbind)
                });
                let _ = tx.send(made);
            })));
        });
        let fut = wait_detached(py, rx, "no crossing")?.into_bound(py);
        let (value, seen_loop): (i64, Py<PyAny>) = run_bounded(event_loop, &fut)?.extract()?;
        assert_eq!(value, 5);
        assert!(seen_loop.bind(py).is(event_loop), "the scope's loop inside");
        Ok(())
    });
}

#[test]
fn r6_c7_a_local_set_dropped_with_the_crossing_pending_fails_it() {
    with_loop(|py, event_loop| {
        let mut local = LocalSetThread::start();
        let drops = Drops::new();
        let guard = drops.guard("local");
        let (tx, rx) = mpsc::channel();
        let fut = local.crossing(event_loop, move || {
            let rc = Rc::new(guard);
            async move {
                let _held = rc;
                let _ = tx.send(());
                std::future::pending::<PyResult<()>>().await
            }
        })?;
        wait_detached(py, rx, "the local future never started");
        local.stop(py);
        let err = run_bounded(event_loop, &fut).expect_err("a dropped LocalSet delivered a value");
        assert!(err.is_instance_of::<PyRuntimeError>(py), "{err}");
        assert!(
            err.to_string().contains("dropped before it completed"),
            "{err}"
        );
        let report = drops.report("local");
        assert_eq!(
            report.thread, local.id,
            "{report:?}: not on the LocalSet's thread"
        );
        Ok(())
    });
}

/// The body of a future that panics.
fn boom() -> PyResult<()> {
    panic!("local panic")
}

/// Panics unless `made` is the bridge's `RuntimeError` about a missing `LocalSet`.
fn assert_no_local_set(py: Python<'_>, made: PyResult<Py<PyAny>>, what: &str) {
    let err = made.expect_err(what);
    assert!(err.is_instance_of::<PyRuntimeError>(py), "{what}: {err}");
    assert!(err.to_string().contains("LocalSet"), "{what}: {err}");
}

#[test]
fn r6_outside_a_local_set_is_a_runtime_error_not_a_panic() {
    with_loop(|py, event_loop| {
        // On a thread with no tokio context at all (a #[pyfunction] on the loop thread).
        let rc = Rc::new(1);
        let made =
            local_future_into_py_with_locals(py, locals_for(event_loop)?, async move { Ok(*rc) });
        assert_no_local_set(py, made.map(Bound::unbind), "no tokio context");
        // Checked before the loop is looked up: no loop runs here, yet the error is this one.
        let made = local_future_into_py(py, async { Ok(()) });
        assert_no_local_set(py, made.map(Bound::unbind), "no loop either");

        // Inside the runtime but outside a LocalSet: in `block_on` and in a spawned task.
        let locals = locals_for(event_loop)?;
        let made = py.detach(|| {
            get_runtime().block_on(async move {
                Python::attach(|py| {
                    local_future_into_py_with_locals(py, locals, async { Ok(()) })
                        .map(Bound::unbind)
                })
            })
        });
        assert_no_local_set(py, made, "block_on");
        let locals = locals_for(event_loop)?;
        let made = py.detach(|| {
            get_runtime()
                .block_on(get_runtime().spawn(async move {
                    Python::attach(|py| {
                        local_future_into_py_with_locals(py, locals, async { Ok(()) })
                            .map(Bound::unbind)
                    })
                }))
                .expect("the task panicked")
        });
        assert_no_local_set(py, made, "a runtime task");

        // Nothing was left behind: a crossing made afterwards on the same loop still works.
        let local = LocalSetThread::start();
        let fut = local.crossing(event_loop, || async { Ok(1) })?;
        assert_eq!(run_bounded(event_loop, &fut)?.extract::<i64>()?, 1);
        Ok(())
    });
}

/// The roles of the child processes.
#[test]
fn child() {
    let Some(role) = child::role() else { return };
    assert_eq!(role, "quiet_probe", "unknown child role");
    // The user's hook, set before the bridge's first LocalSet check: it must see every panic
    // but the check's own.
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    std::panic::set_hook(Box::new(|info| {
        SEEN.fetch_add(1, Ordering::SeqCst);
        eprintln!("user hook: {info}");
    }));
    Python::attach(|py| {
        let made = local_future_into_py(py, async { Ok(()) }).map(Bound::unbind);
        assert_no_local_set(py, made, "outside a LocalSet");
    });
    assert_eq!(
        SEEN.load(Ordering::SeqCst),
        0,
        "the LocalSet check reached the hook"
    );
    let later = std::panic::catch_unwind(|| panic!("a panic of the user's"));
    assert!(later.is_err());
    assert_eq!(
        SEEN.load(Ordering::SeqCst),
        1,
        "the user's hook lost a panic"
    );
    println!("child ok");
}

#[test]
fn r6_the_local_set_check_is_silent_and_keeps_the_users_panic_hook() {
    let finished = child::run("quiet_probe");
    finished.assert_ok_with("child ok");
    assert!(
        !finished.stderr.contains("spawn_local"),
        "the check printed tokio's panic: {finished:#?}"
    );
}

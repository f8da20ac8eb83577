//! The crossings every `generic` runtime must carry, written once against the traits and run
//! by `tests/generic.rs` (on its test executor) and `tests/async_std.rs` (on async-std): values,
//! errors and panics (C2), contextvars (C1, C8), Python cancelling (C3), dropping a `PyFuture`
//! (C4), `run` and `run_until_complete` (R2). Each takes the runtime and the name of the threads
//! its tasks run on.

use crate::common::{
    self, fail, gather, in_running_loop, load_module, locals_for, run_bounded, with_loop,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::generic::{self, ContextExt};
use pyo3_async_bridge::RustPanic;
use std::marker::PhantomData;
use std::sync::mpsc;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio, contextvars

VAR = contextvars.ContextVar("VAR", default="unset")
EVENTS = []

async def read_var():
    await asyncio.sleep(0)
    return VAR.get()

async def with_var(value, make):
    VAR.set(value)
    return await make()

SIGNALS = {}

def signal(name):
    return SIGNALS.setdefault(name, asyncio.Event())

async def forever(tag):
    signal(tag + " started").set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        EVENTS.append(f"{tag} cancelled")
        signal(tag + " cancelled").set()
        raise

async def wait_for_signal(name):
    await signal(name).wait()

async def cancel_soon(fut):
    await asyncio.sleep(0)
    fut.cancel("stop")
    try:
        await fut
    except asyncio.CancelledError as e:
        return e.args
    raise AssertionError("the crossing was not cancelled")
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

pub fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_generic")
}

pub fn thread_name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

/// C2: a value (made on `worker`), an error and a panic cross from `R` to Python.
pub fn c2_values_errors_and_panics_cross<R: ContextExt>(worker: &str) {
    let results: Vec<String> = with_loop(|py, event_loop| {
        let locals = locals_for(event_loop)?;
        let value = generic::future_into_py_with_locals::<R, _, _>(py, locals.clone(), async {
            Ok((7, thread_name()))
        })?;
        let error = generic::future_into_py_with_locals::<R, _, ()>(py, locals.clone(), async {
            Err(PyValueError::new_err("bad"))
        })?;
        let panic =
            generic::future_into_py_with_locals::<R, _, ()>(py, locals, async { panic!("boom") })?;
        let (v, thread): (i64, String) = run_bounded(event_loop, &value)?.extract()?;
        assert_eq!((v, thread.as_str()), (7, worker));
        let e = run_bounded(event_loop, &error).unwrap_err();
        assert!(e.is_instance_of::<PyValueError>(py), "{e}");
        let p = run_bounded(event_loop, &panic).unwrap_err();
        assert!(p.is_instance_of::<RustPanic>(py), "{p}");
        Ok(vec![e.to_string(), p.to_string()])
    });
    assert_eq!(results[0], "ValueError: bad");
    assert!(results[1].contains("boom"), "{}", results[1]);
}

/// C1, C8: 200 concurrent crossings on `R` (on `worker`), each seeing its own context and locals.
pub fn c1_c8_contextvars_reach_python_and_stay_apart<R: ContextExt>(worker: &str) {
    const N: usize = 200;
    let seen: Vec<(String, String, bool)> = with_loop(|py, event_loop| {
        let mut crossings = Vec::new();
        for i in 0..N {
            // Python sets VAR, then calls Rust (as a #[pyfunction] would), whose future awaits a
            // coroutine reading VAR: each crossing must see its own value.
            let make = pyo3::types::PyCFunction::new_closure(py, None, None, |args, _| {
                let py = args.py();
                generic::future_into_py::<R, _, _>(py, async {
                    let in_scope = R::get_task_locals().is_some();
                    let read = Python::attach(|py| {
                        let coro = helpers(py).call_method0("read_var")?;
                        generic::into_future::<R>(coro)
                    })?;
                    let obj = read.await?;
                    let value: String = Python::attach(move |py| obj.extract(py))?;
                    Ok((value, thread_name(), in_scope))
                })
                .map(Bound::unbind)
            })?;
            crossings.push(helpers(py).call_method1("with_var", (format!("v{i}"), make))?);
        }
        gather(event_loop, crossings)?
            .into_iter()
            .map(|r| r.extract())
            .collect()
    });
    for (i, (value, thread, in_scope)) in seen.iter().enumerate() {
        assert_eq!(value, &format!("v{i}"));
        assert_eq!(thread, worker);
        assert!(in_scope, "crossing {i}: no task locals inside the future");
    }
}

/// Reports, from the drop of the Rust future: thread, whether `R`'s task locals were set.
pub struct DropProbe<R: ContextExt>(Option<mpsc::Sender<(String, bool)>>, PhantomData<R>);

impl<R: ContextExt> DropProbe<R> {
    /// A probe reporting to `tx`.
    pub fn new(tx: mpsc::Sender<(String, bool)>) -> Self {
        DropProbe(Some(tx), PhantomData)
    }
}

impl<R: ContextExt> Drop for DropProbe<R> {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send((thread_name(), R::get_task_locals().is_some()));
        }
    }
}

/// C3: Python cancelling drops the Rust future on `worker`, inside its scope.
pub fn c3_python_cancel_drops_the_rust_future_inside_its_scope<R: ContextExt>(worker: &str) {
    let (tx, rx) = mpsc::channel();
    let args: Vec<String> = with_loop(|py, event_loop| {
        let probe = DropProbe::<R>::new(tx);
        let crossing = generic::future_into_py_with_locals::<R, _, ()>(
            py,
            locals_for(event_loop)?,
            async move {
                let _probe = probe;
                std::future::pending::<()>().await;
                Ok(())
            },
        )?;
        let cancelled = helpers(py).call_method1("cancel_soon", (crossing,))?;
        run_bounded(event_loop, &cancelled)?.extract()
    });
    assert_eq!(args, vec!["stop".to_owned()]);
    let (thread, in_scope) = rx
        .recv_timeout(common::SIGNAL_TIMEOUT)
        .expect("the Rust future was dropped");
    assert_eq!(thread, worker);
    assert!(in_scope, "dropped outside the crossing's scope");
}

/// C4: dropping a `PyFuture` on `R` cancels the Python task.
pub fn c4_dropping_the_py_future_cancels_the_python_task<R: ContextExt>() {
    let events: Vec<String> = with_loop(|py, event_loop| {
        let crossing =
            generic::future_into_py_with_locals::<R, _, ()>(py, locals_for(event_loop)?, async {
                let fut = Python::attach(|py| {
                    let coro = helpers(py).call_method1("forever", ("c4",))?;
                    generic::into_future::<R>(coro)
                })?;
                let mut fut = Box::pin(fut);
                assert!(futures::poll!(fut.as_mut()).is_pending());
                // Dropped once the Python task runs (before, C4 closes the coroutine instead).
                let started = Python::attach(|py| {
                    let coro = helpers(py).call_method1("wait_for_signal", ("c4 started",))?;
                    generic::into_future::<R>(coro)
                })?;
                let none = started.await?;
                Python::attach(move |_| drop((none, fut)));
                Ok(())
            })?;
        run_bounded(event_loop, &crossing)?;
        let cancelled = helpers(py).call_method1("wait_for_signal", ("c4 cancelled",))?;
        run_bounded(event_loop, &cancelled)?;
        helpers(py).getattr("EVENTS")?.extract()
    });
    assert!(events.contains(&"c4 cancelled".to_owned()), "{events:?}");
}

/// R2: `run` and `run_until_complete` on `R`.
pub fn r2_run_and_run_until_complete<R: ContextExt>() {
    Python::attach(|py| {
        let got = generic::run::<R, _, _>(py, async {
            let in_scope = R::get_task_locals().is_some();
            let fut = Python::attach(|py| {
                let sleep = py.import("asyncio")?.call_method1("sleep", (0, "done"))?;
                generic::into_future::<R>(sleep)
            })?;
            let value = fut.await?;
            let value: String = Python::attach(move |py| value.extract(py))?;
            Ok((value, in_scope))
        })
        .unwrap_or_else(|e| fail(py, e));
        assert_eq!(got, ("done".to_owned(), true));

        let event_loop = common::new_loop(py);
        let n = generic::run_until_complete::<R, _, _>(&event_loop, async { Ok(5) })
            .unwrap_or_else(|e| fail(py, e));
        assert_eq!(n, 5);
        let failed = generic::run_until_complete::<R, _, ()>(&event_loop, async {
            Err(PyValueError::new_err("nope"))
        })
        .unwrap_err();
        assert!(failed.is_instance_of::<PyValueError>(py), "{failed}");
        let problems = common::close_loop(&event_loop);
        assert!(problems.is_empty(), "{problems:#?}");
    });
}

/// R2: `run` inside a running loop is refused.
pub fn r2_run_inside_a_running_loop_is_refused<R: ContextExt>() {
    let err: String = with_loop(|_py, event_loop| {
        let refused = in_running_loop(event_loop, |py| {
            match generic::run::<R, _, ()>(py, async { Ok(()) }) {
                Ok(()) => Ok(py.None().into_bound(py)),
                Err(e) if e.is_instance_of::<PyRuntimeError>(py) => {
                    Ok(e.to_string().into_pyobject(py)?.into_any())
                }
                Err(e) => Err(e),
            }
        })?;
        refused.extract()
    });
    assert!(
        err.starts_with("RuntimeError")
            && err.contains("cannot be called while an asyncio event loop is running"),
        "{err}"
    );
}

//! `tokio::run` and `tokio::run_until_complete` (rule R2): values and errors come back, the loop
//! is cleaned up and closed like `asyncio.run` does, a running loop is refused before anything
//! starts, contextvars are copied, and the Rust future is dropped before the call returns.

mod common;

use common::{fail, load_module, new_loop, Drops};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::tokio::{get_current_loop, into_future, run, run_until_complete};
use pyo3_async_bridge::RustPanic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio, contextvars

VAR = contextvars.ContextVar("VAR", default="unset")
EVENTS = []

async def read_var(_tag):
    await asyncio.sleep(0)
    current = asyncio.get_event_loop_policy().get_event_loop()
    return VAR.get(), current is asyncio.get_running_loop()

async def linger(tag):
    """A task left behind on the loop: `run` must cancel it on the way out."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        EVENTS.append(f"{tag} cancelled")
        raise
    finally:
        EVENTS.append(f"{tag} finally")

async def agen(tag):
    try:
        yield 1
        yield 2
    finally:
        EVENTS.append(f"{tag} agen closed")

async def start_leftovers(tag):
    """Leaves a pending task, a suspended async generator and executor work behind."""
    loop = asyncio.get_running_loop()
    asyncio.ensure_future(linger(tag))
    gen = agen(tag)
    await gen.__anext__()
    EVENTS.append(gen)  # keeps the generator alive until the loop shuts generators down
    await loop.run_in_executor(None, lambda: None)
    await asyncio.sleep(0)

async def stop_then_forever(tag):
    asyncio.get_running_loop().stop()
    try:
        await asyncio.sleep(3600)
    finally:
        EVENTS.append(f"{tag} finally")

def events(tag):
    return [e for e in EVENTS if isinstance(e, str) and e.startswith(tag + " ")]
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"run_helpers")
}

fn events(py: Python<'_>, tag: &str) -> Vec<String> {
    helpers(py)
        .call_method1("events", (tag,))
        .and_then(|e| e.extract())
        .unwrap_or_else(|e| fail(py, e))
}

/// Awaits `helpers.<name>(*args)` from Rust, on the current loop.
async fn await_helper(name: &'static str, tag: &'static str) -> PyResult<Py<PyAny>> {
    let fut = Python::attach(|py| into_future(helpers(py).call_method1(name, (tag,))?))?;
    fut.await
}

/// Like [`await_helper`], for the effect: the result is released attached (A1).
async fn await_helper_done(name: &'static str, tag: &'static str) -> PyResult<()> {
    let value = await_helper(name, tag).await?;
    Python::attach(move |_py| drop(value));
    Ok(())
}

#[test]
fn r2_run_returns_the_value_of_any_send_type() {
    Python::attach(|py| {
        let v: Vec<String> = run(py, async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            Ok(vec!["a".to_owned(), "b".to_owned()])
        })
        .unwrap_or_else(|e| fail(py, e));
        assert_eq!(v, ["a", "b"]);
    });
}

#[test]
fn r2_run_returns_the_error_and_the_panic() {
    Python::attach(|py| {
        let err = run(py, async { Err::<(), _>(PyValueError::new_err("boom")) }).unwrap_err();
        assert!(err.is_instance_of::<PyValueError>(py), "{err}");
        assert!(err.to_string().contains("boom"));

        let err = run(py, async {
            panic!("main panicked");
            #[allow(unreachable_code)]
            Ok(())
        })
        .unwrap_err();
        assert!(err.is_instance_of::<RustPanic>(py), "{err}");
        assert!(err.to_string().contains("main panicked"), "{err}");
    });
}

#[test]
fn r2_run_awaits_python_on_its_own_loop_and_copies_the_context() {
    Python::attach(|py| {
        let var = helpers(py).getattr("VAR").unwrap();
        let token = var.call_method1("set", ("from the caller",)).unwrap();
        let seen = run(py, async {
            let value = await_helper("read_var", "-").await?;
            Ok(value)
        })
        .unwrap_or_else(|e| fail(py, e));
        var.call_method1("reset", (token,)).unwrap();
        let (value, current): (String, bool) = seen.extract(py).unwrap();
        assert_eq!(value, "from the caller");
        assert!(
            current,
            "the loop of run is the thread's current loop while it runs"
        );
        // Afterwards no loop is set for this thread (asyncio.run does the same).
        let policy = py
            .import("asyncio")
            .unwrap()
            .call_method0("get_event_loop_policy")
            .unwrap();
        let local = policy.getattr("_local").unwrap();
        assert!(local.getattr("_loop").unwrap().is_none());
    });
}

#[test]
fn r2_run_cleans_up_like_asyncio_run() {
    Python::attach(|py| {
        let loop_inside = run(py, async {
            await_helper_done("start_leftovers", "cleanup").await?;
            Python::attach(|py| get_current_loop(py).map(Bound::unbind))
        })
        .unwrap_or_else(|e| fail(py, e));
        let loop_inside = loop_inside.bind(py);
        assert!(loop_inside
            .call_method0("is_closed")
            .unwrap()
            .is_truthy()
            .unwrap());
        let seen = events(py, "cleanup");
        for expected in [
            "cleanup cancelled",
            "cleanup finally",
            "cleanup agen closed",
        ] {
            assert!(
                seen.iter().any(|e| e == expected),
                "{expected:?} missing: {seen:?}"
            );
        }
        // The default executor was shut down: its threads are gone and it takes no more work.
        let executor = loop_inside.getattr("_default_executor").unwrap();
        if !executor.is_none() {
            assert!(executor.getattr("_shutdown").unwrap().is_truthy().unwrap());
        }
    });
}

#[test]
fn r2_run_inside_a_running_loop_is_refused_before_anything_starts() {
    Python::attach(|py| {
        let event_loop = new_loop(py);
        let started = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&started);
        let nested = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _| {
            let flag = Arc::clone(&flag);
            let py = args.py();
            let err = run(py, async move {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            })
            .unwrap_err();
            let by_loop = run_until_complete(get_current_loop(py)?, async { Ok(()) }).unwrap_err();
            Ok::<_, PyErr>((
                err.value(py).clone().unbind(),
                by_loop.value(py).clone().unbind(),
            ))
        })
        .unwrap()
        .unbind();
        let errs = common::in_running_loop(&event_loop, move |py| nested.bind(py).call0())
            .unwrap_or_else(|e| fail(py, e));
        let (err, by_loop): (Bound<'_, PyAny>, Bound<'_, PyAny>) = errs.extract().unwrap();
        for e in [&err, &by_loop] {
            assert!(e.is_instance_of::<PyRuntimeError>(), "{e}");
            assert!(e.to_string().contains("running in this thread"), "{e}");
        }
        assert!(err.to_string().starts_with("run cannot"), "{err}");
        assert!(by_loop.to_string().starts_with("run_until_complete cannot"));
        assert!(!started.load(Ordering::SeqCst), "the future must not start");
        assert_eq!(common::close_loop(&event_loop), Vec::<String>::new());
    });
}

#[test]
fn r2_run_until_complete_leaves_the_loop_open_and_checks_it() {
    Python::attach(|py| {
        let event_loop = new_loop(py);
        for i in 0..3 {
            let v = run_until_complete(event_loop.clone(), async move { Ok(i * 2) })
                .unwrap_or_else(|e| fail(py, e));
            assert_eq!(v, i * 2);
        }
        assert_eq!(common::close_loop(&event_loop), Vec::<String>::new());
        let started = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&started);
        let err = run_until_complete(event_loop.clone(), async move {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap_err();
        assert!(err.is_instance_of::<PyRuntimeError>(py), "{err}");
        assert!(err.to_string().contains("is closed"), "{err}");
        let err = run_until_complete(42i32.into_pyobject(py).unwrap().into_any(), async {
            Ok(())
        })
        .unwrap_err();
        assert!(err.is_instance_of::<PyTypeError>(py), "{err}");
        assert!(!started.load(Ordering::SeqCst));
    });
}

#[test]
fn r2_a_loop_stopped_early_cancels_and_drops_the_future_before_returning() {
    Python::attach(|py| {
        let event_loop = new_loop(py);
        let drops = Drops::new();
        let guard = drops.guard("main");
        let err = run_until_complete(event_loop.clone(), async move {
            let _guard = guard;
            // A Python task stops the loop, then waits for ever.
            await_helper_done("stop_then_forever", "stopped").await?;
            Ok(())
        })
        .unwrap_err();
        assert!(err.is_instance_of::<PyRuntimeError>(py), "{err}");
        // Invariant 1: dropped before run_until_complete returned, and the Python task it
        // awaited was cancelled (its finally ran) while the loop still ran.
        assert_eq!(drops.count(), 1);
        assert_eq!(events(py, "stopped"), ["stopped finally"]);
        assert_eq!(common::close_loop(&event_loop), Vec::<String>::new());
    });
}

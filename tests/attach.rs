//! Architecture rule A1: the bridge itself never attaches to the interpreter on a tokio runtime
//! thread. Under load (10,000 mixed crossings: Python awaits Rust, Rust awaits Python, nested,
//! plain tasks with explicit locals, cancellations) the attach counter for runtime threads
//! stays at 0, with either wakeup mode of the delivery queue.
//!
//! The tests' own `Python::attach` calls on runtime threads are the user's and are not counted.

mod common;

use common::{crossing, load_module, locals_for, run, with_loop};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyModule, PyTuple};
use pyo3_async_bridge::debug::{attach_counts, queue_stats};
use pyo3_async_bridge::into_future_with_locals;
use pyo3_async_bridge::tokio::{future_into_py, get_current_locals, get_runtime, into_future};

const HELPERS: &std::ffi::CStr = cr#"
import asyncio, threading, weakref

RELEASED = []

class Value:
    pass

async def make_value():
    """Returns at once an object that records the thread on which it is released."""
    value = Value()
    weakref.finalize(value, lambda: RELEASED.append(threading.get_ident()))
    return value

async def a_few_steps():
    for _ in range(3):
        await asyncio.sleep(0)

async def double(i):
    await asyncio.sleep(0)
    return 2 * i

async def nested(i, rust_double):
    """Python awaits Rust, which awaits Python again."""
    return await rust_double(i) + 1
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_attach")
}

/// The environment variable that forces the `call_soon_threadsafe` wakeup.
const WAKEUP_ENV: &str = "PYO3_ASYNC_BRIDGE_WAKEUP";

/// Crossings per load run.
const LOAD: i64 = 10_000;

/// Loop thread: a crossing that awaits `double(i)`.
#[pyfunction]
fn rust_double(py: Python<'_>, i: i64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let fut = Python::attach(|py| into_future(helpers(py).getattr("double")?.call1((i,))?))?;
        fut.await
    })
}

/// What item `i` of the load resolves to; `None` for a cancelled one.
fn expected(i: i64) -> Option<i64> {
    match i % 5 {
        0 => Some(i),
        1 => Some(2 * i),
        2 => Some(2 * i + 1),
        3 => Some(2 * i),
        _ => None,
    }
}

/// Runs [`LOAD`] mixed crossings on one loop and checks every outcome.
fn load(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let rust_double = pyo3::wrap_pyfunction!(rust_double, py)?;
    let mut futs = Vec::with_capacity(LOAD as usize);
    let mut to_cancel = Vec::new();
    for i in 0..LOAD {
        let fut = match i % 5 {
            // Python awaits Rust.
            0 => crossing(event_loop, async move {
                tokio::task::yield_now().await;
                Ok(i)
            })?,
            // Rust awaits Python inside a crossing.
            1 => crossing(event_loop, async move {
                let fut =
                    Python::attach(|py| into_future(helpers(py).getattr("double")?.call1((i,))?))?;
                fut.await
            })?,
            // Rust awaits Python, which awaits Rust, which awaits Python.
            2 => {
                let rust_double = common::Attached::new(rust_double.clone().unbind());
                crossing(event_loop, async move {
                    let fut = Python::attach(|py| {
                        let rust_double = rust_double.take().into_bound(py);
                        into_future(helpers(py).getattr("nested")?.call1((i, rust_double))?)
                    })?;
                    fut.await
                })?
            }
            // A plain runtime task (no scope) with explicit locals, joined by a crossing.
            3 => {
                let locals = locals_for(event_loop)?;
                let task = get_runtime().spawn(async move {
                    let fut = Python::attach(|py| {
                        into_future_with_locals(
                            &locals,
                            helpers(py).getattr("double")?.call1((i,))?,
                        )
                    })?;
                    fut.await
                });
                crossing(
                    event_loop,
                    async move { task.await.expect("the task panicked") },
                )?
            }
            // Cancelled by Python: the Rust future is dropped on a runtime thread.
            _ => {
                let fut = crossing(event_loop, async {
                    std::future::pending::<()>().await;
                    Ok(())
                })?;
                to_cancel.push(fut.clone());
                fut
            }
        };
        futs.push(fut);
    }
    for fut in &to_cancel {
        fut.call_method0("cancel")?;
    }
    let kwargs = [("return_exceptions", true)].into_py_dict(py)?;
    let gathered =
        py.import("asyncio")?
            .call_method("gather", PyTuple::new(py, futs)?, Some(&kwargs))?;
    let results: Vec<Bound<'_, PyAny>> = run(event_loop, &gathered)?.extract()?;
    assert_eq!(results.len(), LOAD as usize);
    let cancelled = py.import("asyncio")?.getattr("CancelledError")?;
    for (i, result) in (0..).zip(&results) {
        match expected(i) {
            Some(value) => assert_eq!(result.extract::<i64>().ok(), Some(value), "{i}: {result:?}"),
            None => assert!(result.is_instance(&cancelled)?, "{i}: {result:?}"),
        }
    }
    Ok(())
}

/// Runs the load on a fresh loop and checks the counters.
fn load_and_check_counters() {
    let before = (attach_counts(), queue_stats());
    with_loop(load);
    let after = (attach_counts(), queue_stats());
    assert_eq!(
        after.0.runtime_threads, 0,
        "the bridge attached on a tokio runtime thread: {:?}",
        after.0
    );
    // The load really went through the delivery queue: at least one job per crossing.
    assert!(
        after.1.jobs - before.1.jobs >= LOAD as u64,
        "queue counters did not move: {before:?} -> {after:?}"
    );
    if std::env::var(WAKEUP_ENV).is_ok_and(|v| v == "threadsafe") {
        // The waker thread did the waking, attached, off the runtime.
        assert!(
            after.0.other_threads > before.0.other_threads,
            "threadsafe wakeup forced but the waker thread never attached: {before:?} -> {after:?}"
        );
    }
}

#[test]
fn a1_no_runtime_thread_attaches_under_load() {
    load_and_check_counters();
}

#[test]
fn a1_no_runtime_thread_attaches_under_load_with_threadsafe_wakeup() {
    if std::env::var(WAKEUP_ENV).is_ok_and(|v| v == "threadsafe") {
        return load_and_check_counters();
    }
    // The wakeup mode is read when a loop is first used; a child process of this very test
    // binary gets the variable without mutating this process's environment.
    let name = "a1_no_runtime_thread_attaches_under_load_with_threadsafe_wakeup";
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(exe)
        .args(["--exact", name, "--test-threads=1"])
        .env(WAKEUP_ENV, "threadsafe")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the threadsafe-wakeup run failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// A `PyFuture` dropped unpolled on a worker after its result arrived: the result must go home
/// to the loop thread. Under `--cfg pyo3_disable_reference_pool` a drop on the worker aborts the
/// process; with the pool, the finalizer's thread shows where the object was released.
#[test]
fn a1_resolved_py_future_dropped_on_a_worker_releases_its_value_on_the_loop_thread() {
    with_loop(|py, event_loop| {
        let fut = crossing(event_loop, async {
            let (value, later) = Python::attach(|py| {
                let locals = get_current_locals(py)?;
                let make = helpers(py).call_method0("make_value")?;
                let steps = helpers(py).call_method0("a_few_steps")?;
                PyResult::Ok((
                    into_future_with_locals(&locals, make)?,
                    into_future_with_locals(&locals, steps)?,
                ))
            })?;
            // Both tasks start in order in one drain; `make_value` finishes in its first step,
            // so its result waits in `value` by the time `a_few_steps` is done.
            let steps_done = later.await;
            Python::attach(|py| steps_done.map(|none| none.drop_ref(py)))?;
            // Dropped here, on a worker thread that is not attached, holding a Python object.
            drop(value);
            Ok(())
        })?;
        run(event_loop, &fut)?;
        let released: Vec<u64> = helpers(py).getattr("RELEASED")?.extract()?;
        let loop_thread: u64 = py
            .import("threading")?
            .call_method0("get_ident")?
            .extract()?;
        assert_eq!(
            released,
            vec![loop_thread],
            "released elsewhere than on the loop thread"
        );
        Ok(())
    });
}

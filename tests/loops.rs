//! Several event loops at once (rule R4) and sync Rust waiting for a loop in another thread
//! (rule R5, `block_on_python`).

mod common;

use common::{fail, load_module, SIGNAL_TIMEOUT};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyModule};
use pyo3_async_bridge::tokio::{
    block_on_python, future_into_py, get_current_loop, into_future, run,
};
use std::sync::Arc;
use tokio::sync::Barrier;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio, threading

LEGS = {}

async def round_trip(k, i):
    """Python on loop k awaits Rust (LEGS[k]), which reports the loop it saw."""
    here = asyncio.get_running_loop()
    k2, i2, seen = await LEGS[k](k, i)
    assert (k2, i2) == (k, i), (k2, i2, k, i)
    assert seen is here, "a Rust result reached another loop"
    await asyncio.sleep(0)
    return k * 1000 + i, here

def start_loop():
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    loop.call_soon(ready.set)
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    ready.wait(60)
    return loop, t

def stop_loop(loop, t):
    loop.call_soon_threadsafe(loop.stop)
    t.join(60)
    loop.close()

async def add(a, b):
    await asyncio.sleep(0.001)
    return a + b, threading.current_thread().name

async def fails():
    raise ValueError("from the loop thread")

"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"loops_helpers")
}

const LOOPS: usize = 4;
const ROUNDS: u32 = 25;
const PER_ROUND: u32 = 8;

/// `rust_leg(k, i)`: a crossing whose Rust side waits until every loop has one in flight, then
/// returns `(k, i, the loop it ran for)`.
fn rust_leg(py: Python<'_>, barrier: Arc<Barrier>) -> Bound<'_, PyAny> {
    PyCFunction::new_closure(py, None, None, move |args, _| {
        let py = args.py();
        let (k, i): (usize, u32) = args.extract()?;
        let barrier = Arc::clone(&barrier);
        let wait_all = i % PER_ROUND == 0;
        future_into_py(py, async move {
            if wait_all {
                // Every loop has a crossing in flight at this point (or the test fails).
                tokio::time::timeout(SIGNAL_TIMEOUT, barrier.wait())
                    .await
                    .map_err(|_| PyRuntimeError::new_err("the loops never ran together"))?;
            }
            let seen = Python::attach(|py| get_current_loop(py).map(Bound::unbind))?;
            Ok((k, i, seen))
        })
        .map(Bound::unbind)
    })
    .unwrap_or_else(|e| fail(py, e))
    .into_any()
}

#[test]
fn r4_several_loops_at_once_each_get_their_own_results() {
    let barrier = Arc::new(Barrier::new(LOOPS));
    let threads: Vec<_> = (0..LOOPS)
        .map(|k| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                Python::attach(|py| {
                    // Held by Python: no Python reference travels into the Rust future.
                    helpers(py)
                        .getattr("LEGS")
                        .and_then(|legs| legs.set_item(k, rust_leg(py, barrier)))
                        .unwrap_or_else(|e| fail(py, e));
                    let own = run(py, async move {
                        let own = Python::attach(|py| get_current_loop(py).map(Bound::unbind))?;
                        for round in 0..ROUNDS {
                            // Rust awaits Python awaits Rust, PER_ROUND at once.
                            let futs = Python::attach(|py| {
                                (0..PER_ROUND)
                                    .map(|j| {
                                        let i = round * PER_ROUND + j;
                                        into_future(helpers(py).call_method1("round_trip", (k, i))?)
                                    })
                                    .collect::<PyResult<Vec<_>>>()
                            })?;
                            let results = futures::future::try_join_all(futs).await?;
                            Python::attach(|py| -> PyResult<()> {
                                for (j, r) in results.into_iter().enumerate() {
                                    let (value, lp): (u32, Bound<'_, PyAny>) = r.extract(py)?;
                                    let i = round * PER_ROUND + j as u32;
                                    assert_eq!(value, k as u32 * 1000 + i);
                                    assert!(lp.is(own.bind(py)), "loop {k} got another's");
                                }
                                Ok(())
                            })?;
                        }
                        Ok(own)
                    })
                    .unwrap_or_else(|e| fail(py, e));
                    own.bind(py).as_ptr() as usize
                })
            })
        })
        .collect();
    let mut loops: Vec<usize> = threads
        .into_iter()
        .map(|t| t.join().expect("a loop thread failed"))
        .collect();
    loops.sort_unstable();
    loops.dedup();
    // Distinct loops (each still referenced by its thread's result until it was compared).
    assert_eq!(loops.len(), LOOPS);
}

/// A loop running in a thread of its own for the duration of `f`.
fn with_loop_thread<R>(py: Python<'_>, f: impl FnOnce(&Bound<'_, PyAny>) -> R) -> R {
    let started = helpers(py)
        .call_method0("start_loop")
        .unwrap_or_else(|e| fail(py, e));
    let (event_loop, thread): (Bound<'_, PyAny>, Bound<'_, PyAny>) = started.extract().unwrap();
    let out = f(&event_loop);
    helpers(py)
        .call_method1("stop_loop", (&event_loop, thread))
        .unwrap_or_else(|e| fail(py, e));
    out
}

#[test]
fn r5_block_on_python_runs_the_awaitable_on_the_loop_thread() {
    Python::attach(|py| {
        with_loop_thread(py, |event_loop| {
            let main_name = std::thread::current().name().map(str::to_owned);
            let coro = helpers(py).call_method1("add", (20, 22)).unwrap();
            let (sum, thread): (i32, String) = block_on_python(event_loop, coro)
                .unwrap_or_else(|e| fail(py, e))
                .extract(py)
                .unwrap();
            assert_eq!(sum, 42);
            assert_ne!(Some(thread), main_name);
            let err = block_on_python(event_loop, helpers(py).call_method0("fails").unwrap())
                .unwrap_err();
            assert!(err.is_instance_of::<PyValueError>(py), "{err}");
            let err = block_on_python(event_loop, 42i32.into_pyobject(py).unwrap().into_any())
                .unwrap_err();
            assert!(err.is_instance_of::<PyTypeError>(py), "{err}");
        });
    });
}

#[test]
fn r5_block_on_python_from_many_threads_while_the_loop_runs() {
    Python::attach(|py| {
        with_loop_thread(py, |event_loop| {
            let event_loop = event_loop.clone().unbind();
            let sums: Vec<i32> = py.detach(|| {
                let workers: Vec<_> = (0..8)
                    .map(|n| {
                        let event_loop = Python::attach(|py| event_loop.clone_ref(py));
                        std::thread::spawn(move || {
                            Python::attach(move |py| {
                                let coro = helpers(py).call_method1("add", (n, 1)).unwrap();
                                let r = block_on_python(event_loop.bind(py), coro)
                                    .unwrap_or_else(|e| fail(py, e));
                                let sum = r.extract::<(i32, String)>(py).unwrap().0;
                                drop(event_loop); // attached
                                sum
                            })
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            assert_eq!(sums, (1..=8).collect::<Vec<_>>());
        });
    });
}

#[test]
fn r5_block_on_python_on_the_loops_own_thread_raises_instead_of_deadlocking() {
    common::with_loop(|py, event_loop| {
        let coro = helpers(py).call_method1("add", (1, 2))?.unbind();
        let probe = coro.clone_ref(py);
        // Called on the loop thread while the loop runs (as a sync callback would be).
        let err = common::in_running_loop(event_loop, move |py| {
            let running = pyo3_async_bridge::get_running_loop(py)?;
            block_on_python(&running, coro.into_bound(py)).map(|v| v.into_bound(py))
        })
        .unwrap_err();
        assert!(err.is_instance_of::<PyRuntimeError>(py), "{err}");
        assert!(err.to_string().contains("deadlock"), "{err}");
        assert!(
            probe.bind(py).getattr("cr_frame")?.is_none(),
            "coroutine not closed"
        );
        Ok(())
    });
}

#[test]
fn r5_block_on_python_on_a_closed_loop_raises_and_closes_the_coroutine() {
    Python::attach(|py| {
        let event_loop = common::new_loop(py);
        event_loop.call_method0("close").unwrap();
        let coro = helpers(py).call_method1("add", (1, 2)).unwrap();
        let err = block_on_python(&event_loop, coro.clone()).unwrap_err();
        assert!(err.is_instance_of::<PyRuntimeError>(py), "{err}");
        assert!(err.to_string().contains("is closed"), "{err}");
        // Closed, so no "coroutine was never awaited".
        assert!(coro.getattr("cr_frame").unwrap().is_none());
    });
}

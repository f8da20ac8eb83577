//! Lifecycle probes (rules L1, L2): crossings left pending on a loop that closes, and waits
//! that block with the GIL released until the Rust side reports what happened to them.

use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{cancellation_token, future_into_py, get_runtime, into_future};
use pyo3_async_bridge::{into_future_with_locals, TaskLocals};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the Rust side of the probe's crossings reported.
#[derive(Default)]
struct Report {
    started: u64,
    /// Rust futures dropped (or finished).
    dropped: u64,
    /// Crossing tokens seen firing (through a child token).
    tokens_fired: u64,
    /// Outcomes of Rust awaiting Python: `Ok(repr)` or `Err("Type: message")`.
    outcomes: Vec<Result<String, String>>,
}

#[derive(Default)]
struct Shared {
    report: Mutex<Report>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap());
        self.changed.notify_all();
    }

    /// Blocks (GIL released by the caller) until `done` holds or `timeout` passes.
    fn wait(&self, timeout: Duration, done: impl Fn(&Report) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut report = self.report.lock().unwrap();
        while !done(&report) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            report = self.changed.wait_timeout(report, deadline - now).unwrap().0;
        }
        true
    }
}

/// Counts its drop.
struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.update(|r| r.dropped += 1);
    }
}

/// A probe that makes crossings and reports what became of them.
#[pyclass(frozen)]
struct LifeProbe {
    shared: Arc<Shared>,
}

#[pymethods]
impl LifeProbe {
    #[new]
    fn new() -> Self {
        LifeProbe {
            shared: Arc::default(),
        }
    }

    /// A crossing whose Rust future never finishes by itself. It reports its start, its token
    /// firing (seen by a task outside the crossing) and its drop.
    fn forever<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        future_into_py(py, async move {
            let guard = DropGuard(Arc::clone(&shared));
            shared.update(|r| r.started += 1);
            let token = cancellation_token().expect("inside a crossing");
            let watcher = Arc::clone(&shared);
            // A plain tokio task: not dropped with the crossing, it sees the token fire.
            tokio::spawn(async move {
                token.cancelled().await;
                watcher.update(|r| r.tokens_fired += 1);
            });
            std::future::pending::<()>().await;
            drop(guard);
            Ok(())
        })
    }

    /// A crossing whose Rust future waits for its own token, then returns `value`: what it
    /// returns in response to a stop must never be taken for its outcome (L2).
    fn answers_stop<'py>(&self, py: Python<'py>, value: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        future_into_py(py, async move {
            let _guard = DropGuard(Arc::clone(&shared));
            let token = cancellation_token().expect("inside a crossing");
            shared.update(|r| r.started += 1);
            token.cancelled().await;
            Ok(value)
        })
    }

    /// A crossing whose Rust future sleeps `secs`, then returns `value` (which it holds until
    /// then): a result arriving after its loop closed.
    fn late<'py>(
        &self,
        py: Python<'py>,
        secs: f64,
        value: Py<PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        future_into_py(py, async move {
            let _guard = DropGuard(Arc::clone(&shared));
            shared.update(|r| r.started += 1);
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Ok(value)
        })
    }

    /// Rust awaits each of `awaitables` on `event_loop` (which runs in another thread, or not
    /// at all), from tokio tasks outside any crossing. `into_future` is called here, on the
    /// calling thread; each outcome is reported.
    fn await_on(
        &self,
        event_loop: Bound<'_, PyAny>,
        awaitables: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let locals = TaskLocals::new(event_loop);
        for awaitable in awaitables {
            let fut = into_future_with_locals(&locals, awaitable)?;
            let shared = Arc::clone(&self.shared);
            get_runtime().spawn(async move {
                let outcome = match fut.await {
                    Ok(v) => Ok(
                        Python::attach(|py| v.bind(py).repr().map(|r| r.to_string()))
                            .unwrap_or_default(),
                    ),
                    Err(e) => Err(Python::attach(|py| {
                        format!(
                            "{}: {}",
                            e.get_type(py)
                                .name()
                                .map(|n| n.to_string())
                                .unwrap_or_default(),
                            e.value(py)
                        )
                    })),
                };
                shared.update(|r| r.outcomes.push(outcome));
            });
        }
        Ok(())
    }

    /// Blocks until `n` Rust futures were dropped, or `timeout` seconds pass; GIL released.
    fn wait_dropped(&self, py: Python<'_>, n: u64, timeout: f64) -> bool {
        let shared = Arc::clone(&self.shared);
        py.detach(|| shared.wait(Duration::from_secs_f64(timeout), |r| r.dropped >= n))
    }

    /// Blocks until `n` tokens fired, or `timeout` seconds pass; GIL released.
    fn wait_tokens(&self, py: Python<'_>, n: u64, timeout: f64) -> bool {
        let shared = Arc::clone(&self.shared);
        py.detach(|| shared.wait(Duration::from_secs_f64(timeout), |r| r.tokens_fired >= n))
    }

    /// Blocks until `n` Rust futures started, or `timeout` seconds pass; GIL released.
    fn wait_started(&self, py: Python<'_>, n: u64, timeout: f64) -> bool {
        let shared = Arc::clone(&self.shared);
        py.detach(|| shared.wait(Duration::from_secs_f64(timeout), |r| r.started >= n))
    }

    /// Blocks until `n` outcomes of `await_on` arrived, or `timeout` seconds pass (GIL
    /// released); returns them (errors as `"Type: message"` strings prefixed with `!`).
    fn wait_outcomes(&self, py: Python<'_>, n: usize, timeout: f64) -> Vec<String> {
        let shared = Arc::clone(&self.shared);
        py.detach(|| shared.wait(Duration::from_secs_f64(timeout), |r| r.outcomes.len() >= n));
        let report = self.shared.report.lock().unwrap();
        report
            .outcomes
            .iter()
            .map(|o| match o {
                Ok(v) => v.clone(),
                Err(e) => format!("!{e}"),
            })
            .collect()
    }

    /// `(started, dropped, tokens_fired, outcomes)`.
    fn counts(&self) -> (u64, u64, u64, usize) {
        let r = self.shared.report.lock().unwrap();
        (r.started, r.dropped, r.tokens_fired, r.outcomes.len())
    }
}

/// Rust awaits `awaitable` inside a crossing, with `into_future` called here, at once: the
/// bridge owns the coroutine from the start (the idiom that leaves nothing un-awaited when the
/// crossing is stopped before its first poll).
#[pyfunction]
fn await_py_eager<'py>(
    py: Python<'py>,
    awaitable: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let fut = into_future(awaitable)?;
    future_into_py(py, fut)
}

/// Crossings pending on every loop the bridge knows, loops found closed, and the watchdog's
/// attaches: `(live, loops_closed, watchdog_attaches)`.
#[pyfunction]
fn lifecycle_stats() -> (usize, u64, u64) {
    use pyo3_async_bridge::debug;
    let live = debug::live_crossings();
    (
        live,
        debug::queue_stats().loops_closed,
        debug::attach_counts().watchdog,
    )
}

/// Hands the bridge a runtime of the caller's own (L2's user-supplied runtime), before any
/// crossing: `init_with_runtime`. Returns whether the bridge took it.
#[pyfunction]
fn use_own_runtime() -> bool {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("user-runtime-worker")
        .enable_all()
        .build()
        .expect("a runtime");
    pyo3_async_bridge::tokio::init_with_runtime(Box::leak(Box::new(runtime))).is_ok()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(use_own_runtime, m)?)?;
    m.add_class::<LifeProbe>()?;
    m.add(
        "EXIT_CANCEL_MESSAGE",
        pyo3_async_bridge::EXIT_CANCEL_MESSAGE,
    )?;
    m.add_function(wrap_pyfunction!(await_py_eager, m)?)?;
    m.add_function(wrap_pyfunction!(lifecycle_stats, m)?)?;
    Ok(())
}
